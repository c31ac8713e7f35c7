"""Feature-extractor adaptation (TinyTL, Cai et al. 2020, Appendix A): an elastic super-net around a pretrained
backbone, an accuracy predictor and a memory-budgeted evolutionary search.

Kept light on purpose: importing this package loads no TensorFlow, so the TF-free search space
(`tinytl_tf.supernet.space`) can be used by tools that never build a model. Import the Keras parts from their
modules (`supernet.supernet`, `supernet.predictor`, `supernet.subnet`); the search job is `tinytl_tf.jobs.search`.
"""
