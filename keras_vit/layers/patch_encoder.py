"""Class token + position embeddings: learned ones (interpolated at run time for other
grids) or fixed 2-D sin-cos ones (computed for each grid)."""
from __future__ import annotations

import keras
import tensorflow as tf

from keras_vit.position_embeddings import (resize_grid, sincos_2d_position_embeddings,
                                          to_pair)

POSITION_EMBEDDINGS = ("learned", "sincos2d")


@keras.saving.register_keras_serializable(package="keras_vit")
class PatchEncoder(keras.layers.Layer):
    """Turns a grid of patch vectors into the Transformer's input sequence.

    Flattens the (batch, h, w, D) grid row-major, prepends the class token (zero-initialised,
    as in the original; omitted when ``num_prefix_tokens=0``, the "gap" classifier), adds
    the learned position embeddings (normal, stddev 0.02) and applies dropout (paper eq. 1).

    The embeddings are learned for ``grid_size``. Another grid (a different input
    resolution) is served by resizing them inside the graph with aligned-corners bilinear
    interpolation, the original fine-tuning semantics (paper section 3.2), so a model built
    at 224 accepts 384 or 320x256 images. The same grid takes the plain path, bit for bit.

    Args:
        grid_size: int or (h, w): the patch grid the embeddings are learned for.
        hidden_size: token width D.
        num_prefix_tokens: 1 (a class token) or 0 (the "gap" classifier).
        dropout_rate: dropout after adding the position embeddings.
        position_embedding: ``"learned"`` (the paper's) or ``"sincos2d"``: fixed 2-D sin-cos
            embeddings of the patches (the plain-ViT baselines, arXiv 2205.01580), no
            weight, computed for the grid of each input; a class token then gets none.
        **kwargs: ``keras.layers.Layer`` arguments (name, dtype).
    """

    def __init__(self, grid_size, hidden_size: int, num_prefix_tokens: int = 1,
                 dropout_rate: float = 0.0, position_embedding: str = "learned", **kwargs):
        super().__init__(**kwargs)
        if position_embedding not in POSITION_EMBEDDINGS:
            raise ValueError(f"position_embedding must be one of {POSITION_EMBEDDINGS}, got "
                             f"{position_embedding!r}")
        self.position_embedding = position_embedding
        self.grid_size = to_pair(grid_size, "grid_size")
        self.hidden_size = int(hidden_size)
        if num_prefix_tokens not in (0, 1):
            raise ValueError(f"num_prefix_tokens must be 0 or 1, got {num_prefix_tokens}")
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.dropout_rate = float(dropout_rate)
        self.dropout = keras.layers.Dropout(self.dropout_rate, dtype=self.dtype_policy)

    def build(self, input_shape):
        if input_shape[-1] is not None and input_shape[-1] != self.hidden_size:
            raise ValueError(f"{self.name}: expected patch vectors of size {self.hidden_size}, "
                             f"received input shape {tuple(input_shape)}")
        if self.num_prefix_tokens:
            self.cls = self.add_weight(name="cls", shape=(1, 1, self.hidden_size),
                                       initializer="zeros")
        self.pos_embedding = None
        if self.position_embedding == "sincos2d":
            sincos_2d_position_embeddings(1, 1, self.hidden_size)  # checks the width
            self.dropout.build(None)
            return
        num = self.num_prefix_tokens + self.grid_size[0] * self.grid_size[1]
        self.pos_embedding = self.add_weight(
            name="pos_embedding", shape=(1, num, self.hidden_size),
            initializer=keras.initializers.RandomNormal(stddev=0.02))
        self.dropout.build(None)

    def position_embeddings_for(self, grid_h, grid_w):
        """The (1, prefix + grid_h * grid_w, D) position embeddings for a (h, w) grid."""
        if self.pos_embedding is None:  # sincos2d: zeros for the class token
            table = sincos_2d_position_embeddings(grid_h, grid_w, self.hidden_size,
                                                  dtype=self.compute_dtype)
            prefix = tf.zeros((1, self.num_prefix_tokens, self.hidden_size), table.dtype)
            return tf.concat([prefix, table], axis=1)
        pos = tf.cast(self.pos_embedding, self.compute_dtype)
        gh, gw = self.grid_size
        if isinstance(grid_h, int) and isinstance(grid_w, int) and (grid_h, grid_w) == (gh, gw):
            return pos

        def resized():
            prefix = pos[:, :self.num_prefix_tokens]
            grid = tf.reshape(pos[:, self.num_prefix_tokens:], (1, gh, gw, self.hidden_size))
            grid = resize_grid(grid, tf.stack([grid_h, grid_w]))
            grid = tf.reshape(grid, (1, -1, self.hidden_size))
            return tf.concat([prefix, grid], axis=1)

        if isinstance(grid_h, int) and isinstance(grid_w, int):
            return resized()
        same = tf.logical_and(tf.equal(grid_h, gh), tf.equal(grid_w, gw))
        out = tf.cond(same, lambda: tf.identity(pos), resized)
        return tf.ensure_shape(out, (1, None, self.hidden_size))

    def call(self, patches, training=None):
        static = patches.shape
        dynamic = tf.shape(patches)
        grid_h = static[1] if static[1] is not None else dynamic[1]
        grid_w = static[2] if static[2] is not None else dynamic[2]
        batch = dynamic[0]
        tokens = tf.reshape(patches, (batch, -1, self.hidden_size))
        if self.num_prefix_tokens:
            cls = tf.cast(self.cls, tokens.dtype)
            tokens = tf.concat([tf.tile(cls, (batch, 1, 1)), tokens], axis=1)
        tokens = tokens + self.position_embeddings_for(grid_h, grid_w)
        return self.dropout(tokens, training=training)

    def compute_output_shape(self, input_shape):
        h, w = input_shape[1], input_shape[2]
        n = None if h is None or w is None else self.num_prefix_tokens + h * w
        return (input_shape[0], n, self.hidden_size)

    def get_config(self):
        config = super().get_config()
        config.update(grid_size=list(self.grid_size), hidden_size=self.hidden_size,
                      num_prefix_tokens=self.num_prefix_tokens,
                      dropout_rate=self.dropout_rate)
        if self.position_embedding != "learned":  # existing models' configs unchanged
            config["position_embedding"] = self.position_embedding
        return config
