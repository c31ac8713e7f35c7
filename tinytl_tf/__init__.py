"""tinytl_tf: memory-efficient on-device transfer learning (TinyTL) for TensorFlow/Keras and LiteRT."""

__version__ = "0.1.0"
