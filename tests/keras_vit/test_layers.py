import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_vit.layers import (ImageValidation, PatchEncoder, Patches, ResNetUnit, StdConv2D,
                              TokenPooling, TransformerBlock)


def test_patches_is_a_linear_map_of_row_major_patches():
    layer = Patches(patch_size=4, hidden_size=6)
    images = np.random.default_rng(0).normal(size=(2, 8, 12, 3)).astype(np.float32)
    out = layer(images).numpy()
    assert out.shape == (2, 2, 3, 6)
    assert layer.kernel.shape == (4, 4, 3, 6)  # the original's HWIO layout
    kernel, bias = layer.kernel.numpy(), layer.bias.numpy()
    # Patch (row 1, column 2) by hand.
    patch = images[:, 4:8, 8:12, :]
    np.testing.assert_allclose(out[:, 1, 2], np.einsum("bhwc,hwcd->bd", patch, kernel) + bias,
                               rtol=1e-5, atol=1e-5)


def test_patch_encoder_weights_and_initialisation():
    layer = PatchEncoder(grid_size=(2, 3), hidden_size=8)
    out = layer(np.zeros((5, 2, 3, 8), np.float32))
    assert out.shape == (5, 7, 8)
    assert layer.pos_embedding.shape == (1, 7, 8)
    np.testing.assert_array_equal(layer.cls.numpy(), 0.0)  # zero class token
    std = np.std(PatchEncoder((16, 16), 64)(np.zeros((1, 16, 16, 64))).numpy())
    assert 0.015 < std < 0.025  # normal(stddev=0.02)


def _aligned_corners_bilinear(grid, out_h, out_w):
    """Bilinear resize of an (h, w, D) grid with aligned corners (scipy.ndimage.zoom order 1)."""
    h, w = grid.shape[:2]
    ys, xs = np.linspace(0, h - 1, out_h), np.linspace(0, w - 1, out_w)
    out = np.empty((out_h, out_w, grid.shape[2]))
    for i, y in enumerate(ys):
        y0 = min(int(np.floor(y)), h - 2)
        for j, x in enumerate(xs):
            x0 = min(int(np.floor(x)), w - 2)
            dy, dx = y - y0, x - x0
            out[i, j] = ((1 - dy) * (1 - dx) * grid[y0, x0] + (1 - dy) * dx * grid[y0, x0 + 1]
                         + dy * (1 - dx) * grid[y0 + 1, x0] + dy * dx * grid[y0 + 1, x0 + 1])
    return out


@pytest.mark.parametrize("prefix", [0, 1])
def test_patch_encoder_interpolates_with_aligned_corners(prefix):
    """3x4 grid -> 5x7 at run time: every value as aligned-corners bilinear gives it (a
    half-pixel resize, tf.image.resize's default, differs inside the grid)."""
    layer = PatchEncoder(grid_size=(3, 4), hidden_size=2, num_prefix_tokens=prefix)
    layer.build((None, 3, 4, 2))
    pos = np.random.default_rng(0).normal(size=(1, prefix + 12, 2)).astype(np.float32)
    layer.pos_embedding.assign(pos)
    out = layer(np.zeros((1, 5, 7, 2), np.float32)).numpy()
    assert out.shape == (1, prefix + 35, 2)
    want = _aligned_corners_bilinear(pos[0, prefix:].reshape(3, 4, 2).astype(np.float64), 5, 7)
    np.testing.assert_allclose(out[0, prefix:].reshape(5, 7, 2), want, rtol=1e-5, atol=1e-6)
    if prefix:
        np.testing.assert_array_equal(out[0, 0], pos[0, 0])  # class token's embedding kept
    half_pixel = tf.image.resize(pos[:, prefix:].reshape(1, 3, 4, 2), (5, 7)).numpy()
    assert np.abs(half_pixel[0] - want).max() > 0.05  # the test tells the two apart


def _block_reference(x, block):
    """Independent float64 pre-LN block (separate q/k/v, exact tanh GELU formula)."""
    w = {v.name: v.numpy().astype(np.float64) for v in block.weights}
    d, h = x.shape[-1], block.num_heads

    def ln(t, g, b):
        mu = t.mean(-1, keepdims=True)
        return (t - mu) / np.sqrt(((t - mu) ** 2).mean(-1, keepdims=True) + 1e-6) * g + b

    y = ln(x, w["ln1_gamma"], w["ln1_beta"])
    q, k, v = np.split(y @ w["qkv_kernel"] + w["qkv_bias"], 3, axis=-1)
    def split(t):
        return t.reshape(t.shape[0], t.shape[1], h, d // h).transpose(0, 2, 1, 3)

    q, k, v = split(q) / np.sqrt(d // h), split(k), split(v)
    logits = q @ k.transpose(0, 1, 3, 2)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    o = (probs @ v).transpose(0, 2, 1, 3).reshape(x.shape)
    x = x + o @ w["out_kernel"] + w["out_bias"]
    y = ln(x, w["ln2_gamma"], w["ln2_beta"]) @ w["mlp1_kernel"] + w["mlp1_bias"]
    y = 0.5 * y * (1 + np.tanh(np.sqrt(2 / np.pi) * (y + 0.044715 * y ** 3)))
    return x + y @ w["mlp2_kernel"] + w["mlp2_bias"]


def test_transformer_block_matches_reference():
    block = TransformerBlock(num_heads=4, mlp_size=32)
    x = np.random.default_rng(1).normal(size=(2, 5, 16)).astype(np.float32)
    block(x)
    rng = np.random.default_rng(2)
    for v in block.weights:
        v.assign(rng.normal(0, 0.3, v.shape).astype(np.float32))
    np.testing.assert_allclose(block(x).numpy(), _block_reference(x.astype(np.float64), block),
                               rtol=1e-4, atol=1e-4)
    assert block.qkv_kernel.shape == (16, 48)


def test_transformer_block_dropout_and_drop_path_only_in_training():
    block = TransformerBlock(num_heads=2, mlp_size=16, dropout_rate=0.5, drop_path_rate=0.5)
    x = np.random.default_rng(0).normal(size=(8, 3, 8)).astype(np.float32)
    np.testing.assert_array_equal(block(x).numpy(), block(x, training=False).numpy())
    assert not np.allclose(block(x, training=True).numpy(), block(x).numpy())


@pytest.mark.parametrize("kept_branch", ["attention", "mlp"])
def test_drop_path_drops_whole_examples_and_rescales_by_keep(kept_branch):
    """Stochastic depth: per example, a residual branch is either dropped entirely or kept
    and scaled by 1/keep. The other branch is zeroed so each example shows one of the two."""
    rate = 0.25
    block = TransformerBlock(num_heads=2, mlp_size=16, drop_path_rate=rate)
    x = np.random.default_rng(0).normal(size=(512, 3, 8)).astype(np.float32)
    block(x)
    rng = np.random.default_rng(1)
    zeroed = ("mlp2_kernel", "mlp2_bias") if kept_branch == "attention" else \
        ("out_kernel", "out_bias")
    for v in block.weights:
        name = v.path.split("/")[-1]
        v.assign(np.zeros(v.shape) if name in zeroed else rng.normal(0, 0.5, v.shape))
    branch = block(x, training=False).numpy() - x          # the kept branch, unscaled
    delta = block(x, training=True).numpy() - x
    dropped = np.all(np.abs(delta) < 1e-6, axis=(1, 2))
    scaled = np.all(np.isclose(delta, branch / (1 - rate), rtol=1e-4, atol=1e-5), axis=(1, 2))
    assert np.all(dropped ^ scaled)  # every example: all its tokens dropped, or all kept
    assert 0.69 < scaled.mean() < 0.81  # kept with probability 1 - rate (3 sigma)


def test_drop_path_rate_grows_linearly_with_depth():
    import keras_vit
    model = keras_vit.ViT(image_size=32, drop_path_rate=0.3, patch_size=8, hidden_size=16,
                          mlp_size=16, num_heads=2, num_layers=4)
    rates = [model.get_layer(f"encoderblock_{i}").drop_path_rate for i in range(4)]
    np.testing.assert_allclose(rates, [0.0, 0.1, 0.2, 0.3])


def test_transformer_block_rejects_bad_width():
    with pytest.raises(ValueError, match="divisible by num_heads=3"):
        TransformerBlock(num_heads=3, mlp_size=8)(np.zeros((1, 2, 8), np.float32))


def test_std_conv_matches_the_weight_standardisation_formula():
    """``(w - mean) / (std + 1e-5)`` per output channel over H, W, C_in (population std),
    then a SAME convolution; the stored kernel stays raw. A small kernel makes the epsilon's
    place matter (``sqrt(var + eps)`` would be 3x off)."""
    conv = StdConv2D(4, 3, padding="same", use_bias=False)
    x = np.random.default_rng(0).normal(size=(2, 5, 5, 2))
    conv(x.astype(np.float32))
    raw = np.random.default_rng(1).normal(0.3, 1e-3, (3, 3, 2, 4)).astype(np.float32)
    conv.kernel.assign(raw)
    raw = raw.astype(np.float64)
    mean = raw.mean(axis=(0, 1, 2))
    std = raw.std(axis=(0, 1, 2))  # population std
    w = (raw - mean) / (std + 1e-5)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    want = np.zeros((2, 5, 5, 4))
    for i in range(5):
        for j in range(5):
            want[:, i, j] = np.einsum("bhwc,hwco->bo", padded[:, i:i + 3, j:j + 3], w)
    got = conv(x.astype(np.float32)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    np.testing.assert_allclose(conv.kernel.numpy(), raw, rtol=1e-6)  # stored raw


def test_resnet_unit_shapes():
    unit = ResNetUnit(32, strides=2, use_projection=True)
    assert unit(np.zeros((1, 8, 8, 64), np.float32)).shape == (1, 4, 4, 128)
    assert unit.gn3.gamma.numpy().sum() == 0  # zero-init last GroupNorm scale


def test_token_pooling():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(TokenPooling("token")(x), x[:, 0])
    np.testing.assert_allclose(TokenPooling("gap")(x), x.mean(1))
    with pytest.raises(ValueError, match="classifier must be one of"):
        TokenPooling("max")


def test_image_validation_messages():
    layer = ImageValidation(16)
    with pytest.raises(ValueError, match=r"expected 3 channels.*received shape \(1, 32, 32, 4\)"):
        layer(np.zeros((1, 32, 32, 4), np.float32))
    with pytest.raises(ValueError, match="not a positive multiple of 16"):
        layer(np.zeros((1, 32, 40, 3), np.float32))
    fn = tf.function(layer, input_signature=[tf.TensorSpec((None, None, None, 3))])
    with pytest.raises(tf.errors.InvalidArgumentError, match="multiples of 16"):
        fn(tf.zeros((1, 20, 32, 3)))


@pytest.mark.parametrize("layer", [
    Patches(4, 8), PatchEncoder((2, 3), 8, num_prefix_tokens=0, dropout_rate=0.1),
    TransformerBlock(2, 16, 0.1, 0.2, 0.3), TokenPooling("gap"), ImageValidation(8, 1),
    ResNetUnit(8, 2, True), StdConv2D(4, 3),
])
def test_layer_config_round_trip(layer):
    config = keras.saving.serialize_keras_object(layer)
    clone = keras.saving.deserialize_keras_object(config)
    assert type(clone) is type(layer)
    assert clone.get_config() == layer.get_config()


def test_training_gelu_matches_tf_gelu_values_and_gradients():
    from keras_vit.layers.transformer import gelu_tanh_for_training

    def value_and_grad(fn, x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
        return y.numpy(), tape.gradient(y, x).numpy()

    x = np.linspace(-6.0, 6.0, 1001)
    exact = value_and_grad(lambda t: tf.nn.gelu(t, approximate=True), tf.constant(x))  # f64
    mine = value_and_grad(gelu_tanh_for_training, tf.constant(x, tf.float32))
    ref = value_and_grad(lambda t: tf.nn.gelu(t, approximate=True), tf.constant(x, tf.float32))
    for got, want, tf32 in zip(mine, exact, ref):
        error = np.abs(got - want).max()
        assert error < 2e-6
        assert error <= np.abs(tf32 - want).max() * 1.5  # as accurate as TF's own float32 GELU


def test_exact_gelu_is_written_with_erf_and_matches_keras_exact_gelu():
    """ONNX has Erf but no Erfc (tf2onnx refused tf.nn.gelu's exact form: "Erfc unsupported").
    The "erf" variant is keras.activations.gelu(approximate=False) within float32 rounding,
    gradients included. Measured on float32 inputs in [-8, 8] against float64: values 1.0e-6
    (2 ulp at |y| ~ 5; Keras's own float32 form 3.8e-7), gradients 2.2e-7 (1.5e-7); the tanh
    approximation is 4.7e-4 away."""
    from keras_vit.layers.transformer import gelu

    def value_and_grad(fn, x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = fn(x)
        return y.numpy(), tape.gradient(y, x).numpy()

    x = np.linspace(-8.0, 8.0, 4001).astype("float32")
    exact = value_and_grad(lambda t: keras.activations.gelu(t, approximate=False),
                           tf.constant(x, tf.float64))
    value, grad = value_and_grad(lambda t: gelu(t, "erf"), tf.constant(x))
    assert (np.abs(value - exact[0]) / np.maximum(np.abs(exact[0]), 1)).max() < 1e-6
    assert np.abs(grad - exact[1]).max() < 5e-7
    ops = {op.type for op in tf.function(lambda t: gelu(t, "erf")).get_concrete_function(
        tf.TensorSpec([None], tf.float32)).graph.get_operations()}
    assert "Erf" in ops and "Erfc" not in ops
