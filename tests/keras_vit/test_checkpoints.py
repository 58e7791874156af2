"""Original .npz checkpoints: numerical equivalence with an independent reference, errors."""
import logging
import os

import keras
import numpy as np
import pytest

import keras_vit
from keras_vit import checkpoints, pretrained
from tests import reference_vit
from tests.conftest import TINY, random_images


def _save(tmp_path, params, name="ckpt.npz"):
    path = str(tmp_path / name)
    np.savez(path, **params)
    return path


def _rel_err(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_plain_vit_matches_reference(tmp_path):
    rng = np.random.default_rng(0)
    params = reference_vit.make_checkpoint(rng)
    model = keras_vit.ViT(image_size=32, num_classes=5, weights=_save(tmp_path, params), **TINY)
    x = random_images(3)
    want = reference_vit.forward(params, x, heads=4)
    assert _rel_err(model(x).numpy(), want) < 2e-5


def test_pre_logits_kept_when_model_has_representation(tmp_path):
    params = reference_vit.make_checkpoint(np.random.default_rng(1), representation=24)
    path = _save(tmp_path, params)
    model = keras_vit.ViT(image_size=32, num_classes=5, representation_size=24, **TINY)
    report = keras_vit.load_pretrained(model, path)
    assert "pre_logits/kernel" in report["loaded"]
    x = random_images(2)
    assert _rel_err(model(x).numpy(), reference_vit.forward(params, x, heads=4)) < 2e-5


def test_pre_logits_dropped_and_head_reinitialised_for_fine_tuning(tmp_path, caplog):
    params = reference_vit.make_checkpoint(np.random.default_rng(2), representation=32,
                                           num_classes=7)
    model = keras_vit.ViT(image_size=32, num_classes=3, **TINY)
    with caplog.at_level(logging.WARNING, logger="keras_vit"):
        report = keras_vit.load_pretrained(model, _save(tmp_path, params))
    assert set(report["dropped"]) == {"pre_logits/kernel", "pre_logits/bias"}
    assert set(report["reinitialized"]) == {"head/kernel", "head/bias"}
    assert "zero-initialised" in caplog.text and "pre_logits" in caplog.text
    np.testing.assert_array_equal(model.get_layer("head").kernel.numpy(), 0.0)
    features = keras.Model(model.input, model.get_layer("pool").output)(random_images())
    want = reference_vit.forward(params, random_images(), heads=4, use_pre_logits=False,
                                 features=True)
    assert _rel_err(features.numpy(), want) < 2e-5


def test_gap_classifier_matches_reference(tmp_path):
    params = reference_vit.make_checkpoint(np.random.default_rng(3), classifier="gap")
    model = keras_vit.ViT(image_size=32, num_classes=5, classifier="gap",
                          weights=_save(tmp_path, params), **TINY)
    x = random_images()
    assert _rel_err(model(x).numpy(),
                    reference_vit.forward(params, x, heads=4, classifier="gap")) < 2e-5


@pytest.mark.parametrize("size", [48, (48, 64)])
def test_resolution_change_matches_reference(tmp_path, size):
    """A 4x4-grid checkpoint loaded into a larger model (the paper's fine-tune step)."""
    params = reference_vit.make_checkpoint(np.random.default_rng(4))
    path = _save(tmp_path, params)
    model = keras_vit.ViT(image_size=size, num_classes=5, **TINY)
    report = keras_vit.load_pretrained(model, path)
    assert report["resized"]
    h, w = (size, size) if isinstance(size, int) else size
    x = random_images(2, h, w)
    want = reference_vit.forward(params, x, heads=4)
    assert _rel_err(model(x).numpy(), want) < 2e-5
    # Runtime interpolation of a model built at 32 gives the same outputs.
    small = keras_vit.ViT(image_size=32, num_classes=5, weights=path, **TINY)
    np.testing.assert_allclose(small(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)


def test_hybrid_matches_reference(tmp_path):
    stages = (1, 1)
    params = reference_vit.make_checkpoint(np.random.default_rng(5), resnet_stages=stages,
                                           grid=(2, 2), scale=0.1)
    model = keras_vit.ViT(image_size=32, num_classes=5, resnet_stages=stages,
                          **dict(TINY, patch_size=1))
    report = keras_vit.load_pretrained(model, _save(tmp_path, params))
    assert "block2/unit1/gn_proj/scale" in report["loaded"]
    x = random_images(2)
    want = reference_vit.forward(params, x, heads=4, resnet_stages=stages)
    assert _rel_err(model(x).numpy(), want) < 2e-5
    # Runtime resolution for hybrids: multiples of the total stride (16 here).
    assert model(random_images(1, 48, 64)).shape == (1, 5)


def test_mismatch_lists_every_offending_key_and_changes_nothing(tmp_path):
    params = reference_vit.make_checkpoint(np.random.default_rng(6))
    del params["Transformer/encoderblock_1/LayerNorm_2/scale"]
    params["Transformer/encoderblock_0/MlpBlock_3/Dense_0/bias"] = np.zeros(65, np.float32)
    params["extra/kernel"] = np.zeros((2, 2), np.float32)
    model = keras_vit.ViT(image_size=32, num_classes=5, **TINY)
    before = [v.numpy().copy() for v in model.weights]
    with pytest.raises(keras_vit.CheckpointMismatchError) as info:
        keras_vit.load_pretrained(model, _save(tmp_path, params))
    message = str(info.value)
    assert "3 problem(s)" in message
    assert "missing key 'Transformer/encoderblock_1/LayerNorm_2/scale'" in message
    assert "Dense_0/bias: expected shape (64,), found (65,)" in message
    assert "unexpected key 'extra/kernel'" in message
    for old, new in zip(before, model.weights):
        np.testing.assert_array_equal(old, new.numpy())


def test_wrong_architecture_is_reported(tmp_path):
    params = reference_vit.make_checkpoint(np.random.default_rng(7), dim=48, heads=4)
    with pytest.raises(keras_vit.CheckpointMismatchError, match="embedding/kernel: expected"):
        keras_vit.ViT(image_size=32, weights=_save(tmp_path, params), **TINY)


@pytest.mark.parametrize("content", [b"", b"not a zip file at all", "truncated"])
def test_corrupt_file_gives_clear_error(tmp_path, content):
    path = tmp_path / "bad.npz"
    if content == "truncated":
        np.savez(path, **reference_vit.make_checkpoint(np.random.default_rng(0)))
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(checkpoints.CheckpointError, match="not a readable .npz checkpoint"):
        keras_vit.ViT(image_size=32, weights=str(path), **TINY)


def test_missing_file(tmp_path):
    with pytest.raises(checkpoints.CheckpointError, match="not found"):
        keras_vit.ViT(image_size=32, weights=str(tmp_path / "nope.npz"), **TINY)


def test_pickled_arrays_are_refused(tmp_path):
    path = str(tmp_path / "pickled.npz")
    np.savez(path, cls=np.array([{"a": 1}], dtype=object))
    with pytest.raises(checkpoints.CheckpointError, match="not a readable"):
        keras_vit.load_pretrained(keras_vit.ViT(image_size=32, **TINY), path)


def test_named_weights_resolve_to_the_original_bucket():
    table = pretrained.available_weights()
    assert table["imagenet21k"]["ViT_B16"].url.endswith("/vit_models/imagenet21k/ViT-B_16.npz")
    assert table["imagenet21k+imagenet2012"]["R50_ViT_B16"].url.endswith(
        "/imagenet21k+imagenet2012/R50+ViT-B_16.npz")
    assert "augreg/Ti_16-i21k-300ep" in table["augreg-imagenet21k"]["ViT_Ti16"].url
    with pytest.raises(ValueError, match="were not published for ViT_Ti16"):
        pretrained.weights_url("ViT_Ti16", "imagenet21k")
    with pytest.raises(ValueError, match="unknown weights 'imagenet'"):
        keras_vit.ViT_Ti16(weights="imagenet")


def test_named_weights_download_once_through_keras_cache(tmp_path, monkeypatch):
    """The builder asks keras.utils.get_file for the URL; the file it returns is loaded."""
    params = reference_vit.make_checkpoint(np.random.default_rng(8), dim=192, heads=3,
                                           mlp=16, layers=1, patch=16, grid=(2, 2))
    local = _save(tmp_path, params, "ViT-Ti_16.npz")
    calls = []

    def fake_get_file(fname, origin, cache_subdir):
        calls.append((fname, origin, cache_subdir))
        return local

    monkeypatch.setattr(keras.utils, "get_file", fake_get_file)
    with pytest.raises(keras_vit.CheckpointMismatchError):  # 12-layer model, 1-layer file
        keras_vit.ViT_Ti16(image_size=32, num_classes=5, weights="augreg-imagenet21k")
    fname, origin, subdir = calls[0]
    assert origin == pretrained.available_weights()["augreg-imagenet21k"]["ViT_Ti16"].url
    assert fname.endswith(".npz") and subdir.startswith("keras_vit")


def test_convert_checkpoint_writes_a_loadable_keras_file(tmp_path):
    params = reference_vit.make_checkpoint(np.random.default_rng(9), dim=192, heads=3, mlp=768,
                                           layers=12, patch=16, grid=(2, 2), num_classes=4,
                                           representation=16)
    src = _save(tmp_path, params)
    out = str(tmp_path / "ti.keras")
    converted = keras_vit.convert_checkpoint(src, "ViT_Ti16", out, image_size=48)
    assert converted.output_shape == (None, 4)  # the checkpoint's head and its pre-logits
    model = keras.saving.load_model(out)
    x = random_images(1, 48, 48)
    want = reference_vit.forward(params, x, heads=3)
    assert _rel_err(model(x).numpy(), want) < 2e-5
    with pytest.raises(ValueError, match="must end in .keras"):
        keras_vit.convert_checkpoint(src, "ViT_Ti16", str(tmp_path / "x.pt"))
    before = os.path.getmtime(out)
    with pytest.raises(ValueError, match="already exists"):
        keras_vit.convert_checkpoint(src, "ViT_Ti16", out)
    assert os.path.getmtime(out) == before


def test_checkpoint_without_head_gives_a_zero_head(tmp_path, caplog):
    """No head key at all (a feature extractor's checkpoint): the model's head starts from
    zeros (logged), as for another class count; the rest loads."""
    params = reference_vit.make_checkpoint(np.random.default_rng(15))
    del params["head/kernel"], params["head/bias"]
    with caplog.at_level(logging.WARNING, logger="keras_vit"):
        model = keras_vit.ViT(image_size=32, num_classes=7, weights=_save(tmp_path, params),
                              **TINY)
    assert "the checkpoint has no head" in caplog.text
    np.testing.assert_array_equal(model.get_layer("head").kernel.numpy(), 0.0)
    x = random_images(2)
    features = keras.Model(model.input, model.get_layer("pool").output)(x).numpy()
    want = reference_vit.forward(params, x, heads=4, features=True)
    assert _rel_err(features, want) < 2e-5


@pytest.mark.parametrize("representation", [None, 24])
def test_headless_model_loads_a_checkpoint_with_head(tmp_path, caplog, representation):
    """include_top=False ignores the checkpoint's head (logged), as Keras Applications do."""
    params = reference_vit.make_checkpoint(np.random.default_rng(10),
                                           representation=representation)
    path = _save(tmp_path, params)
    with caplog.at_level(logging.WARNING, logger="keras_vit"):
        model = keras_vit.ViT(image_size=32, include_top=False, weights=path,
                              representation_size=representation, **TINY)
    assert "has no head (include_top=False)" in caplog.text
    x = random_images(2)
    want = reference_vit.forward(params, x, heads=4, features=True,
                                 use_pre_logits=bool(representation))
    assert _rel_err(model(x).numpy(), want) < 2e-5


def test_head_on_pre_logits_is_not_kept_when_pre_logits_are_dropped(tmp_path, caplog):
    """Same class count, but the head was trained on pre-logits features: reset, logged."""
    params = reference_vit.make_checkpoint(np.random.default_rng(11), representation=32,
                                           num_classes=5)
    model = keras_vit.ViT(image_size=32, num_classes=5, **TINY)
    with caplog.at_level(logging.WARNING, logger="keras_vit"):
        report = keras_vit.load_pretrained(model, _save(tmp_path, params))
    assert set(report["reinitialized"]) == {"head/kernel", "head/bias"}
    assert "pre-logits" in caplog.text and "zero-initialised" in caplog.text
    np.testing.assert_array_equal(model.get_layer("head").kernel.numpy(), 0.0)
    np.testing.assert_array_equal(model.get_layer("head").bias.numpy(), 0.0)
    # With representation_size the released classifier is kept, matching the reference.
    keep = keras_vit.ViT(image_size=32, num_classes=5, representation_size=32, **TINY)
    assert not keras_vit.load_pretrained(keep, _save(tmp_path, params))["reinitialized"]
    x = random_images(2)
    assert _rel_err(keep(x).numpy(), reference_vit.forward(params, x, heads=4)) < 2e-5


def _weights_of(model):
    return [v.numpy().copy() for v in model.weights]


def _assert_unchanged(before, model):
    for old, new in zip(before, model.weights):
        np.testing.assert_array_equal(old, new.numpy())


@pytest.mark.parametrize("bad,error", [
    (np.full((32,), "x"), "not floating-point"),                        # strings
    (np.zeros((32,), np.complex64), "not floating-point"),              # complex
    (np.arange(32, dtype=np.int32), "not floating-point"),              # integers
    (np.full((32,), 1e300), "NaN or infinite"),                        # inf as float32
    (np.full((32,), np.nan, np.float32), "NaN or infinite"),
    (np.full((32,), np.inf, np.float32), "NaN or infinite"),
])
def test_bad_arrays_raise_naming_the_key_and_change_nothing(tmp_path, bad, error):
    params = reference_vit.make_checkpoint(np.random.default_rng(12))
    key = "Transformer/encoderblock_1/LayerNorm_2/scale"
    params[key] = bad
    model = keras_vit.ViT(image_size=32, num_classes=5, **TINY)
    before = _weights_of(model)
    with pytest.raises(checkpoints.CheckpointError, match=error) as info:
        keras_vit.load_pretrained(model, _save(tmp_path, params))
    assert key in str(info.value)
    _assert_unchanged(before, model)


def _write_npz_with_large_member(path, params, key, shape):
    """An .npz whose ``key`` declares ``shape`` float32 zeros, deflated (small on disk)."""
    import zipfile
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, value in params.items():
            with archive.open(name + ".npy", "w") as f:
                np.lib.format.write_array(f, np.asarray(value))
        with archive.open(key + ".npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": "<f4", "fortran_order": False, "shape": shape})
            chunk = bytes(1 << 22)
            for _ in range(int(np.prod(shape)) * 4 // len(chunk)):
                f.write(chunk)


@pytest.mark.parametrize("key,shape", [
    ("extra/kernel", (64, 1 << 20)),        # unexpected key declaring 256 MiB
    ("embedding/kernel", (64, 1 << 20)),    # an expected key with a huge wrong shape
])
def test_only_arrays_that_load_are_read(tmp_path, key, shape):
    """Names and shapes are checked from the headers: a mismatch costs no memory."""
    import tracemalloc
    params = reference_vit.make_checkpoint(np.random.default_rng(13))
    params.pop(key, None)
    path = tmp_path / "big.npz"
    _write_npz_with_large_member(path, params, key, shape)
    assert path.stat().st_size < 2 << 20  # under 2 MB on disk
    model = keras_vit.ViT(image_size=32, num_classes=5, **TINY)
    before = _weights_of(model)
    tracemalloc.start()
    try:
        with pytest.raises(keras_vit.CheckpointMismatchError, match=key):
            keras_vit.load_pretrained(model, str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 << 20, f"peak {peak / 2**20:.0f} MiB while checking the checkpoint"
    _assert_unchanged(before, model)


def test_truncated_array_data_is_refused_before_reading(tmp_path):
    path = tmp_path / "lying.npz"
    import zipfile
    with zipfile.ZipFile(path, "w") as archive:
        with archive.open("cls.npy", "w") as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": "<f4", "fortran_order": False, "shape": (1 << 28,)})
            f.write(bytes(64))
    with pytest.raises(checkpoints.CheckpointError, match="declares shape"):
        keras_vit.load_pretrained(keras_vit.ViT(image_size=32, **TINY), str(path))


def test_published_names_carry_their_metadata():
    table = pretrained.available_weights()
    i21k, ft = table["imagenet21k"]["ViT_L16"], table["imagenet21k+imagenet2012"]["ViT_B16"]
    assert (i21k.image_size, i21k.num_classes, i21k.representation_size, i21k.labels) == \
        (224, 21843, 1024, None)
    assert (ft.image_size, ft.num_classes, ft.representation_size, ft.classifier) == \
        (384, 1000, None, "token")
    augreg = table["augreg-imagenet21k+imagenet2012"]["ViT_S16"]
    assert (augreg.image_size, augreg.num_classes, augreg.representation_size) == (384, 1000, None)
    assert table["augreg-imagenet21k"]["ViT_Ti16"].representation_size is None
    # Defaults where the caller passed nothing; the pre-logits only with the released head.
    args = pretrained.builder_arguments
    assert args("ViT_B16", "imagenet21k") == dict(image_size=224, num_classes=21843,
                                                  classifier="token", representation_size=768)
    assert args("ViT_B16", "imagenet21k", num_classes=10)["representation_size"] is None
    assert args("ViT_B16", "imagenet21k", include_top=False)["representation_size"] is None
    assert args("ViT_B16", "imagenet21k", representation_size=0)["representation_size"] is None
    assert args("ViT_B16", "imagenet21k+imagenet2012", image_size=512)["image_size"] == 512
    assert args("ViT_B16", None) == dict(image_size=224, num_classes=1000, classifier="token",
                                         representation_size=None)


def test_imagenet_head_comes_with_its_class_names():
    names = pretrained.available_weights()["imagenet21k+imagenet2012"]["ViT_B16"].class_names()
    assert len(names) == 1000 and len(set(names)) == 1000
    assert names[0] == "n01440764" and names[-1] == "n15075141"  # tench ... toilet tissue
    assert pretrained.available_weights()["imagenet21k"]["ViT_B16"].class_names() is None


def test_named_builder_takes_size_and_classes_from_the_published_name(tmp_path, monkeypatch):
    """ViT_Ti16(weights="augreg-imagenet21k+imagenet2012") is the released 384 px model."""
    params = reference_vit.make_checkpoint(np.random.default_rng(14), dim=192, heads=3,
                                           mlp=768, layers=12, patch=16, grid=(24, 24),
                                           num_classes=1000)
    local = _save(tmp_path, params, "ti.npz")
    monkeypatch.setattr(keras.utils, "get_file", lambda fname, origin, cache_subdir: local)
    model = keras_vit.ViT_Ti16(weights="augreg-imagenet21k+imagenet2012")
    assert keras_vit.model_image_size(model) == (384, 384)
    assert model.output_shape == (None, 1000)
    np.testing.assert_array_equal(model.get_layer("head").bias.numpy(), params["head/bias"])
    # Its ImageNet-1k head comes labelled; a new head does not.
    assert model.class_names == pretrained.class_names("imagenet2012")
    assert not hasattr(keras_vit.ViT_Ti16(weights="augreg-imagenet21k+imagenet2012",
                                          num_classes=10), "class_names")


# ---- Hostile .npz files (issue 20): refused from the headers, before any model is built. ----

def _no_build(monkeypatch):
    """keras_vit.ViT raises if called: a check must refuse the file before any model."""
    def build(**kwargs):
        raise AssertionError(f"keras_vit.ViT called before the checks ({kwargs})")
    monkeypatch.setattr(keras_vit.models, "ViT", build)


def _write_npz(path, params, declared=None):
    """An .npz of ``params``; ``declared``: ``{key: (dtype, shape)}`` members of zeros
    (deflated: an 8 MB member of zeros is about 8 KB on disk)."""
    import zipfile
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, value in params.items():
            with archive.open(name + ".npy", "w") as f:
                np.lib.format.write_array(f, np.asarray(value))
        for name, (dtype, shape) in (declared or {}).items():
            with archive.open(name + ".npy", "w") as f:
                np.lib.format.write_array_header_1_0(
                    f, {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape})
                f.write(bytes(int(np.prod(shape)) * np.dtype(dtype).itemsize))
    return str(path)


def _stray_block(params):
    params["Transformer/encoderblock_2999/junk"] = np.zeros(1, np.float32)


def _block_gap(params):
    for key in [k for k in params if k.startswith("Transformer/encoderblock_1/")]:
        params[key.replace("encoderblock_1/", "encoderblock_2/")] = params.pop(key)


def _stray_unit(params):
    params["block1/unit40/junk"] = np.zeros(1, np.float32)


def _hollow_block(params):
    # A third "complete" block holding only its counting key: a deep, wide model from a few
    # small keys is refused before building.
    key = "Transformer/encoderblock_2/MultiHeadDotProductAttention_1/query/kernel"
    params[key] = np.zeros((32, 4, 8), np.float32)


@pytest.mark.parametrize("stages,edit,error", [
    (None, _stray_block, r"'Transformer/encoderblock_2999/junk' is outside the file's 2 blocks"),
    (None, _block_gap, r"blocks 0, 2 .*not 0\.\.1"),
    ((1, 1), _stray_unit, r"'block1/unit40/junk' is outside the file's 2 stage\(s\) of \(1, 1\)"),
    (None, _hollow_block, r"its blocks declare 18,112 values, but 3 blocks of width 32 and MLP "
                          r"width 64 have 24,576 weights"),
])
def test_architecture_counts_complete_blocks_and_refuses_stray_keys(
        tmp_path, monkeypatch, stages, edit, error):
    # A 109 KB file with one stray key built a 3,000-block model (216 s, 2.3 GB peak).
    from keras_vit.checkpoint_architecture import model_from_checkpoint
    params = reference_vit.make_checkpoint(np.random.default_rng(20), resnet_stages=stages,
                                           grid=(2, 2) if stages else (4, 4))
    edit(params)
    path = _save(tmp_path, params)
    _no_build(monkeypatch)
    with pytest.raises(checkpoints.CheckpointError, match=error) as info:
        model_from_checkpoint(path)
    assert str(info.value).startswith(path) and "\n" not in str(info.value)


@pytest.mark.parametrize("key,dtype,shape,error", [
    # |S0 declares 0 bytes: it passed the size check and built a 32,000 px model (6.8 GB).
    ("Transformer/posembed_input/pos_embedding", "|S0", (1, 4000**2 + 1, 32),
     r"not floating-point.*'Transformer/posembed_input/pos_embedding' \(\|S0\)"),
    ("Transformer/posembed_input/pos_embedding", np.float32, (1, 17, 8),
     r"pos_embedding' has shape \(1, 17, 8\), expected \(1, tokens, 32\)"),
    ("Transformer/posembed_input/pos_embedding", np.float32, (17, 32),
     r"pos_embedding' has shape \(17, 32\), expected 3 dimensions"),
    ("embedding/kernel", np.float32, (8, 4, 3, 32), r"patch size \(8, 4\)"),
    ("embedding/kernel", np.float32, (8, 8, 32), r"'embedding/kernel' has shape \(8, 8, 32\)"),
    ("Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel", np.float32,
     (32, 4, 9), r"query/kernel has shape \(32, 4, 9\), expected \(32, heads, 32 / heads\)"),
    ("head/bias", np.float32, (5, 1), r"'head/bias' has shape \(5, 1\)"),
    # The most a checkpoint may declare (ARCHITECTURE_BOUNDS), before inflating anything:
    ("Transformer/posembed_input/pos_embedding", np.float32, (1, 257**2 + 1, 32),
     r"declares 66,049 grid tokens.*at most 256 x 256"),
    ("head/bias", np.float16, (2**20 + 1,), r"classes 1048577 is not what a ViT can be"),
    ("Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel", np.float16, (32, 65537),
     r"MLP width 65537 is not what a ViT can be"),
])
def test_architecture_checks_dtype_shape_and_bounds_before_building(
        tmp_path, monkeypatch, key, dtype, shape, error):
    from keras_vit.checkpoint_architecture import model_from_checkpoint
    params = reference_vit.make_checkpoint(np.random.default_rng(21))
    params.pop(key)
    path = _write_npz(tmp_path / "hostile.npz", params, {key: (dtype, shape)})
    assert os.path.getsize(path) < 1 << 20
    _no_build(monkeypatch)
    with pytest.raises(checkpoints.CheckpointError, match=error) as info:
        model_from_checkpoint(path)
    assert str(info.value).startswith(path) and "\n" not in str(info.value)


def test_position_grid_beyond_a_vit_is_refused_before_it_is_read(tmp_path):
    """A deflate bomb in the position embeddings (a 2 MB file inflating to 2 GB loaded into
    a 32 px model at 6.5 GB peak): the header's grid is refused before any array is read."""
    import tracemalloc
    params = reference_vit.make_checkpoint(np.random.default_rng(22))
    key = "Transformer/posembed_input/pos_embedding"
    params.pop(key)
    path = _write_npz(tmp_path / "bomb.npz", params, {key: (np.float32, (1, 257**2 + 1, 32))})
    assert os.path.getsize(path) < 1 << 20
    model = keras_vit.ViT(image_size=32, num_classes=5, **TINY)
    before = _weights_of(model)
    tracemalloc.start()
    try:
        with pytest.raises(checkpoints.CheckpointError, match="at most 256 x 256") as info:
            keras_vit.load_pretrained(model, path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(info.value).startswith(path) and "\n" not in str(info.value)
    assert peak < 4 << 20, f"peak {peak / 2**20:.0f} MiB while checking the checkpoint"
    _assert_unchanged(before, model)
    assert checkpoints.ARCHITECTURE_BOUNDS["position grid side"] == 256


# ---- Keras's own files (issue 20): the same finiteness promise, corrupt files named. ----

def _nan_keras_file(tmp_path, suffix):
    model = keras_vit.ViT(image_size=32, num_classes=5, **TINY)
    gamma = model.get_layer("encoderblock_1").ln2_gamma
    gamma.assign(np.full(gamma.shape, np.nan, np.float32))
    path = str(tmp_path / f"nan{suffix}")
    model.save(path) if suffix == ".keras" else model.save_weights(path)
    return path


@pytest.mark.parametrize("suffix", [".weights.h5", ".keras"])
def test_keras_weights_with_nan_are_refused_and_change_nothing(tmp_path, suffix):
    # ViT(weights="nan.weights.h5") loaded silently and gave NaN logits.
    path = _nan_keras_file(tmp_path, suffix)
    with pytest.raises(checkpoints.CheckpointError, match="NaN or infinite") as info:
        keras_vit.ViT(image_size=32, num_classes=5, weights=path, **TINY)
    assert str(info.value).startswith(path) and "encoderblock_1/ln2_gamma" in str(info.value)
    from keras_vit.weights import load_weights
    model = keras_vit.ViT(image_size=32, num_classes=5, **TINY)
    before = _weights_of(model)
    with pytest.raises(checkpoints.CheckpointError, match="no weight was changed"):
        load_weights(model, path)
    _assert_unchanged(before, model)


@pytest.mark.parametrize("suffix", [".weights.h5", ".keras"])
def test_truncated_keras_file_is_named_corrupt(tmp_path, suffix):
    # A truncated .keras raised zipfile.BadZipFile (ViT) or "File not found" (load_model).
    model = keras_vit.ViT(image_size=32, num_classes=5, **TINY)
    path = str(tmp_path / f"model{suffix}")
    model.save(path) if suffix == ".keras" else model.save_weights(path)
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:len(data) // 2])
    calls = [lambda: keras_vit.ViT(image_size=32, num_classes=5, weights=path, **TINY)]
    if suffix == ".keras":
        calls.append(lambda: keras_vit.weights.load_keras_model(path))
    for call in calls:
        with pytest.raises(checkpoints.CheckpointError) as info:
            call()
        message = str(info.value)
        assert message.startswith(f"cannot load {path}: not a readable {suffix} file (corrupt "
                                  "or truncated?)"), message
        assert "\n" not in message and "not found" not in message
