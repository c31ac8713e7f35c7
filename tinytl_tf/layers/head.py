"""The classifier head: global average pool, dropout, dense."""

import math

import keras

from tinytl_tf import ops
from tinytl_tf.layers.common import kernel_source, value


@keras.saving.register_keras_serializable(package="tinytl_tf")
class Classifier(keras.layers.Layer):
    """Global average pool -> dropout -> linear. A new head starts at U(+-1/sqrt(fan_in)) weights, zero bias."""

    def __init__(self, num_classes, dropout=0.0, train=True, **kwargs):
        super().__init__(**kwargs)
        self.num_classes, self.dropout, self.train = num_classes, dropout, train
        self.drop = keras.layers.Dropout(dropout) if dropout else None

    def build(self, input_shape):
        fan_in = input_shape[-1]
        limit = 1.0 / math.sqrt(fan_in)
        self.kernel = self.add_weight(
            name="kernel",
            shape=(fan_in, self.num_classes),
            initializer=keras.initializers.RandomUniform(-limit, limit),
            trainable=self.train,
        )
        self.bias = self.add_weight(name="bias", shape=(self.num_classes,), initializer="zeros", trainable=self.train)

    def call(self, x, training=None):
        x = ops.global_avg_pool(x)
        if self.drop is not None:
            x = self.drop(x, training=training)
        return ops.channel_affine(
            ops.dense(x, kernel_source(self.kernel), kernel_grad=self.train), None, value(self.bias)
        )

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.num_classes)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "dropout": self.dropout, "train": self.train}
