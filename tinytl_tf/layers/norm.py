"""GroupNorm with separately frozen scale and offset."""

import keras

from tinytl_tf import ops
from tinytl_tf.config import norm_groups
from tinytl_tf.layers.common import value


@keras.saving.register_keras_serializable(package="tinytl_tf")
class GroupNorm(keras.layers.Layer):
    """Group normalization with `channels_per_group` channels a group (8 in TinyTL), batch-size independent.

    gamma and beta freeze separately: TinyTL-L+B trains a lite branch's gammas but not its last beta.
    """

    def __init__(
        self, channels_per_group=8, epsilon=1e-5, train_gamma=True, train_beta=True, gamma_initializer="ones", **kwargs
    ):
        super().__init__(**kwargs)
        self.channels_per_group, self.epsilon = channels_per_group, epsilon
        self.train_gamma, self.train_beta = train_gamma, train_beta
        self.gamma_initializer = keras.initializers.get(gamma_initializer)

    def build(self, input_shape):
        c = input_shape[-1]
        self.groups = norm_groups(c, self.channels_per_group)
        self.gamma = self.add_weight(
            name="gamma", shape=(c,), initializer=self.gamma_initializer, trainable=self.train_gamma
        )
        self.beta = self.add_weight(name="beta", shape=(c,), initializer="zeros", trainable=self.train_beta)

    def call(self, x):
        return ops.group_norm(
            x,
            value(self.gamma),
            value(self.beta),
            groups=self.groups,
            epsilon=self.epsilon,
            gamma_grad=self.train_gamma,
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "channels_per_group": self.channels_per_group,
            "epsilon": self.epsilon,
            "train_gamma": self.train_gamma,
            "train_beta": self.train_beta,
            "gamma_initializer": keras.initializers.serialize(self.gamma_initializer),
        }
