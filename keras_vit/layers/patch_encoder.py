"""Prefix tokens (class, distillation, registers) + position embeddings: learned ones
(interpolated at run time for other grids) or fixed 2-D sin-cos ones (computed for each
grid)."""
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

    The family's variants (timm ``VisionTransformer`` / ``VisionTransformerDistilled``):
    DeiT's distillation token follows the class token, DINOv2's register tokens follow
    them (timm's order: class, distillation, registers, patches). With
    ``embed_prefix=False`` (timm ``no_embed_class``: DeiT III, DINOv2 with registers) the
    position embeddings cover the patches only and are added before the prefix tokens are
    prepended.

    The embeddings are learned for ``grid_size``. Another grid (a different input
    resolution) is served by resizing them inside the graph with aligned-corners bilinear
    interpolation, the original fine-tuning semantics (paper section 3.2), so a model built
    at 224 accepts 384 or 320x256 images. The same grid takes the plain path, bit for bit.

    Args:
        grid_size: int or (h, w): the patch grid the embeddings are learned for.
        hidden_size: token width D.
        num_prefix_tokens: tokens before the patches: the class token (0 or 1) plus the
            distillation token and the registers below.
        dropout_rate: dropout after adding the position embeddings.
        num_register_tokens: register tokens (DINOv2 with registers), among the prefix.
        distillation_token: a distillation token (DeiT distilled), among the prefix.
        embed_prefix: the position embeddings have entries for the prefix tokens.
        position_embedding: ``"learned"`` (the paper's) or ``"sincos2d"``: fixed 2-D sin-cos
            embeddings of the patches (the plain-ViT baselines, arXiv 2205.01580), no
            weight, computed for the grid of each input; prefix tokens then get none.
        **kwargs: ``keras.layers.Layer`` arguments (name, dtype).
    """

    def __init__(self, grid_size, hidden_size: int, num_prefix_tokens: int = 1,
                 dropout_rate: float = 0.0, num_register_tokens: int = 0,
                 distillation_token: bool = False, embed_prefix: bool = True,
                 position_embedding: str = "learned", **kwargs):
        super().__init__(**kwargs)
        if position_embedding not in POSITION_EMBEDDINGS:
            raise ValueError(f"position_embedding must be one of {POSITION_EMBEDDINGS}, got "
                             f"{position_embedding!r}")
        self.position_embedding = position_embedding
        self.grid_size = to_pair(grid_size, "grid_size")
        self.hidden_size = int(hidden_size)
        self.num_register_tokens = int(num_register_tokens)
        self.distillation_token = bool(distillation_token)
        self.embed_prefix = bool(embed_prefix)
        extra = self.num_register_tokens + int(self.distillation_token)
        if self.num_register_tokens < 0 or num_prefix_tokens - extra not in (0, 1):
            raise ValueError(f"num_prefix_tokens must be 0 or 1 (the class token) plus the "
                             f"{extra} distillation and register tokens, got "
                             f"{num_prefix_tokens}")
        if self.distillation_token and num_prefix_tokens - extra != 1:
            raise ValueError("a distillation token needs a class token")
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.class_token = bool(num_prefix_tokens - extra)
        self.dropout_rate = float(dropout_rate)
        self.dropout = keras.layers.Dropout(self.dropout_rate, dtype=self.dtype_policy)

    def build(self, input_shape):
        if input_shape[-1] is not None and input_shape[-1] != self.hidden_size:
            raise ValueError(f"{self.name}: expected patch vectors of size {self.hidden_size}, "
                             f"received input shape {tuple(input_shape)}")
        if self.class_token:
            self.cls = self.add_weight(name="cls", shape=(1, 1, self.hidden_size),
                                       initializer="zeros")
        self.pos_embedding = None
        if self.position_embedding == "sincos2d":
            sincos_2d_position_embeddings(1, 1, self.hidden_size)  # checks the width
        else:
            num = self.position_prefix_tokens + self.grid_size[0] * self.grid_size[1]
            self.pos_embedding = self.add_weight(
                name="pos_embedding", shape=(1, num, self.hidden_size),
                initializer=keras.initializers.RandomNormal(stddev=0.02))
        self.dist = self.registers = None
        if self.distillation_token:
            self.dist = self.add_weight(name="dist", shape=(1, 1, self.hidden_size),
                                        initializer=keras.initializers.RandomNormal(stddev=0.02))
        if self.num_register_tokens:
            self.registers = self.add_weight(
                name="registers", shape=(1, self.num_register_tokens, self.hidden_size),
                initializer=keras.initializers.RandomNormal(stddev=0.02))
        self.dropout.build(None)

    @property
    def position_prefix_tokens(self) -> int:
        """The prefix tokens the position embeddings have entries for."""
        return self.num_prefix_tokens if self.embed_prefix else 0

    def _prefix(self, batch, dtype):
        parts = [w for w in (getattr(self, "cls", None) if self.class_token else None,
                             self.dist, self.registers) if w is not None]
        return [tf.tile(tf.cast(w, dtype), (batch, 1, 1)) for w in parts]

    def position_embeddings_for(self, grid_h, grid_w):
        """The (1, prefix + grid_h * grid_w, D) position embeddings for a (h, w) grid."""
        if self.pos_embedding is None:  # sincos2d: zeros for the prefix tokens
            table = sincos_2d_position_embeddings(grid_h, grid_w, self.hidden_size,
                                                  dtype=self.compute_dtype)
            prefix = tf.zeros((1, self.position_prefix_tokens, self.hidden_size), table.dtype)
            return tf.concat([prefix, table], axis=1)
        pos = tf.cast(self.pos_embedding, self.compute_dtype)
        gh, gw = self.grid_size
        if isinstance(grid_h, int) and isinstance(grid_w, int) and (grid_h, grid_w) == (gh, gw):
            return pos

        def resized():
            prefix = pos[:, :self.position_prefix_tokens]
            grid = tf.reshape(pos[:, self.position_prefix_tokens:],
                              (1, gh, gw, self.hidden_size))
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
        pos = self.position_embeddings_for(grid_h, grid_w)
        if not self.embed_prefix:
            tokens = tokens + pos
        if self.num_prefix_tokens:
            tokens = tf.concat(self._prefix(batch, tokens.dtype) + [tokens], axis=1)
        if self.embed_prefix:
            tokens = tokens + pos
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
        if self.num_register_tokens or self.distillation_token or not self.embed_prefix:
            # Only when used: the configs of the models of before stay as they were.
            config.update(num_register_tokens=self.num_register_tokens,
                          distillation_token=self.distillation_token,
                          embed_prefix=self.embed_prefix)
        if self.position_embedding != "learned":  # existing models' configs unchanged
            config["position_embedding"] = self.position_embedding
        return config
