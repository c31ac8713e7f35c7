"""Keras 3 layers of TinyTL networks. All math goes through `tinytl_tf.ops`."""

from tinytl_tf.layers.conv import FoldedConv2D
from tinytl_tf.layers.head import Classifier
from tinytl_tf.layers.lite_residual import LiteResidual
from tinytl_tf.layers.mb_block import MBBlock
from tinytl_tf.layers.norm import GroupNorm

__all__ = ["Classifier", "FoldedConv2D", "GroupNorm", "LiteResidual", "MBBlock"]
