"""Training-memory models of TinyTL networks. `analytic`: REFERENCE §4's model from a NetConfig (TF-free)."""

from tinytl_tf.memory.analytic import (Leaf, MemoryReport, format_table, leaves, method_config, method_table,
                                       needs_backward, param_counts, peak_activation_bytes, plot_breakdown,
                                       training_memory)

__all__ = ["Leaf", "MemoryReport", "format_table", "leaves", "method_config", "method_table", "needs_backward",
           "param_counts", "peak_activation_bytes", "plot_breakdown", "training_memory"]
