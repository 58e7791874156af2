"""Patch embedding: images (or a ResNet feature map) to a grid of token vectors."""
from __future__ import annotations

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="keras_vit")
class Patches(keras.layers.Layer):
    """Splits the input into non-overlapping ``patch_size`` patches and embeds each linearly.

    This is the paper's patch embedding (eq. 1) written, as in the original, as a convolution
    with kernel = stride = patch size, VALID padding and a bias. The kernel has the original
    checkpoint's HWIO shape (p, p, C, D).

    Input: (batch, H, W, C). Output: (batch, H/p, W/p, D): the sequence of patch vectors in
    row-major order, kept on its 2-D grid so that :class:`PatchEncoder` knows the layout
    (``tf.reshape(out, (batch, -1, D))`` gives the flat sequence).

    Args:
        patch_size: side p of the square patches (kernel = stride = p).
        hidden_size: token width D.
        use_bias: False for the patch embeddings without bias (CLIP image towers, timm's
            ``pre_norm`` models).
        **kwargs: ``keras.layers.Layer`` arguments (name, dtype).

    Example:
    >>> import numpy as np
    >>> Patches(patch_size=16, hidden_size=192)(np.zeros((2, 224, 224, 3))).shape
    TensorShape([2, 14, 14, 192])
    """

    def __init__(self, patch_size: int, hidden_size: int, use_bias: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.use_bias = bool(use_bias)
        self.patch_size = int(patch_size)
        self.hidden_size = int(hidden_size)

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError(f"{self.name}: the channel dimension must be known, "
                             f"received input shape {tuple(input_shape)}")
        p = self.patch_size
        self.kernel = self.add_weight(
            name="kernel", shape=(p, p, int(channels), self.hidden_size),
            initializer="lecun_normal")
        self.bias = self.add_weight(name="bias", shape=(self.hidden_size,),
                                    initializer="zeros") if self.use_bias else None

    def call(self, images):
        shape = images.shape
        for size in shape[1:3]:
            if size is not None and size % self.patch_size:
                raise ValueError(f"{self.name}: input size {tuple(shape[1:3])} is not a "
                                 f"multiple of the patch size {self.patch_size}")
        kernel = tf.cast(self.kernel, self.compute_dtype)
        bias = tf.cast(self.bias if self.use_bias else tf.zeros((self.hidden_size,)),
                       self.compute_dtype)
        if self.patch_size == 1:
            # A 1x1 "patch" (hybrids) is a plain matmul over channels.
            flat = tf.reshape(images, (-1, tf.shape(images)[-1]))
            out = tf.nn.bias_add(tf.matmul(flat, kernel[0, 0]), bias)
            hw = tf.shape(images)[1:3]
            out = tf.reshape(out, tf.concat([tf.shape(images)[:1], hw, [self.hidden_size]], 0))
            return tf.ensure_shape(out, (None, shape[1], shape[2], self.hidden_size))
        out = tf.nn.conv2d(images, kernel, strides=self.patch_size, padding="VALID")
        return tf.nn.bias_add(out, bias)

    def compute_output_shape(self, input_shape):
        def grid(size):
            return None if size is None else size // self.patch_size
        return (input_shape[0], grid(input_shape[1]), grid(input_shape[2]), self.hidden_size)

    def get_config(self):
        config = super().get_config()
        config.update(patch_size=self.patch_size, hidden_size=self.hidden_size)
        if not self.use_bias:  # only when used: the configs of before stay as they were
            config.update(use_bias=False)
        return config
