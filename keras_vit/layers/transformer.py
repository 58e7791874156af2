"""The pre-LN Transformer encoder block of the paper (eq. 2-3), written to run fast on CPU."""
from __future__ import annotations

import contextlib
import math
import zlib

import keras
import numpy as np
import tensorflow as tf

from keras_vit.layers.validation import token_size

from keras_vit.runtime import warn_if_training_with_frozen_weights

# The seed (int64 [2] tensor) of the stochastic-depth masks while a training step is traced
# (see drop_path_seed); None: the stateful global generator, as before.
_drop_path_seed = [None]


@contextlib.contextmanager
def drop_path_seed(seed):
    """Within this block, :class:`TransformerBlock` s called with ``training=True`` draw their
    stochastic-depth masks statelessly from ``seed`` (a [2] integer tensor, e.g. (run seed,
    step)) and the block's name, so a resumed run drops the same branches as an
    uninterrupted one. Nothing is added to the model: its weights and files are unchanged.

    Args:
        seed: a [2] integer tensor; the block is meant to wrap the model call inside a traced
            training step (the seed is read when the blocks are traced).
    """
    previous, _drop_path_seed[0] = _drop_path_seed[0], seed
    try:
        yield
    finally:
        _drop_path_seed[0] = previous


def layer_norm(x, gamma, beta, epsilon, float32_statistics: bool = True):
    """LayerNorm over the last axis, result in ``x``'s dtype.

    ``gamma`` / ``beta`` None: normalisation only (their affine map was folded into the next
    projection, see :func:`fold_block_weights`). ``float32_statistics``: mean and variance
    computed from a float32 copy of ``x`` (two casts over the tokens); False computes in
    ``x``'s dtype (used by folded bfloat16 blocks at inference, where ``x`` is already
    bfloat16 and the casts cost more than they buy: see :class:`TransformerBlock`)."""
    x32 = tf.cast(x, tf.float32) if float32_statistics else x
    mean, variance = tf.nn.moments(x32, axes=[-1], keepdims=True)
    normed = tf.cast((x32 - mean) * tf.math.rsqrt(variance + tf.cast(epsilon, x32.dtype)),
                     x.dtype)
    if gamma is None:
        return normed
    return normed * tf.cast(gamma, x.dtype) + tf.cast(beta, x.dtype)


# GELU, tanh approximation: 0.5 x (1 + tanh(z)) = x sigmoid(2z), z = sqrt(2/pi) (x + 0.044715 x^3).
_GELU_C1 = 2.0 * math.sqrt(2.0 / math.pi)
_GELU_C3 = _GELU_C1 * 0.044715
_SQRT_HALF = math.sqrt(0.5)


@tf.custom_gradient
def gelu_tanh_for_training(x):
    """``tf.nn.gelu(x, approximate=True)`` with a hand-written gradient.

    Autodiff of TensorFlow's GELU expands into ~15 elementwise ops over the MLP's widest
    activation; this form needs 6 forward and 8 backward. Used for training only: at
    inference ``tf.nn.gelu`` is kept because oneDNN fuses exactly that pattern into the
    preceding matmul. Same values and gradients to float rounding (tested).
    """
    c1, c3 = tf.cast(_GELU_C1, x.dtype), tf.cast(_GELU_C3, x.dtype)
    x2 = x * x
    s = tf.sigmoid(x * (c1 + c3 * x2))
    y = x * s

    def grad(dy):
        return dy * (s + y * (1 - s) * (c1 + 3 * c3 * x2))
    return y, grad


# "tanh": the approximation of the original release (jax's default); "erf": exact GELU
# (PyTorch's default, so timm's and transformers' ViTs); "quick": OpenAI CLIP's QuickGELU,
# x sigmoid(1.702 x) (timm ``act_layer="quick_gelu"``).
GELU_VARIANTS = ("tanh", "erf", "quick")


def gelu(h, variant: str, training=None):
    """The MLP activation ``variant`` (:data:`GELU_VARIANTS`) of ``h``."""
    if variant == "erf":
        # Exact GELU written with Erf, x (1 + erf(x / sqrt 2)) / 2: tf.nn.gelu writes it with
        # Erfc, which ONNX has no operator for (tf2onnx: "Erfc unsupported"). In the order
        # of the LiteRT converter's exact-GELU pattern, which makes it one builtin GELU op
        # (tf.Erf alone is not a builtin). Same values within float32 rounding (tested).
        return (h * 0.5) * (tf.math.erf(h * tf.cast(_SQRT_HALF, h.dtype)) + 1.0)
    if variant == "quick":
        return h * tf.sigmoid(tf.cast(1.702, h.dtype) * h)
    return gelu_tanh_for_training(h) if training else tf.nn.gelu(h, approximate=True)

# Weight order of a block (``layer.get_weights()``), unfolded and folded.
BLOCK_WEIGHTS = ("ln1_gamma", "ln1_beta", "qkv_kernel", "qkv_bias", "out_kernel", "out_bias",
                 "ln2_gamma", "ln2_beta", "mlp1_kernel", "mlp1_bias", "mlp2_kernel",
                 "mlp2_bias")
FOLDED_BLOCK_WEIGHTS = tuple(n for n in BLOCK_WEIGHTS if not n.startswith("ln"))
# A block with LayerScale (``layer_scale=True``) has these two after the others.
LAYER_SCALE_WEIGHTS = ("ls1_gamma", "ls2_gamma")


def fold_block_weights(weights, num_heads: int):
    """Folds a block's LayerNorm scale/offset and the attention scale into its projections.

    ``LN(x) W + b = norm(x) (diag(gamma) W) + (beta W + b)``, and the query columns of the
    fused qkv kernel and bias are multiplied by 1/sqrt(head_dim): exact in real arithmetic,
    computed in float64. A block's LayerScale (``gamma * branch``) is folded into the
    branch's last projection the same way (its columns and bias times gamma), so the folded
    block has none. Takes numpy arrays in :data:`BLOCK_WEIGHTS` order (then
    :data:`LAYER_SCALE_WEIGHTS` with LayerScale), returns :data:`FOLDED_BLOCK_WEIGHTS`.
    """
    if len(weights) not in (len(BLOCK_WEIGHTS), len(BLOCK_WEIGHTS) + 2):
        raise ValueError(f"expected the {len(BLOCK_WEIGHTS)} (or, with LayerScale, "
                         f"{len(BLOCK_WEIGHTS) + 2}) weights of an unfolded block, got "
                         f"{len(weights)}")
    w = {name: np.asarray(value, np.float64)
         for name, value in zip(BLOCK_WEIGHTS + LAYER_SCALE_WEIGHTS, weights)}
    for scale, kernel, bias in (("ls1_gamma", "out_kernel", "out_bias"),
                                ("ls2_gamma", "mlp2_kernel", "mlp2_bias")):
        if scale in w:
            w[kernel], w[bias] = w[kernel] * w[scale][None, :], w[bias] * w[scale]
    dim = w["qkv_kernel"].shape[0]
    qkv_kernel = w["ln1_gamma"][:, None] * w["qkv_kernel"]
    qkv_bias = w["qkv_bias"] + w["ln1_beta"] @ w["qkv_kernel"]
    scale = 1.0 / math.sqrt(dim // num_heads)
    qkv_kernel[:, :dim] *= scale
    qkv_bias[:dim] *= scale
    folded = dict(w, qkv_kernel=qkv_kernel, qkv_bias=qkv_bias,
                  mlp1_kernel=w["ln2_gamma"][:, None] * w["mlp1_kernel"],
                  mlp1_bias=w["mlp1_bias"] + w["ln2_beta"] @ w["mlp1_kernel"])
    return [folded[name].astype(np.float32) for name in FOLDED_BLOCK_WEIGHTS]


@keras.saving.register_keras_serializable(package="keras_vit")
class TransformerBlock(keras.layers.Layer):
    """``x + MHSA(LN(x))`` then ``x + MLP(LN(x))``, as in the original ViT.

    Numerics follow the original release: LayerNorm epsilon 1e-6, queries scaled by
    1/sqrt(head_dim), softmax in float32, MLP ``Dense -> GELU (tanh approximation, jax's
    default) -> Dense`` (``gelu="erf"`` and ``layer_norm_epsilon`` give the exact GELU and
    epsilon of timm (1e-6) and transformers (1e-12) checkpoints), dropout after the attention
    and after each MLP dense layer, plus optional stochastic depth (``drop_path_rate``) on both
    residual branches.

    Layout for speed (see shared PERFORMANCE notes): tokens are a 2-D (batch * tokens, D)
    matrix inside the block, q/k/v live in one fused (D, 3D) kernel, and every projection is
    ``matmul + bias_add (+ gelu)`` on 2-D tensors, which TensorFlow fuses into one oneDNN op.
    The original checkpoint's separate (D, heads, D/heads) q/k/v kernels map onto the fused
    kernel's column blocks exactly (see :mod:`keras_vit.checkpoints`).

    ``folded=True`` is the inference form made by :func:`keras_vit.inference_model`: the
    LayerNorm scale/offset and the query scale live inside the qkv and first MLP projections
    (:func:`fold_block_weights`), saving three elementwise passes over the tokens per
    LayerNorm; the block then has no LayerNorm weights and is not meant for training. A
    folded bfloat16 block also computes the LayerNorm statistics in bfloat16 (every other
    form in float32), sparing two casts of the token stream per LayerNorm.

    Input and output: (batch, tokens, D).

    Args:
        num_heads: attention heads (must divide D).
        mlp_size: hidden width of the MLP.
        dropout_rate: dropout after the attention output and each MLP dense layer.
        attention_dropout_rate: dropout on the attention probabilities.
        drop_path_rate: probability of dropping each residual branch per example (stochastic
            depth; kept branches are scaled by 1 / (1 - rate)).
        layer_norm_epsilon: 1e-6 as in the original (and timm); transformers' ViT uses 1e-12.
        gelu: ``"tanh"``: the tanh approximation (the original, jax's default); ``"erf"``:
            exact GELU (timm and transformers, PyTorch's default); ``"quick"``: CLIP's
            QuickGELU ``x sigmoid(1.702 x)``.
        folded: the inference form without LayerNorm weights (see above).
        layer_scale: LayerScale (CaiT, DeiT III, DINOv2; timm ``init_values``): each residual
            branch is multiplied by a learned per-channel ``gamma`` (``ls1_gamma``,
            ``ls2_gamma``, initialised to 1e-5) before it is added. A folded block has it
            inside its projections.
        **kwargs: ``keras.layers.Layer`` arguments (name, dtype).
    """

    def __init__(self, num_heads: int, mlp_size: int, dropout_rate: float = 0.0,
                 attention_dropout_rate: float = 0.0, drop_path_rate: float = 0.0,
                 layer_norm_epsilon: float = 1e-6, folded: bool = False, gelu: str = "tanh",
                 layer_scale: bool = False, **kwargs):
        super().__init__(**kwargs)
        if gelu not in GELU_VARIANTS:
            raise ValueError(f"gelu must be one of {GELU_VARIANTS}, got {gelu!r}")
        self.gelu = gelu
        self.num_heads = int(num_heads)
        self.mlp_size = int(mlp_size)
        self.dropout_rate = float(dropout_rate)
        self.attention_dropout_rate = float(attention_dropout_rate)
        self.drop_path_rate = float(drop_path_rate)
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.folded = bool(folded)
        self.layer_scale = bool(layer_scale)
        policy = self.dtype_policy
        self.attention_dropout = keras.layers.Dropout(self.attention_dropout_rate, dtype=policy)
        self.dropout = keras.layers.Dropout(self.dropout_rate, dtype=policy)

    def build(self, input_shape):
        self.hidden_size = dim = token_size(self, input_shape, self.num_heads)
        ones, zeros = keras.initializers.Ones(), keras.initializers.Zeros()
        # Glorot-uniform scaled for each of q, k, v separately (as three (D, D) kernels).
        qkv_init = keras.initializers.VarianceScaling(2.0, "fan_avg", "uniform")

        def weight(name, shape, init):
            return self.add_weight(name=name, shape=shape, initializer=init)

        self.ln1_gamma = self.ln1_beta = self.ln2_gamma = self.ln2_beta = None
        if not self.folded:
            self.ln1_gamma = weight("ln1_gamma", (dim,), ones)
            self.ln1_beta = weight("ln1_beta", (dim,), zeros)
        self.qkv_kernel = weight("qkv_kernel", (dim, 3 * dim), qkv_init)
        self.qkv_bias = weight("qkv_bias", (3 * dim,), zeros)
        self.out_kernel = weight("out_kernel", (dim, dim), "glorot_uniform")
        self.out_bias = weight("out_bias", (dim,), zeros)
        if not self.folded:
            self.ln2_gamma = weight("ln2_gamma", (dim,), ones)
            self.ln2_beta = weight("ln2_beta", (dim,), zeros)
        self.mlp1_kernel = weight("mlp1_kernel", (dim, self.mlp_size), "glorot_uniform")
        self.mlp1_bias = weight("mlp1_bias", (self.mlp_size,), zeros)
        self.mlp2_kernel = weight("mlp2_kernel", (self.mlp_size, dim), "glorot_uniform")
        self.mlp2_bias = weight("mlp2_bias", (dim,), zeros)
        self.ls1_gamma = self.ls2_gamma = None
        if self.layer_scale and not self.folded:
            scale = keras.initializers.Constant(1e-5)
            self.ls1_gamma = weight("ls1_gamma", (dim,), scale)
            self.ls2_gamma = weight("ls2_gamma", (dim,), scale)
        self.attention_dropout.build(None)
        self.dropout.build(None)

    def _drop_path(self, branch, batch, tokens, training, which: int):
        """Stochastic depth: drop the whole residual branch per example."""
        if not training or self.drop_path_rate <= 0.0:
            return branch
        keep = 1.0 - self.drop_path_rate
        seed = _drop_path_seed[0]
        if seed is None:
            noise = tf.random.uniform((batch, 1), dtype=tf.float32)
        else:
            key = tf.random.experimental.stateless_fold_in(
                tf.cast(seed, tf.int64), zlib.crc32(self.name.encode()) * 2 + which)
            noise = tf.random.stateless_uniform((batch, 1), key, dtype=tf.float32)
        mask = tf.floor(keep + noise)
        mask = tf.repeat(tf.cast(mask / keep, branch.dtype), tokens, axis=0)
        return branch * mask

    def call(self, x, training=None):
        if training is True:  # traced for training: oneDNN must not cache the weights
            warn_if_training_with_frozen_weights()
        dim, heads = self.hidden_size, self.num_heads
        head_dim = dim // heads
        dtype = self.compute_dtype
        static_shape = x.shape
        x = tf.cast(x, dtype)
        batch, tokens = tf.shape(x)[0], tf.shape(x)[1]

        def w(variable):
            return tf.cast(variable, dtype)

        stream = tf.reshape(x, (-1, dim))  # (batch * tokens, D)
        # LayerNorm statistics in float32, except in folded bfloat16 blocks (inference):
        # there the stream is bfloat16 already, and the casts were 4 passes over it per block.
        float32_statistics = not (self.folded and dtype == "bfloat16")

        # Multi-head self-attention branch.
        h = layer_norm(stream, self.ln1_gamma, self.ln1_beta, self.layer_norm_epsilon,
                       float32_statistics)
        qkv = tf.nn.bias_add(tf.matmul(h, w(self.qkv_kernel)), w(self.qkv_bias))
        qkv = tf.transpose(tf.reshape(qkv, (batch, tokens, 3, heads, head_dim)),
                           (2, 0, 3, 1, 4))  # (3, batch, heads, tokens, head_dim)
        # unstack, not qkv[i]: its gradient is one concatenation, where three strided
        # slices' gradients are three zero-filled copies of qkv (6% of a training step).
        query, key, value = tf.unstack(qkv, axis=0)
        if not self.folded:
            query = query * tf.cast(1.0 / math.sqrt(head_dim), dtype)
        logits = tf.matmul(query, key, transpose_b=True)
        probs = tf.cast(tf.nn.softmax(tf.cast(logits, tf.float32), axis=-1), dtype)
        probs = self.attention_dropout(probs, training=training)
        attended = tf.matmul(probs, value)  # (batch, heads, tokens, head_dim)
        attended = tf.reshape(tf.transpose(attended, (0, 2, 1, 3)), (-1, dim))
        branch = tf.nn.bias_add(tf.matmul(attended, w(self.out_kernel)), w(self.out_bias))
        branch = self._scaled(self.dropout(branch, training=training), self.ls1_gamma)
        stream = stream + self._drop_path(branch, batch, tokens, training, 0)

        # MLP branch.
        h = layer_norm(stream, self.ln2_gamma, self.ln2_beta, self.layer_norm_epsilon,
                       float32_statistics)
        h = tf.nn.bias_add(tf.matmul(h, w(self.mlp1_kernel)), w(self.mlp1_bias))
        h = self.dropout(gelu(h, self.gelu, training), training=training)
        branch = tf.nn.bias_add(tf.matmul(h, w(self.mlp2_kernel)), w(self.mlp2_bias))
        branch = self._scaled(self.dropout(branch, training=training), self.ls2_gamma)
        stream = stream + self._drop_path(branch, batch, tokens, training, 1)

        out = tf.reshape(stream, (batch, tokens, dim))
        return tf.ensure_shape(out, static_shape)

    def _scaled(self, branch, gamma):
        """LayerScale: the branch times its per-channel gamma (none: unchanged)."""
        return branch if gamma is None else branch * tf.cast(gamma, branch.dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(num_heads=self.num_heads, mlp_size=self.mlp_size,
                      dropout_rate=self.dropout_rate,
                      attention_dropout_rate=self.attention_dropout_rate,
                      drop_path_rate=self.drop_path_rate,
                      layer_norm_epsilon=self.layer_norm_epsilon, folded=self.folded,
                      gelu=self.gelu)
        if self.layer_scale:  # only when used: the configs of before stay as they were
            config.update(layer_scale=True)
        return config
