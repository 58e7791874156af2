"""Input checks at the front of every keras_vit model (clear errors instead of deep TF ones)."""
from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="keras_vit")
class ImageValidation(keras.layers.Layer):
    """Passes images through unchanged after checking rank, channels and size.

    Height and width must be multiples of ``multiple_of`` (the patch size, or for hybrids
    the ResNet's stride times the patch size) and at least one multiple. Statically known
    shapes fail at once with a ``ValueError``; sizes known only at run time fail in the graph
    with an ``InvalidArgumentError`` carrying the same message.

    Args:
        multiple_of: height and width must be positive multiples of it.
        channels: expected channel count.
        **kwargs: ``keras.layers.Layer`` arguments (name, dtype).
    """

    def __init__(self, multiple_of: int, channels: int = 3, **kwargs):
        super().__init__(**kwargs)
        self.multiple_of = int(multiple_of)
        self.channels = int(channels)

    def _expected(self):
        return (f"(batch, height, width, {self.channels}) with height and width multiples of "
                f"{self.multiple_of}")

    def _check_static(self, shape):
        if shape.rank is not None and shape.rank != 4:
            raise ValueError(f"{self.name}: expected images of shape {self._expected()}, "
                             f"received shape {tuple(shape)} (rank {shape.rank})")
        if shape.rank is None:
            return
        if shape[-1] is not None and shape[-1] != self.channels:
            raise ValueError(f"{self.name}: expected {self.channels} channels, i.e. shape "
                             f"{self._expected()}; received shape {tuple(shape)}")
        for size in shape[1:3]:
            if size is not None and (size % self.multiple_of or size < self.multiple_of):
                raise ValueError(
                    f"{self.name}: image size {tuple(shape[1:3])} is not a positive multiple "
                    f"of {self.multiple_of}; expected shape {self._expected()}, received "
                    f"shape {tuple(shape)}")

    def build(self, input_shape):
        self._check_static(tf.TensorShape(input_shape))
        super().build(input_shape)

    def call(self, images):
        shape = images.shape
        self._check_static(shape)
        if shape[1] is not None and shape[2] is not None:
            return images
        hw = tf.shape(images)[1:3]
        message = (f"{self.name}: image height and width must be positive multiples of "
                   f"{self.multiple_of}; expected shape {self._expected()}")
        check = tf.debugging.assert_equal(
            tf.reduce_all((hw % self.multiple_of == 0) & (hw >= self.multiple_of)), True,
            message=message)
        with tf.control_dependencies([check]):
            return tf.identity(images)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(multiple_of=self.multiple_of, channels=self.channels)
        return config


def token_size(layer, input_shape, num_heads: int) -> int:
    """The token width D of ``input_shape`` (batch, tokens, D), known and divisible by
    ``num_heads``, else a ValueError naming ``layer``."""
    dim = input_shape[-1]
    if dim is None or dim % num_heads:
        raise ValueError(f"{layer.name}: the token size must be known and divisible by "
                         f"num_heads={num_heads}; received input shape {tuple(input_shape)}")
    return int(dim)
