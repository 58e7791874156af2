"""Training from scratch: the deit / plain recipes, their input pipeline (a pure function of
(seed, epoch, position)), a resume with the full deit stack equal to the uninterrupted run bit
for bit, the sin-cos position embeddings, --dry-run."""
import json

import keras
import numpy as np

import keras_vit
from tests.conftest import random_images
from tests.training.conftest import rewind_run
from training import RECIPES, RunConfig, train
from training.data import load_digits, make_train_pipeline
from training.distribute import make_strategy

# The deit recipe on the demo's tiny model and digits, at 16 px, a few steps.
DEIT_TINY = RECIPES["deit"].replace(model="tiny", dataset="digits", image_size=16,
                                    batch_size=16, steps=6, warmup_steps=2)


def _batches(recipe, **kwargs):
    source = load_digits()
    ds = make_train_pipeline(source.train, recipe.image_size, recipe.batch_size, seed=3,
                             crop_area_min=recipe.crop_area_min, flip=recipe.flip,
                             augment=recipe, num_classes=source.num_classes, **kwargs)
    return [(x.numpy(), y.numpy()) for x, y in ds]


def test_deit_pipeline_is_a_function_of_seed_epoch_and_position():
    full = _batches(DEIT_TINY, num_steps=5)
    again = _batches(DEIT_TINY, num_steps=5)
    resumed = _batches(DEIT_TINY, skip_steps=2, num_steps=3)
    assert len(full) == 5 and len(resumed) == 3
    for (x, y), (x2, y2) in zip(full, again):
        np.testing.assert_array_equal(x, x2)
        np.testing.assert_array_equal(y, y2)
    for (x, y), (x2, y2) in zip(full[2:], resumed):
        np.testing.assert_array_equal(x, x2)
        np.testing.assert_array_equal(y, y2)
    # Soft targets (mixed, smoothed: 0.1 spread over the 10 classes), rows summing to 1.
    targets = np.concatenate([y for _, y in full])
    assert targets.shape == (80, 10) and targets.dtype == np.float32
    np.testing.assert_allclose(targets.sum(1), 1.0, rtol=1e-5)
    assert targets.min() >= 0.01 - 1e-6 and (targets.max(1) < 0.93).all()
    # The images differ from the hard-label recipe's (same crops and flips, no augmentation).
    plain = _batches(DEIT_TINY.replace(rand_augment_layers=0, random_erasing=0.0,
                                       mixup_alpha=0.0, cutmix_alpha=0.0,
                                       label_smoothing=0.0), num_steps=1)
    assert plain[0][1].dtype == np.int64 and plain[0][1].shape == (16,)
    assert np.abs(plain[0][0] - full[0][0]).mean() > 5


def test_deit_run_resumed_after_a_kill_equals_the_uninterrupted_run_bit_for_bit(tmp_path):
    """RandAugment, random erasing, Mixup/CutMix, label smoothing and stochastic depth 0.1:
    every random draw is keyed by (seed, epoch, position / batch / step), none by how many
    draws the process made before."""
    config = RunConfig(recipe=DEIT_TINY, output=str(tmp_path / "run"), checkpoint_every=3,
                       export=False)
    full = train(config, make_strategy("default"), verbose=False)
    expected = [w.numpy() for w in full["model"].weights]
    rewind_run(config.output, 3)  # what a kill -9 after the checkpoint of step 3 leaves
    resumed = train(config, make_strategy("default"), resume=True, verbose=False)
    assert resumed["metrics"]["steps"] == 6
    for want, got in zip(expected, resumed["model"].weights):
        np.testing.assert_array_equal(got.numpy(), want)


def _sincos_reference(h, w, width):
    """big_vision's posemb_sincos_2d in numpy (float64)."""
    y, x = np.mgrid[:h, :w]
    omega = 1.0 / 10_000 ** (np.arange(width // 4) / (width // 4 - 1))
    y = np.outer(y.flatten(), omega)
    x = np.outer(x.flatten(), omega)
    return np.concatenate([np.sin(x), np.cos(x), np.sin(y), np.cos(y)], 1)[None]


def test_sincos2d_position_embeddings_are_fixed_and_follow_the_grid(tmp_path):
    common = dict(image_size=16, patch_size=4, hidden_size=32, mlp_size=64, num_heads=4,
                  num_layers=1, num_classes=3, classifier="gap")
    learned = keras_vit.ViT(**common)
    sincos = keras_vit.ViT(**common, position_embedding="sincos2d")
    names = {w.path for w in learned.weights}
    # No weight of its own; the learned model's weights are as before.
    assert {w.path for w in sincos.weights} == names - {"posembed_input/pos_embedding"}
    assert "posembed_input/pos_embedding" in names
    encoder = sincos.get_layer("posembed_input")
    for grid in ((4, 4), (3, 5)):
        np.testing.assert_allclose(encoder.position_embeddings_for(*grid),
                                   _sincos_reference(*grid, 32), atol=1e-5)
    # Another resolution gets its own table (no resize of learned weights).
    assert sincos(random_images(1, 24, 20)).shape == (1, 3)
    path = str(tmp_path / "m.keras")
    sincos.save(path)
    reloaded = keras.saving.load_model(path)
    images = random_images(2, 16, 16)
    for model in (sincos, reloaded):
        for w in model.weights:  # identical random weights in both
            w.assign(np.random.default_rng(len(w.path)).normal(0, 0.2, w.shape))
    np.testing.assert_array_equal(sincos(images), reloaded(images))
    assert "position_embedding" not in learned.get_layer("posembed_input").get_config()


def test_dry_run_prints_the_resolved_recipe_with_overrides(capsys):
    from training.cli import main
    assert main(["train", "--recipe", "deit", "--model", "tiny", "--dataset", "digits",
                 "--image-size", "32", "--mixup-alpha", "0.5", "--dry-run"]) in (0, None)
    config = json.loads(capsys.readouterr().out)
    recipe = config["recipe"]
    assert (recipe["name"], recipe["model"], recipe["dataset"], recipe["image_size"]) == \
        ("deit", "tiny", "digits", 32)
    assert (recipe["mixup_alpha"], recipe["cutmix_alpha"], recipe["label_smoothing"],
            recipe["drop_path_rate"], recipe["random_erasing"]) == (0.5, 1.0, 0.1, 0.1, 0.25)
    assert main(["train", "--recipe", "plain", "--dry-run"]) in (0, None)
    recipe = json.loads(capsys.readouterr().out)["recipe"]
    assert (recipe["classifier"], recipe["position_embedding"], recipe["mixup_alpha"]) == \
        ("gap", "sincos2d", 0.2)


def test_bad_augmentation_flags_are_one_line_errors_naming_the_flag(capsys):
    from training.cli import main
    for flags, named in ((["--random-erasing", "2"], "--random-erasing"),
                         (["--mixup-alpha", "-1"], "--mixup-alpha"),
                         (["--rand-augment-magnitude", "11"], "--rand-augment-magnitude"),
                         (["--position-embedding", "rope"], "--position-embedding")):
        assert main(["train", "--recipe", "deit", *flags]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and named in lines[0], lines
