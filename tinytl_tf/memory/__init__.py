"""Training-memory models of TinyTL networks (TF-free to import).

`analytic`: TinyTL's model (Cai et al. 2020, Sec. 3.1) from a NetConfig. `measure`: the memory of an exported
`.tflite`, from its graph (static) and from a fresh LiteRT process running it (dynamic); only `measure_model` /
`measure_methods` need TensorFlow, to export first.
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
    measure_methods,
    measure_model,
    measure_tflite,
    probe_memory,
    static_memory,
)

__all__ = [
    "Leaf",
    "MeasurementError",
    "MemoryReport",
    "PeakTensor",
    "StaticMemory",
    "dynamic_memory",
    "format_table",
    "leaves",
    "measure_methods",
    "measure_model",
    "measure_tflite",
    "method_table",
    "needs_backward",
    "param_counts",
    "peak_activation_bytes",
    "plot_breakdown",
    "probe_memory",
    "static_memory",
    "training_memory",
]
