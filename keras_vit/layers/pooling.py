"""Reduce the encoded sequence to one vector: the class token, the mean of the tokens, the
mean of the class and distillation tokens (DeiT), or multi-head attention pooling (MAP)."""
from __future__ import annotations

import math

import keras
import tensorflow as tf

from keras_vit.layers.validation import token_size

from keras_vit.layers.transformer import GELU_VARIANTS, gelu, layer_norm

CLASSIFIERS = ("token", "gap", "map", "distilled", "token_gap")


@keras.saving.register_keras_serializable(package="keras_vit")
class TokenPooling(keras.layers.Layer):
    """``"token"``: the class token's output (token 0); ``"gap"``: the mean of the tokens
    after the ``num_prefix_tokens`` prefix tokens (timm ``global_pool="avg"``; all tokens
    without prefix); ``"distilled"``: the mean of the class and distillation tokens
    (tokens 0 and 1: DeiT's features); ``"dist"``: the distillation token (token 1);
    ``"token_gap"``: the class token and ``"gap"``'s mean side by side, (batch, 2 x D)
    (transformers' ``Dinov2ForImageClassification``).

    Args:
        classifier: ``"token"``, ``"gap"``, ``"distilled"``, ``"dist"`` or ``"token_gap"``.
        num_prefix_tokens: tokens before the patches, left out of ``"gap"``'s mean.
        **kwargs: ``keras.layers.Layer`` arguments (name, dtype).
    """

    def __init__(self, classifier: str = "token", num_prefix_tokens: int = 0, **kwargs):
        super().__init__(**kwargs)
        kinds = ("token", "gap", "distilled", "dist", "token_gap")
        if classifier not in kinds:
            raise ValueError(f"classifier must be one of {kinds}, got {classifier!r}")
        self.classifier = classifier
        self.num_prefix_tokens = int(num_prefix_tokens)

    def call(self, tokens):
        if self.classifier == "token":
            return tokens[:, 0]
        if self.classifier == "dist":
            return tokens[:, 1]
        if self.classifier == "distilled":
            return (tokens[:, 0] + tokens[:, 1]) / 2
        mean = tf.reduce_mean(tokens[:, self.num_prefix_tokens:], axis=1)
        if self.classifier == "token_gap":
            return tf.concat([tokens[:, 0], mean], axis=-1)
        return mean

    def compute_output_shape(self, input_shape):
        if self.classifier == "token_gap":
            return (input_shape[0], None if input_shape[2] is None else 2 * input_shape[2])
        return (input_shape[0], input_shape[2])

    def get_config(self):
        config = super().get_config()
        config.update(classifier=self.classifier)
        if self.num_prefix_tokens:  # only when used: the configs of before stay as they were
            config.update(num_prefix_tokens=self.num_prefix_tokens)
        return config


@keras.saving.register_keras_serializable(package="keras_vit")
class AttentionPooling(keras.layers.Layer):
    """Multi-head attention pooling (MAP; SigLIP, timm ``global_pool="map"``,
    ``AttentionPoolLatent``): a learned probe attends to the tokens after the prefix, then
    ``y + MLP(LN(y))``. Softmax in float32; queries scaled by 1/sqrt(head_dim).

    Input: (batch, tokens, D). Output: (batch, D).

    Args:
        num_heads: attention heads (must divide D).
        mlp_size: hidden width of the MLP.
        num_prefix_tokens: tokens before the patches, not attended to (timm's default).
        layer_norm_epsilon, gelu: the LayerNorm epsilon and the MLP's GELU variant.
        **kwargs: ``keras.layers.Layer`` arguments (name, dtype).
    """

    def __init__(self, num_heads: int, mlp_size: int, num_prefix_tokens: int = 0,
                 layer_norm_epsilon: float = 1e-6, gelu: str = "erf", **kwargs):
        super().__init__(**kwargs)
        if gelu not in GELU_VARIANTS:
            raise ValueError(f"gelu must be one of {GELU_VARIANTS}, got {gelu!r}")
        self.num_heads, self.mlp_size = int(num_heads), int(mlp_size)
        self.num_prefix_tokens = int(num_prefix_tokens)
        self.layer_norm_epsilon, self.gelu = float(layer_norm_epsilon), gelu

    def build(self, input_shape):
        self.hidden_size = dim = token_size(self, input_shape, self.num_heads)
        shapes = dict(probe=(1, 1, dim), q_kernel=(dim, dim), q_bias=(dim,),
                      kv_kernel=(dim, 2 * dim), kv_bias=(2 * dim,), out_kernel=(dim, dim),
                      out_bias=(dim,), ln_gamma=(dim,), ln_beta=(dim,),
                      mlp1_kernel=(dim, self.mlp_size), mlp1_bias=(self.mlp_size,),
                      mlp2_kernel=(self.mlp_size, dim), mlp2_bias=(dim,))
        for name, shape in shapes.items():
            init = ("ones" if name == "ln_gamma" else "zeros" if len(shape) == 1
                    else "glorot_uniform")
            setattr(self, name, self.add_weight(name=name, shape=shape, initializer=init))

    def call(self, tokens):
        dim, heads = self.hidden_size, self.num_heads
        head_dim, dtype = dim // heads, self.compute_dtype
        x = tf.cast(tokens[:, self.num_prefix_tokens:], dtype)
        batch, length = tf.shape(x)[0], tf.shape(x)[1]

        def dense(h, kernel, bias):
            return tf.nn.bias_add(tf.matmul(h, tf.cast(kernel, dtype)), tf.cast(bias, dtype))

        query = dense(tf.reshape(tf.cast(self.probe, dtype), (1, dim)), self.q_kernel,
                      self.q_bias)
        query = tf.reshape(query, (1, heads, 1, head_dim)) * tf.cast(
            1.0 / math.sqrt(head_dim), dtype)
        kv = dense(tf.reshape(x, (-1, dim)), self.kv_kernel, self.kv_bias)
        kv = tf.transpose(tf.reshape(kv, (batch, length, 2, heads, head_dim)), (2, 0, 3, 1, 4))
        key, value = tf.unstack(kv, axis=0)  # (batch, heads, tokens, head_dim)
        logits = tf.matmul(tf.tile(query, (batch, 1, 1, 1)), key, transpose_b=True)
        probs = tf.cast(tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1), dtype)
        pooled = tf.reshape(tf.matmul(probs, value), (batch, dim))
        pooled = dense(pooled, self.out_kernel, self.out_bias)
        h = layer_norm(pooled, self.ln_gamma, self.ln_beta, self.layer_norm_epsilon)
        h = gelu(dense(h, self.mlp1_kernel, self.mlp1_bias), self.gelu)
        return pooled + dense(h, self.mlp2_kernel, self.mlp2_bias)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[2])

    def get_config(self):
        config = super().get_config()
        config.update(num_heads=self.num_heads, mlp_size=self.mlp_size,
                      num_prefix_tokens=self.num_prefix_tokens,
                      layer_norm_epsilon=self.layer_norm_epsilon, gelu=self.gelu)
        return config
