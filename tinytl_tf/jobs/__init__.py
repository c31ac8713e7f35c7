"""Jobs: what a command does end to end (train, evaluate, export, search, demo, memory measurement, prepare
Caltech-101), the only place that combines the rooms below it (backbones, methods, train, export, memory, supernet,
ondevice).
`tinytl_tf.cli` parses the arguments and calls one job; a job's result is returned, its progress goes to stderr.

Importing this package imports nothing: each job module imports what it needs (`jobs.caltech` is TF-free).
"""
