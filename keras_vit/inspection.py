"""Looking inside a keras_vit model: attention weights of every block, named intermediate
outputs (endpoints), attention rollout, and the quantities of the paper's section 4.5
("Inspecting Vision Transformer", Figures 6 and 7).

Nothing here changes a model or its forward path: the attention weights are recomputed
from each block's own weights and its input tokens (:func:`block_attention`), so models
keep their speed and their outputs bit for bit. Results are numpy arrays.

Examples:
    >>> import numpy as np, keras_vit
    >>> model = keras_vit.ViT(image_size=32, patch_size=8, hidden_size=64, mlp_size=128,
    ...                       num_heads=4, num_layers=2, num_classes=10)
    >>> images = np.zeros((1, 32, 32, 3), "float32")
    >>> [a.shape for a in keras_vit.inspection.attention_weights(model, images)]
    [(1, 4, 17, 17), (1, 4, 17, 17)]
"""
from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from keras_vit.inference import class_probabilities
from keras_vit.layers.transformer import TransformerBlock, layer_norm
from keras_vit.models import has_head
from keras_vit.position_embeddings import to_pair

# About how much memory the attention maps of one chunk of images may take in
# mean_attention_distances (``keras-vit inspect``).
INSPECTION_MEMORY_BYTES = 512 * 2 ** 20


def transformer_blocks(model: keras.Model) -> List[TransformerBlock]:
    """The model's :class:`~keras_vit.layers.TransformerBlock` layers, first to last.

    Args:
        model: a keras_vit model (a ValueError names any other).
    """
    blocks = [layer for layer in model.layers if isinstance(layer, TransformerBlock)]
    if not blocks:
        raise ValueError(f"model {model.name!r} has no TransformerBlock layers: not a "
                         "keras_vit model")
    return blocks


def num_prefix_tokens(model: keras.Model) -> int:
    """Tokens before the patches: 1 for the class-token classifier, 0 for ``"gap"``.

    Args:
        model: a keras_vit model.
    """
    return model.get_layer("posembed_input").num_prefix_tokens


def pixels_per_token(model: keras.Model) -> int:
    """Input pixels per token side: the patch size (times the ResNet stride for hybrids).

    Args:
        model: a keras_vit model.
    """
    return model.get_layer("image_validation").multiple_of


def token_grid(model: keras.Model, image_size) -> Tuple[int, int]:
    """The (rows, columns) patch grid of the tokens for images of ``image_size``.

    Args:
        model: a keras_vit model.
        image_size: int or (height, width), a multiple of :func:`pixels_per_token` (else a
            ValueError naming both).
    """
    height, width = to_pair(image_size, "image_size")
    stride = pixels_per_token(model)
    if height % stride or width % stride:
        raise ValueError(f"image size {(height, width)} is not a multiple of {stride}, the "
                         f"pixels per token of model {model.name!r}")
    return height // stride, width // stride


def block_attention(block: TransformerBlock, tokens) -> tf.Tensor:
    """The attention probabilities a block computes for its input ``tokens``.

    Recomputed from the block's own weights exactly as its forward pass does (pre-LN, fused
    qkv projection, queries scaled by 1/sqrt(head_dim) unless folded into the weights,
    softmax in float32), in float32, without attention dropout.

    Args:
        block: a built :class:`~keras_vit.layers.TransformerBlock`.
        tokens: its input, (batch, tokens, D).

    Returns:
        float32 tensor (batch, heads, tokens, tokens); each row sums to 1 over the keys.
    """
    x = tf.cast(tokens, tf.float32)
    batch, count, dim = tf.shape(x)[0], tf.shape(x)[1], block.hidden_size
    heads = block.num_heads
    head_dim = dim // heads

    def w(variable):
        return None if variable is None else tf.cast(variable, tf.float32)

    h = layer_norm(tf.reshape(x, (-1, dim)), w(block.ln1_gamma), w(block.ln1_beta),
                   block.layer_norm_epsilon)
    qk = tf.matmul(h, w(block.qkv_kernel)[:, :2 * dim]) + w(block.qkv_bias)[:2 * dim]
    qk = tf.transpose(tf.reshape(qk, (batch, count, 2, heads, head_dim)), (2, 0, 3, 1, 4))
    query, key = tf.unstack(qk, axis=0)
    if not block.folded:
        query = query / math.sqrt(head_dim)
    return tf.nn.softmax(tf.matmul(query, key, transpose_b=True), axis=-1)


def _block_inputs_model(model: keras.Model) -> keras.Model:
    return keras.Model(model.input, [block.input for block in transformer_blocks(model)])


def attention_weights(model: keras.Model, images) -> List[np.ndarray]:
    """The attention weights of every block of ``model`` for a batch of ``images``.

    Works for plain ViTs and hybrids, at any resolution the model accepts (its position
    embeddings are interpolated as in a normal call). The model is not modified: its own
    outputs stay what they were.

    Args:
        model: a keras_vit model.
        images: (batch, H, W, 3), what the model takes (raw pixels in [0, 255] when it
            includes preprocessing).

    Returns:
        One float32 array (batch, heads, tokens, tokens) per block, first block first;
        ``tokens`` is the class token (if any) followed by the patches row-major.
    """
    blocks = transformer_blocks(model)
    inputs = _block_inputs_model(model)(np.asarray(images, np.float32), training=False)
    if not isinstance(inputs, (list, tuple)):
        inputs = [inputs]
    return [block_attention(block, tokens).numpy() for block, tokens in zip(blocks, inputs)]


def endpoints_model(model: keras.Model) -> keras.Model:
    """A model with the same input and weights as ``model`` returning named intermediate
    outputs (as big_vision's ``out`` dict and TF Model Garden's endpoints):

    - ``"embedding"``: the token sequence entering the first block (patches embedded, class
      token prepended, position embeddings added), (batch, tokens, D);
    - ``"block_0"`` ... ``"block_{L-1}"``: each block's output tokens;
    - ``"encoder_norm"``: the tokens after the final LayerNorm;
    - ``"pre_logits"``: the pooled features the head sees (after the pre-logits layer if
      any), (batch, features);
    - ``"logits"``: the head's output, when the model has a head;
    - ``"projection"``: a CLIP tower's projected image embedding (``projection_dim``).

    Args:
        model: a keras_vit model.

    Returns:
        A ``keras.Model`` whose output is a dict of those tensors. It shares ``model``'s
        layers (and so its weights).
    """
    blocks = transformer_blocks(model)
    outputs = {"embedding": blocks[0].input}
    for i, block in enumerate(blocks):
        outputs[f"block_{i}"] = block.output
    names = {layer.name for layer in model.layers}
    if "encoder_norm" in names:  # (fc_norm models normalise after the pooling instead)
        outputs["encoder_norm"] = model.get_layer("encoder_norm").output
    if "head" in names:
        outputs["pre_logits"] = model.get_layer("head").input
        outputs["logits"] = model.get_layer("head").output
    elif "projection" in names:  # CLIP: the projected image embedding, not logits
        outputs["pre_logits"] = model.get_layer("projection").input
        outputs["projection"] = model.get_layer("projection").output
    else:
        outputs["pre_logits"] = model.get_layer("features").output
    return keras.Model(model.input, outputs, name=f"{model.name}_endpoints")


def attention_rollout(attentions: Sequence[np.ndarray]) -> np.ndarray:
    """Attention rollout (Abnar & Zuidema 2020), the method of the paper's Figures 6 and 14.

    Per block the heads are averaged and the residual connection is accounted for as
    ``0.5 * A + 0.5 * I`` (rows renormalised); the blocks' matrices are multiplied from the
    first to the last.

    Args:
        attentions: per block, (batch, heads, tokens, tokens), e.g. from
            :func:`attention_weights`.

    Returns:
        (batch, tokens, tokens): row i is how much output token i draws on each input token.
    """
    if not len(attentions):
        raise ValueError("attention_rollout needs the attention of at least one block")
    first = np.asarray(attentions[0], np.float64)
    eye = np.eye(first.shape[-1])
    rollout = np.broadcast_to(eye, first.shape[:1] + eye.shape)
    for attention in attentions:
        mixed = 0.5 * np.asarray(attention, np.float64).mean(axis=1) + 0.5 * eye
        mixed /= mixed.sum(axis=-1, keepdims=True)
        rollout = mixed @ rollout
    return rollout


def rollout_map(attentions: Sequence[np.ndarray], grid: Tuple[int, int],
                num_prefix: int) -> np.ndarray:
    """How much the classifier's input draws on each patch, as a (batch, rows, cols) map
    scaled to a maximum of 1.

    ``"token"`` models (``num_prefix=1``): the rollout row of the class token, as in the
    paper. ``"gap"`` models (``num_prefix=0``) have no class token; their classifier
    averages all output tokens, so the analogue is the rollout averaged over output tokens.

    Args:
        attentions: per block, (batch, heads, tokens, tokens).
        grid: the (rows, cols) patch grid.
        num_prefix: 1 with a class token, 0 for ``"gap"``.
    """
    rollout = attention_rollout(attentions)
    rows = rollout[:, 0, num_prefix:] if num_prefix else rollout.mean(axis=1)
    maps = rows.reshape((-1,) + tuple(grid))
    return maps / maps.max(axis=(1, 2), keepdims=True)


def _patch_coordinates(grid: Tuple[int, int]) -> np.ndarray:
    rows, cols = np.meshgrid(np.arange(grid[0]), np.arange(grid[1]), indexing="ij")
    return np.stack([rows.ravel(), cols.ravel()], axis=-1).astype(np.float64)


def mean_attention_distance(attention: np.ndarray, grid: Tuple[int, int], num_prefix: int,
                            pixels_per_token: int = 1) -> np.ndarray:
    """Mean attention distance per head (paper Figure 7, right): the distance in input
    pixels between a query patch and the patches it attends to, weighted by the attention,
    averaged over query patches and images.

    Only patch-to-patch attention counts: the class token has no position in the image, so
    its row and column are dropped and each query's weights over patches renormalised.

    Args:
        attention: one block's weights, (batch, heads, tokens, tokens).
        grid: the (rows, cols) patch grid.
        num_prefix: tokens before the patches (1 with a class token, else 0).
        pixels_per_token: pixels per grid step (patch size, times the ResNet stride for
            hybrids).

    Returns:
        (heads,) float64 distances in pixels.
    """
    attention = np.asarray(attention, np.float64)
    patches = grid[0] * grid[1]
    if attention.shape[-1] != num_prefix + patches:
        raise ValueError(f"attention over {attention.shape[-1]} tokens does not match a "
                         f"{grid[0]}x{grid[1]} grid with {num_prefix} prefix token(s)")
    weights = attention[:, :, num_prefix:, num_prefix:]
    weights = weights / weights.sum(axis=-1, keepdims=True)
    coords = _patch_coordinates(grid)
    distance = np.linalg.norm(coords[:, None] - coords[None], axis=-1) * pixels_per_token
    return (weights * distance).sum(axis=-1).mean(axis=(0, 2))


def position_embedding_similarity(model: keras.Model, image_size=None) -> np.ndarray:
    """Cosine similarity of each patch's position embedding with every other (paper
    Figure 7, centre), (rows, cols, rows, cols).

    Args:
        model: a keras_vit model.
        image_size: int or (height, width): the embeddings as the model interpolates them
            for that resolution. Default: the grid they were learned for.

    Returns:
        float64 array; ``[i, j]`` is the (rows, cols) map of patch (i, j)'s similarities.
    """
    encoder = model.get_layer("posembed_input")
    grid = encoder.grid_size if image_size is None else token_grid(model, image_size)
    pos = np.asarray(encoder.position_embeddings_for(int(grid[0]), int(grid[1])), np.float64)
    pos = pos[0, encoder.position_prefix_tokens:]
    pos = pos / np.linalg.norm(pos, axis=-1, keepdims=True)
    return (pos @ pos.T).reshape(tuple(grid) * 2)


def patch_embedding_components(model: keras.Model, count: int = 28
                               ) -> Tuple[np.ndarray, np.ndarray]:
    """The top principal components of the patch-embedding filters (paper Figure 7, left).

    Each of the D filters is a (patch, patch, 3) array; the components are those of the
    D filters after subtracting their mean.

    Args:
        model: a plain (not hybrid) keras_vit model.
        count: how many components (at most the number of filters).

    Returns:
        ``(components, explained)``: (count, patch, patch, channels) float64 and the
        fraction of the variance each explains.
    """
    embedding = model.get_layer("embedding")
    kernel = np.asarray(embedding.kernel, np.float64)  # (p, p, C, D)
    if kernel.shape[0] == 1:
        raise ValueError(f"model {model.name!r} is a hybrid: its embedding filters are 1x1 "
                         f"over {kernel.shape[2]} ResNet channels, not image patches")
    filters = kernel.reshape(-1, kernel.shape[-1]).T
    filters = filters - filters.mean(axis=0)
    _, singular, components = np.linalg.svd(filters, full_matrices=False)
    count = min(int(count), components.shape[0])
    explained = singular ** 2 / np.sum(singular ** 2)
    return components[:count].reshape((count,) + kernel.shape[:3]), explained[:count]


def attention_bytes_per_image(model: keras.Model, image_size,
                              memory_bytes: int = INSPECTION_MEMORY_BYTES) -> int:
    """About how much memory :func:`mean_attention_distances` needs per image of
    ``image_size``: the float32 maps of every block, then one block's float64 copy, weights
    and products. A ValueError with the estimate when that is over ``memory_bytes``."""
    grid = token_grid(model, image_size)
    blocks = transformer_blocks(model)
    tokens = num_prefix_tokens(model) + grid[0] * grid[1]
    needed = blocks[0].num_heads * tokens ** 2 * (4 * len(blocks) + 3 * 8)
    if needed > memory_bytes:
        height, width = to_pair(image_size, "image_size")
        raise ValueError(
            f"attention maps at {height}x{width} ({tokens} tokens) take about "
            f"{needed / 2 ** 20:,.0f} MiB an image, over the {memory_bytes / 2 ** 20:,.0f} MiB "
            "inspection limit (they grow with the fourth power of the image side): use a "
            "smaller image size")
    return needed


def mean_attention_distances(model: keras.Model, images,
                             memory_bytes: int = INSPECTION_MEMORY_BYTES) -> np.ndarray:
    """:func:`mean_attention_distance` of every block of ``model``.

    The attention maps grow with the fourth power of the image side, so the images go
    through in chunks whose maps fit in about ``memory_bytes``; a size at which one image's
    do not is a ValueError with the estimate.

    Args:
        model: a keras_vit model.
        images: (batch, H, W, 3), what the model takes.
        memory_bytes: about how much the attention maps of one chunk may take.

    Returns:
        (blocks, heads) float64 distances in input pixels.
    """
    images = np.asarray(images, np.float32)
    grid = token_grid(model, images.shape[1:3])
    prefix, stride = num_prefix_tokens(model), pixels_per_token(model)
    chunk = max(1, memory_bytes // attention_bytes_per_image(model, images.shape[1:3],
                                                             memory_bytes))
    blocks = transformer_blocks(model)
    total = np.zeros((len(blocks), blocks[0].num_heads))
    for start in range(0, len(images), chunk):
        part = images[start:start + chunk]
        for index, attention in enumerate(attention_weights(model, part)):
            total[index] += mean_attention_distance(attention, grid, prefix, stride) * len(part)
    return total / len(images)


def explain(model: keras.Model, images) -> Dict[str, np.ndarray]:
    """Rollout maps (:func:`rollout_map`) and class probabilities for a batch of ``images``.

    Args:
        model: a keras_vit model.
        images: (batch, H, W, 3), what the model takes.

    Returns:
        ``{"rollout": (batch, rows, cols) in [0, 1], "probabilities": (batch, classes)}``
        (probabilities only when the model has a head).
    """
    images = np.asarray(images, np.float32)
    grid = token_grid(model, images.shape[1:3])
    result = {"rollout": rollout_map(attention_weights(model, images), grid,
                                     num_prefix_tokens(model))}
    if has_head(model):
        result["probabilities"] = class_probabilities(model, images)
    return result


__all__ = ["attention_rollout", "attention_weights", "block_attention", "endpoints_model",
           "explain", "mean_attention_distance", "mean_attention_distances",
           "num_prefix_tokens", "patch_embedding_components", "pixels_per_token",
           "position_embedding_similarity", "rollout_map", "token_grid", "transformer_blocks"]
