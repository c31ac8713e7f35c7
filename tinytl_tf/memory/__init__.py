"""Training memory of TinyTL networks: config -> bytes, and the measurements of a given `.tflite`. TF-free.

`analytic`: TinyTL's model (Cai et al. 2020, Sec. 3.1) from a NetConfig. `predictor`: what the engine's LiteRT
training step will measure, from the same config and the engine's storage rules. `measure`: the memory of an
exported `.tflite`, from its graph (static) and from a fresh LiteRT process running it (dynamic). Exporting models
to measure them is a job (`tinytl_tf.jobs.memory`): this room never builds or exports a model.
"""

from tinytl_tf.memory.analytic import (
    Leaf,
    MemoryReport,
    format_table,
    leaves,
    method_table,
    needs_backward,
    param_counts,
    peak_activation_bytes,
    plot_breakdown,
    training_memory,
)
from tinytl_tf.memory.measure import (
    MeasurementError,
    PeakTensor,
    StaticMemory,
    dynamic_memory,
    measure_tflite,
    probe_memory,
    static_memory,
)
from tinytl_tf.memory.predictor import Prediction, predict_train, predict_train_mb, predicted_table

__all__ = [
    "Leaf",
    "MeasurementError",
    "MemoryReport",
    "PeakTensor",
    "Prediction",
    "StaticMemory",
    "dynamic_memory",
    "format_table",
    "leaves",
    "measure_tflite",
    "method_table",
    "needs_backward",
    "param_counts",
    "peak_activation_bytes",
    "plot_breakdown",
    "predict_train",
    "predict_train_mb",
    "predicted_table",
    "probe_memory",
    "static_memory",
    "training_memory",
]
