"""training/augment.py: each augmentation changes images as its paper / timm specify
(checked by statistics over many seeds, not only "it runs") and is a pure function of its
seed."""
import numpy as np
import pytest
import tensorflow as tf

from training import augment

N = 300  # seeds per statistic: a binomial fraction's standard error is <= 0.03


def _image(height=16, width=20, seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (height, width, 3)).astype(np.float32)


def _seed(i, stream=0):
    return tf.constant([stream, i], tf.int64)


def test_rand_augment_ops_do_what_their_names_say():
    image = _image()
    np.testing.assert_array_equal(augment.apply_op(image, augment.OP_NAMES.index("Invert"), 5),
                                  255.0 - image)
    # SolarizeIncreasing at the full magnitude: threshold 0, every pixel inverted.
    np.testing.assert_array_equal(
        augment.apply_op(image, augment.OP_NAMES.index("SolarizeIncreasing"), 10),
        255.0 - image)
    # PosterizeIncreasing: level 0 keeps 4 bits, level 10 none.
    out = augment.apply_op(image, augment.OP_NAMES.index("PosterizeIncreasing"), 0).numpy()
    np.testing.assert_array_equal(out, np.floor(image / 16) * 16)
    assert not augment.apply_op(image, augment.OP_NAMES.index("PosterizeIncreasing"),
                                10).numpy().any()
    # TranslateXRel at level 10: 45% of the width (9 of 20 columns), the rest filled grey.
    out = augment.apply_op(image, augment.OP_NAMES.index("TranslateXRel"), 10, 1.0).numpy()
    np.testing.assert_allclose(out[:, :11], image[:, 9:], atol=1e-3)
    np.testing.assert_array_equal(out[:, 11:], 128.0)
    # BrightnessIncreasing with sign -1 at level 10: factor 0.1.
    out = augment.apply_op(image, augment.OP_NAMES.index("BrightnessIncreasing"), 10, -1.0)
    np.testing.assert_allclose(out, image * 0.1, rtol=1e-5)
    # Rotate by the full 30 degrees moves pixels; rotation keeps the centre pixel's place.
    square = _image(15, 15)
    out = augment.apply_op(square, augment.OP_NAMES.index("Rotate"), 10, 1.0).numpy()
    np.testing.assert_allclose(out[7, 7], square[7, 7], atol=1e-3)
    assert np.abs(out - square).mean() > 20


def test_rand_augment_applies_each_layer_with_probability_one_half():
    image = _image()
    run = tf.function(lambda seed: augment.rand_augment(image, 2, 9, seed, 0.5))
    outs = [run(_seed(i)).numpy() for i in range(N)]
    unchanged = np.mean([np.array_equal(out, image) for out in outs])
    # Two layers, each skipped with probability 0.5: a quarter of the images are untouched.
    assert abs(unchanged - 0.25) < 0.08, unchanged
    assert all(o.shape == image.shape and o.min() >= 0 and o.max() <= 255 for o in outs)
    # A pure function of the seed.
    np.testing.assert_array_equal(run(_seed(7)), outs[7])
    assert not np.array_equal(outs[1], outs[2]) or not np.array_equal(outs[2], outs[3])


def test_rand_augment_layers_and_probability_one_change_every_image():
    image = _image()
    run = tf.function(lambda seed: augment.rand_augment(image, 1, 9, seed, 0.5,
                                                        probability=1.0))
    changed = np.mean([not np.array_equal(run(_seed(i)).numpy(), image) for i in range(100)])
    assert changed == 1.0


def test_random_erasing_erases_one_box_of_2_to_33_percent_with_probability():
    zeros = np.zeros((24, 24, 3), np.float32)
    run = tf.function(lambda seed: augment.random_erasing(zeros, 0.25, seed))
    erased, areas, noise = 0, [], []
    for i in range(N):
        out = run(_seed(i, 1)).numpy()
        inside = (out != 0).any(-1)
        if not inside.any():
            continue
        erased += 1
        rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
        box = inside[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        assert box.all() and inside.sum() == box.size  # one filled rectangle
        areas.append(box.size / inside.size)
        noise.append(out[inside])
    assert abs(erased / N - 0.25) < 0.08, erased
    assert min(areas) >= 0.015 and max(areas) <= 0.36, (min(areas), max(areas))
    noise = np.concatenate(noise)
    # N(0, 1) at the model's input scale: pixels 127.5 + 127.5 * N(0, 1), not clipped.
    assert abs(noise.mean() - 127.5) < 5 and abs(noise.std() - 127.5) < 5
    np.testing.assert_array_equal(run(_seed(3, 1)), run(_seed(3, 1)))


def test_soft_targets_smooth_as_timm_and_zero_unreadable_images():
    targets = augment.soft_targets(tf.constant([2, -1], tf.int64), 4, 0.1).numpy()
    np.testing.assert_allclose(targets[0], [0.025, 0.025, 0.925, 0.025], rtol=1e-6)
    np.testing.assert_array_equal(targets[1], 0.0)


def _batch(size=8):
    images = np.random.default_rng(1).uniform(0, 255, (size, 12, 12, 3)).astype(np.float32)
    labels = np.arange(size)
    return images, labels, augment.soft_targets(tf.constant(labels, tf.int64), size)


def test_mixup_mixes_with_the_reversed_batch_at_a_beta_ratio():
    images, labels, targets = _batch()
    run = tf.function(lambda seed: augment.mix_batch(images, targets, seed, mixup_alpha=0.2))
    ratios = []
    for i in range(N):
        mixed, soft, lam, cutmix = (t.numpy() for t in run(_seed(i, 2)))
        assert not cutmix
        np.testing.assert_allclose(mixed, lam * images + (1 - lam) * images[::-1], atol=1e-3)
        np.testing.assert_allclose(soft[0, labels[0]], lam, atol=1e-6)
        np.testing.assert_allclose(soft[0, labels[-1]], 1 - lam, atol=1e-6)
        ratios.append(lam)
    # Beta(0.2, 0.2): mean 1/2, variance 1 / (4 (2 alpha + 1)) = 0.179 (uniform: 0.083).
    assert abs(np.mean(ratios) - 0.5) < 0.06 and abs(np.var(ratios) - 0.179) < 0.03


def test_cutmix_pastes_one_box_and_its_targets_are_the_area_kept():
    images, labels, targets = _batch()
    run = tf.function(lambda seed: augment.mix_batch(images, targets, seed, cutmix_alpha=1.0))
    ratios = []
    for i in range(100):
        mixed, soft, lam, cutmix = (t.numpy() for t in run(_seed(i, 3)))
        assert cutmix
        pasted = (mixed != images).any(-1)[0]
        same = np.where(pasted[None, ..., None], images[::-1], images)
        np.testing.assert_array_equal(mixed, same)
        if pasted.any():
            rows, cols = np.flatnonzero(pasted.any(1)), np.flatnonzero(pasted.any(0))
            assert pasted[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all()
        np.testing.assert_allclose(lam, 1 - pasted.mean(), atol=1e-6)
        np.testing.assert_allclose(soft[0, labels[0]], lam, atol=1e-6)
        ratios.append(lam)
    # timm's rand_bbox in numpy: lam ~ Beta(1, 1), sides sqrt(1 - lam), centre uniform,
    # clipped at the borders; the kept area is larger than lam on average.
    rng = np.random.default_rng(0)
    lam = rng.beta(1.0, 1.0, 20_000)
    cut = (12 * np.sqrt(1 - lam)).astype(int)
    cy, cx = rng.integers(0, 12, (2, lam.size))
    side_h = np.clip(cy + cut // 2, 0, 12) - np.clip(cy - cut // 2, 0, 12)
    side_w = np.clip(cx + cut // 2, 0, 12) - np.clip(cx - cut // 2, 0, 12)
    expected = np.mean(1 - side_h * side_w / 144)
    assert abs(np.mean(ratios) - expected) < 0.07, (np.mean(ratios), expected)


@pytest.mark.parametrize("probability", [1.0, 0.5])
def test_mix_switches_between_mixup_and_cutmix_and_mixes_with_probability(probability):
    images, _, targets = _batch()
    run = tf.function(lambda seed: augment.mix_batch(images, targets, seed, mixup_alpha=0.8,
                                                     cutmix_alpha=1.0,
                                                     probability=probability))
    results = [run(_seed(i, 4)) for i in range(N)]
    cutmix = np.mean([bool(r[3]) for r in results])
    untouched = np.mean([np.array_equal(r[0].numpy(), images) for r in results])
    assert abs(cutmix - 0.5) < 0.08
    assert abs(untouched - (1 - probability)) < 0.08
