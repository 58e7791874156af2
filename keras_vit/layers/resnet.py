"""The BiT ResNet v2 pieces of the paper's ResNet+ViT hybrids (section 3.1, "Hybrid").

Weight-standardised convolutions, GroupNorm (32 groups, epsilon 1e-6) and TF "SAME"
padding, as in the original release; checkpoints store the raw (unstandardised) kernels.
timm's hybrids (``vision_transformer_hybrid``) standardise with ``/ sqrt(var + 1e-8)``
(``StdConv2dSame(eps=1e-8)``) and use GroupNorm epsilon 1e-5: both are options here.
"""
from __future__ import annotations

import keras
import tensorflow as tf

GROUPS = 32
GROUP_NORM_EPSILON = 1e-6


@keras.saving.register_keras_serializable(package="keras_vit")
class StdConv2D(keras.layers.Conv2D):
    """Conv2D whose kernel is standardised at every call: ``(w - mean) / (std + 1e-5)``.

    Mean and (population) std are taken over height, width and input channels, per output
    channel, in float32. The kernel variable keeps the raw (checkpoint) values.

    Args:
        epsilon: 1e-5 as in the original release.
        epsilon_in_sqrt: False: ``(w - mean) / (std + epsilon)`` (the original); True:
            ``(w - mean) / sqrt(var + epsilon)`` (timm's ``StdConv2d`` / ``StdConv2dSame``,
            whose hybrids use epsilon 1e-8).
        **kwargs: those of ``keras.layers.Conv2D``.
    """

    def __init__(self, *args, epsilon: float = 1e-5, epsilon_in_sqrt: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.epsilon = float(epsilon)
        self.epsilon_in_sqrt = bool(epsilon_in_sqrt)

    def convolution_op(self, inputs, kernel):
        k32 = tf.cast(kernel, tf.float32)
        mean, variance = tf.nn.moments(k32, axes=[0, 1, 2], keepdims=True)
        if self.epsilon_in_sqrt:
            standardised = (k32 - mean) * tf.math.rsqrt(variance + self.epsilon)
        else:
            standardised = (k32 - mean) / (tf.sqrt(variance) + self.epsilon)
        return super().convolution_op(inputs, tf.cast(standardised, inputs.dtype))

    def get_config(self):
        config = super().get_config()
        config.update(epsilon=self.epsilon, epsilon_in_sqrt=self.epsilon_in_sqrt)
        return config


def group_norm(name, dtype=None, zero_init=False, epsilon=GROUP_NORM_EPSILON):
    return keras.layers.GroupNormalization(
        groups=GROUPS, epsilon=epsilon, name=name, dtype=dtype,
        gamma_initializer="zeros" if zero_init else "ones")


@keras.saving.register_keras_serializable(package="keras_vit")
class ResNetUnit(keras.layers.Layer):
    """Bottleneck unit of ResNet v2 as used by the ViT hybrids.

    ``relu(residual + GN(conv3(relu(GN(conv2(relu(GN(conv1(x)))))))))`` with 1x1, 3x3 (carrying
    the stride) and 1x1 convolutions; ``features`` is the bottleneck width and the output has
    ``4 * features`` channels. The first unit of a stage projects the residual with a strided
    1x1 conv + GroupNorm (``use_projection``).

    Args:
        features: bottleneck width (the output has 4x as many channels).
        strides: stride of the 3x3 conv (and of the projection).
        use_projection: project the residual (first unit of a stage).
        group_norm_epsilon: 1e-6 as in the original (timm's hybrids: 1e-5).
        std_conv_epsilon, std_conv_epsilon_in_sqrt: the :class:`StdConv2D` options.
        **kwargs: ``keras.layers.Layer`` arguments (name, dtype).
    """

    def __init__(self, features: int, strides: int = 1, use_projection: bool = False,
                 group_norm_epsilon: float = GROUP_NORM_EPSILON, std_conv_epsilon: float = 1e-5,
                 std_conv_epsilon_in_sqrt: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.features = int(features)
        self.strides = int(strides)
        self.use_projection = bool(use_projection)
        self.group_norm_epsilon = float(group_norm_epsilon)
        self.std_conv_epsilon = float(std_conv_epsilon)
        self.std_conv_epsilon_in_sqrt = bool(std_conv_epsilon_in_sqrt)
        policy = self.dtype_policy

        def conv(filters, size, strides, name):
            return StdConv2D(filters, size, strides=strides, padding="same", use_bias=False,
                             name=name, dtype=policy, epsilon=self.std_conv_epsilon,
                             epsilon_in_sqrt=self.std_conv_epsilon_in_sqrt)

        def norm(name, zero_init=False):
            return group_norm(name, policy, zero_init, self.group_norm_epsilon)

        out = 4 * self.features
        self.conv1 = conv(self.features, 1, 1, "conv1")
        self.gn1 = norm("gn1")
        self.conv2 = conv(self.features, 3, self.strides, "conv2")
        self.gn2 = norm("gn2")
        self.conv3 = conv(out, 1, 1, "conv3")
        self.gn3 = norm("gn3", zero_init=True)
        if self.use_projection:
            self.conv_proj = conv(out, 1, self.strides, "conv_proj")
            self.gn_proj = norm("gn_proj")

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        mid = input_shape[:-1] + (self.features,)
        out = input_shape[:-1] + (4 * self.features,)
        self.conv1.build(input_shape)
        self.gn1.build(mid)
        self.conv2.build(mid)
        self.gn2.build(mid)
        self.conv3.build(mid)
        self.gn3.build(out)
        if self.use_projection:
            self.conv_proj.build(input_shape)
            self.gn_proj.build(out)

    def call(self, x):
        residual = x
        if self.use_projection:
            residual = self.gn_proj(self.conv_proj(x))
        y = tf.nn.relu(self.gn1(self.conv1(x)))
        y = tf.nn.relu(self.gn2(self.conv2(y)))
        y = self.gn3(self.conv3(y))
        return tf.nn.relu(residual + y)

    def compute_output_shape(self, input_shape):
        def down(size):
            return None if size is None else -(-size // self.strides)
        return (input_shape[0], down(input_shape[1]), down(input_shape[2]), 4 * self.features)

    def get_config(self):
        config = super().get_config()
        config.update(features=self.features, strides=self.strides,
                      use_projection=self.use_projection,
                      group_norm_epsilon=self.group_norm_epsilon,
                      std_conv_epsilon=self.std_conv_epsilon,
                      std_conv_epsilon_in_sqrt=self.std_conv_epsilon_in_sqrt)
        return config
