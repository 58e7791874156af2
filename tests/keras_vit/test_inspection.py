"""keras_vit.inspection: attention weights, endpoints, rollout, Figure 7 quantities."""
import itertools
import math
import tracemalloc

import keras
import numpy as np
import pytest

import keras_vit
from keras_vit import inspection
from tests.conftest import TINY, perturb, random_images


def _np_layer_norm(x, gamma, beta, eps):
    mean = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _finish_block(block, tokens, probs):
    """The rest of the block's forward pass (float64), given its attention probabilities."""
    w = {v.name: np.asarray(v, np.float64) for v in block.weights}
    x = np.asarray(tokens, np.float64)
    batch, count, dim = x.shape
    heads = block.num_heads
    h = _np_layer_norm(x, w["ln1_gamma"], w["ln1_beta"], 1e-6)
    value = (h @ w["qkv_kernel"][:, 2 * dim:] + w["qkv_bias"][2 * dim:])
    value = value.reshape(batch, count, heads, dim // heads).transpose(0, 2, 1, 3)
    attended = (probs @ value).transpose(0, 2, 1, 3).reshape(batch, count, dim)
    x = x + attended @ w["out_kernel"] + w["out_bias"]
    h = _np_layer_norm(x, w["ln2_gamma"], w["ln2_beta"], 1e-6)
    h = h @ w["mlp1_kernel"] + w["mlp1_bias"]
    h = 0.5 * h * (1 + np.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h ** 3)))
    return x + h @ w["mlp2_kernel"] + w["mlp2_bias"]


@pytest.mark.parametrize("size", [(32, 32), (24, 40)])
def test_attention_is_what_each_block_computes(tiny_model, size):
    """The recomputed probabilities reproduce each block's own output (float64 reference),
    sum to 1 over keys, at the built size and at another resolution."""
    images = random_images(2, *size)
    blocks = inspection.transformer_blocks(tiny_model)
    inputs = keras.Model(tiny_model.input, [b.input for b in blocks])(images)
    attentions = inspection.attention_weights(tiny_model, images)
    tokens = 1 + (size[0] // 8) * (size[1] // 8)
    assert len(attentions) == TINY["num_layers"]
    for block, x, probs in zip(blocks, inputs, attentions):
        assert probs.shape == (2, TINY["num_heads"], tokens, tokens)
        np.testing.assert_allclose(probs.sum(-1), 1.0, atol=1e-5)
        want = np.asarray(block(x), np.float64)
        np.testing.assert_allclose(_finish_block(block, x, probs.astype(np.float64)), want,
                                   atol=2e-4)
        # A wrong attention (uniform) does not reproduce the block's output.
        uniform = np.full_like(probs, 1.0 / tokens, dtype=np.float64)
        assert np.abs(_finish_block(block, x, uniform) - want).max() > 1e-2


def test_extraction_leaves_the_forward_pass_identical(tiny_model):
    images = random_images(2)
    before = np.asarray(tiny_model(images))
    config = tiny_model.get_config()
    inspection.attention_weights(tiny_model, images)
    endpoints = inspection.endpoints_model(tiny_model)(images)
    np.testing.assert_array_equal(np.asarray(tiny_model(images)), before)
    np.testing.assert_array_equal(np.asarray(endpoints["logits"]), before)
    assert tiny_model.get_config() == config


def test_attention_of_a_folded_inference_model_and_a_hybrid(tiny_model):
    images = random_images(1)
    folded = keras_vit.inference_model(tiny_model)
    for got, want in zip(inspection.attention_weights(folded, images),
                         inspection.attention_weights(tiny_model, images)):
        np.testing.assert_allclose(got, want, atol=1e-5)
    hybrid = perturb(keras_vit.ViT(image_size=64, num_classes=3, patch_size=1, hidden_size=32,
                                   mlp_size=64, num_heads=4, num_layers=2,
                                   resnet_stages=(1, 1), resnet_width=1), scale=0.05)
    attentions = inspection.attention_weights(hybrid, random_images(1, 64, 96))
    assert [a.shape for a in attentions] == [(1, 4, 1 + 8 * 12, 1 + 8 * 12)] * 2
    np.testing.assert_allclose(attentions[1].sum(-1), 1.0, atol=1e-5)
    assert inspection.pixels_per_token(hybrid) == 8
    endpoints = inspection.endpoints_model(hybrid)(random_images(1, 64, 96))
    assert endpoints["block_1"].shape == (1, 1 + 8 * 12, 32)
    np.testing.assert_array_equal(np.asarray(endpoints["logits"]),
                                  np.asarray(hybrid(random_images(1, 64, 96))))


def test_endpoints_names_and_values(tiny_model):
    images = random_images(2)
    out = inspection.endpoints_model(tiny_model)(images)
    assert list(out) == ["embedding", "block_0", "block_1", "encoder_norm", "pre_logits",
                         "logits"]
    head = tiny_model.get_layer("head")
    np.testing.assert_allclose(np.asarray(head(out["pre_logits"])), np.asarray(out["logits"]),
                               atol=1e-6)
    np.testing.assert_allclose(out["pre_logits"], np.asarray(out["encoder_norm"])[:, 0],
                               atol=1e-6)
    features = keras_vit.ViT(image_size=32, include_top=False, **TINY)
    assert "logits" not in inspection.endpoints_model(features)(images)


def _model_attending_to(patch_index, classifier="token"):
    """Every query of every block attends to one patch: tokens are the position embeddings
    alone (patch embedding zero), only the planted patch has a key, blocks are identities."""
    model = keras_vit.ViT(image_size=32, num_classes=3, classifier=classifier, **TINY)
    dim, prefix = TINY["hidden_size"], int(classifier == "token")
    model.get_layer("embedding").set_weights(
        [np.zeros(w.shape, "float32") for w in model.get_layer("embedding").weights])
    encoder = model.get_layer("posembed_input")
    pos = np.zeros(encoder.pos_embedding.shape, "float32")
    pos[0, prefix + patch_index, 0] = 1.0
    encoder.pos_embedding.assign(pos)
    for block in inspection.transformer_blocks(model):
        weights = {v.name: np.zeros(v.shape, "float32") for v in block.weights}
        weights["ln1_gamma"][:] = weights["ln2_gamma"][:] = 1.0
        head_dim = dim // TINY["num_heads"]
        for h in range(TINY["num_heads"]):
            weights["qkv_bias"][h * head_dim] = 1.0               # every query: e_0 per head
            weights["qkv_kernel"][0, dim + h * head_dim] = 50.0   # key of the planted patch
        block.set_weights([weights[v.name] for v in block.weights])
    return model


@pytest.mark.parametrize("classifier", ["token", "gap"])
def test_rollout_highlights_the_patch_the_model_looks_at(classifier):
    planted = 9  # row 2, column 1 of the 4x4 grid
    model = _model_attending_to(planted, classifier)
    result = inspection.explain(model, random_images(1))
    heat = result["rollout"][0]
    assert heat.shape == (4, 4)
    assert np.unravel_index(np.argmax(heat), heat.shape) == (2, 1)
    assert heat[2, 1] == 1.0
    others = np.delete(heat.ravel(), planted)
    assert others.max() < 0.5
    np.testing.assert_allclose(result["probabilities"].sum(-1), 1.0, atol=1e-6)


def test_rollout_of_identity_attention_is_identity():
    eye = np.broadcast_to(np.eye(5), (2, 3, 5, 5))
    np.testing.assert_allclose(inspection.attention_rollout([eye, eye]),
                               np.broadcast_to(np.eye(5), (2, 5, 5)))
    with pytest.raises(ValueError, match="at least one block"):
        inspection.attention_rollout([])


def test_rollout_order_and_the_class_token_row():
    """Two blocks over [cls, p0, p1, p2]: block 1 moves p2 into p1, block 2 moves p1 into
    cls. Rolled out, cls draws on p2 (through p1) but not on p0; gap averages all rows."""
    def block(rows):
        return np.asarray(rows, np.float64)[None, None]  # (batch 1, heads 1, 4, 4)

    first = block([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 0, 1]])
    second = block([[0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    mixed1 = 0.5 * first[0, 0] + 0.5 * np.eye(4)
    mixed2 = 0.5 * second[0, 0] + 0.5 * np.eye(4)
    want = mixed2 @ mixed1  # the later block applies to the earlier block's output
    np.testing.assert_allclose(inspection.attention_rollout([first, second])[0], want)
    assert want[0, 3] == 0.25 and want[0, 1] == 0.0
    token_map = inspection.rollout_map([first, second], (1, 3), num_prefix=1)[0]
    np.testing.assert_allclose(token_map, [want[0, 1:] / want[0, 1:].max()])
    # gap: [[.5, .5, 0], [0, 1, 0], [0, 0, 1]] averaged over rows is (1/6, 1/2, 1/3).
    gap = block([[0, 1, 0], [0, 1, 0], [0, 0, 1]])
    np.testing.assert_allclose(inspection.rollout_map([gap], (1, 3), 0)[0],
                               [[1 / 3, 1.0, 2 / 3]])


@pytest.mark.parametrize("size", [(32, 32), (24, 48)])
def test_position_embedding_similarity_diagonal_and_symmetry(tiny_model, size):
    sim = inspection.position_embedding_similarity(tiny_model, size)
    rows, cols = size[0] // 8, size[1] // 8
    assert sim.shape == (rows, cols, rows, cols)
    flat = sim.reshape(rows * cols, rows * cols)
    np.testing.assert_allclose(np.diag(flat), 1.0, atol=1e-6)
    np.testing.assert_allclose(flat, flat.T, atol=1e-12)
    assert flat.min() < 0.9  # random embeddings: not all alike


def _brute_force_mean_distance(rows, cols, step):
    cells = list(itertools.product(range(rows), range(cols)))
    total = sum(math.hypot(a[0] - b[0], a[1] - b[1]) for a in cells for b in cells)
    return step * total / len(cells) ** 2


@pytest.mark.parametrize("grid", [(1, 7), (2, 3), (4, 4)])
def test_mean_distance_of_uniform_attention_is_the_grid_mean(grid):
    tokens = 1 + grid[0] * grid[1]
    uniform = np.full((2, 3, tokens, tokens), 1.0 / tokens)
    got = inspection.mean_attention_distance(uniform, grid, num_prefix=1, pixels_per_token=8)
    want = _brute_force_mean_distance(*grid, 8)
    if grid[0] == 1:  # closed form on a line: E|i - j| = (n^2 - 1) / (3 n)
        assert want == pytest.approx(8 * (grid[1] ** 2 - 1) / (3 * grid[1]))
    np.testing.assert_allclose(got, want, rtol=1e-12)


def test_mean_distance_of_a_uniform_attention_model():
    """A model whose queries and keys are zero attends uniformly: the grid mean per head."""
    model = keras_vit.ViT(image_size=32, num_classes=3, **TINY)
    for block in inspection.transformer_blocks(model):
        weights = block.get_weights()
        weights[2] = np.zeros_like(weights[2])
        weights[3] = np.zeros_like(weights[3])
        block.set_weights(weights)
    distances = inspection.mean_attention_distances(model, random_images(2, 16, 32))
    assert distances.shape == (TINY["num_layers"], TINY["num_heads"])
    np.testing.assert_allclose(distances, _brute_force_mean_distance(2, 4, 8), rtol=1e-6)


def test_mean_distances_in_chunks_bound_memory_and_agree(tiny_model):
    """Attention maps grow with the fourth power of the image side (``inspect --image-size
    200`` on a 32-px model took 7.9 GB): images go through in chunks that fit the limit."""
    images = random_images(6, 128, 128)  # 257 tokens: ~8.4 MB of maps and copies an image
    whole = inspection.mean_attention_distances(tiny_model, images, memory_bytes=2 ** 30)
    tracemalloc.start()
    chunked = inspection.mean_attention_distances(tiny_model, images, memory_bytes=10 * 2 ** 20)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    np.testing.assert_allclose(chunked, whole, rtol=1e-9)  # float32 maps, other batch sizes
    assert peak < 12 * 2 ** 20, f"{peak / 2 ** 20:.0f} MiB"  # all six at once: ~40 MiB
    with pytest.raises(ValueError, match=r"attention maps at 400x400 \(2501 tokens\) take "
                                         r"about 764 MiB an image, over the 512 MiB"):
        inspection.attention_bytes_per_image(tiny_model, 400)


def test_mean_distance_of_attention_to_self_is_zero_and_shapes_are_checked():
    eye = np.broadcast_to(np.eye(7), (1, 2, 7, 7))
    np.testing.assert_allclose(inspection.mean_attention_distance(eye, (2, 3), 1), 0.0)
    with pytest.raises(ValueError, match="does not match a 3x3 grid"):
        inspection.mean_attention_distance(eye, (3, 3), 1)


def test_patch_embedding_components(tiny_model):
    components, explained = inspection.patch_embedding_components(tiny_model, count=5)
    assert components.shape == (5, 8, 8, 3)
    assert np.all(np.diff(explained) <= 0) and 0 < explained.sum() <= 1
    flat = components.reshape(5, -1)
    np.testing.assert_allclose(flat @ flat.T, np.eye(5), atol=1e-10)
    hybrid = keras_vit.ViT(image_size=32, num_classes=3, patch_size=1, hidden_size=32,
                           mlp_size=64, num_heads=4, num_layers=1, resnet_stages=(1,))
    with pytest.raises(ValueError, match="is a hybrid"):
        inspection.patch_embedding_components(hybrid)


def test_bad_inputs_name_the_problem(tiny_model):
    with pytest.raises(ValueError, match="not a multiple of 8"):
        inspection.token_grid(tiny_model, (30, 32))
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="not a keras_vit model"):
        inspection.attention_weights(plain, np.zeros((1, 4)))
