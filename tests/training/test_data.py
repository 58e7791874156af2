"""Data sources and pipelines: split choice, folder validation, per-worker sharding."""
import os

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from training.data import DataError, load_source


class TinyTrainOnly(tfds.core.GeneratorBasedBuilder):
    """50 distinct 8x8 images (pixel value = example index), a train split only."""

    VERSION = tfds.core.Version("1.0.0")
    code_path = None  # (tfds would look it up through importlib_resources, not installed)

    def _info(self):
        return self.dataset_info_from_configs(features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(8, 8, 3)),
            "label": tfds.features.ClassLabel(num_classes=2)}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(50):
            yield i, {"image": np.full((8, 8, 3), i, np.uint8), "label": i % 2}


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    TinyTrainOnly(data_dir=data_dir).download_and_prepare()
    return data_dir


def _indices(ds):
    """The example indices (pixel values) of a source's (encoded image, label) dataset."""
    return [int(tf.io.decode_image(image)[0, 0, 0]) for image, _ in ds]


def test_tfds_default_splits_hold_out_two_percent_and_do_not_overlap(tfds_dir):
    source = load_source("tfds:tiny_train_only", tfds_dir)
    train, test = _indices(source.train), _indices(source.test)
    assert (source.num_train, source.num_test) == (len(train), len(test)) == (49, 1)
    assert not set(train) & set(test) and sorted(train + test) == list(range(50))


def test_tfds_training_on_the_whole_train_split_needs_an_explicit_test_split(tfds_dir):
    with pytest.raises(DataError, match="needs an explicit --test-split"):
        load_source("tfds:tiny_train_only", tfds_dir, train_split="train")
    with pytest.raises(DataError, match="overlaps the training split"):
        load_source("tfds:tiny_train_only", tfds_dir, train_split="train[:60%]",
                    test_split="train[50%:]")
    source = load_source("tfds:tiny_train_only", tfds_dir, train_split="train[:80%]",
                         test_split="train[80%:]")
    assert (source.num_train, source.num_test) == (40, 10)


def _write_images(root, counts, seed=0):
    rng = np.random.default_rng(seed)
    for cls, count in counts.items():
        os.makedirs(root / cls, exist_ok=True)
        for i in range(count):
            image = rng.integers(0, 255, (12, 10, 3), dtype=np.uint8)
            (root / cls / f"{i}.png").write_bytes(tf.io.encode_png(image).numpy())


def _write_bad_images(folder):
    """A truncated JPEG and a file that is no image at all; returns their paths."""
    jpeg = tf.io.encode_jpeg(np.full((64, 64, 3), 128, np.uint8)).numpy()
    (folder / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "junk.png").write_bytes(b"not an image")
    return [str(folder / "cut.jpg"), str(folder / "junk.png")]


def test_folder_source_lists_names_only_and_opens_no_file(tmp_path):
    """Nothing is decoded before training: a corrupt file, a truncated one and a dangling
    link (a file that cannot even be opened) are all listed."""
    root = tmp_path / "images"
    _write_images(root, {"cat": 3, "dog": 3})
    _write_bad_images(root / "dog")
    os.symlink(root / "nowhere.png", root / "cat" / "gone.png")
    source = load_source(f"folder:{root}")
    assert source.num_train + source.num_test == 9


def test_unreadable_images_keep_their_place_with_label_minus_one_and_are_named(tmp_path):
    """Training and evaluation pipelines: a bad image is replaced in place (label -1, so
    never trained on nor scored), recorded by name; a resume at step 1 gives the same
    batch, bit for bit, as the uninterrupted pipeline's second batch."""
    from training.data import BadImages, make_eval_pipeline, make_train_pipeline
    _write_images(tmp_path, {"good": 6})
    bad = _write_bad_images(tmp_path)
    paths = [str(tmp_path / "good" / f"{i}.png") for i in range(6)]
    paths[1], paths[4] = bad
    ds = tf.data.Dataset.from_tensor_slices((paths, np.arange(6)))
    common = dict(seed=3, crop_area_min=0.5, flip=True, read=tf.io.read_file,
                  shuffle_buffer=1)
    seen = BadImages()
    batches = list(make_train_pipeline(ds, 8, 3, bad_images=seen, **common))
    assert [b[1].numpy().tolist() for b in batches] == [[0, -1, 2], [3, -1, 5]]
    assert sorted(seen.names) == sorted(bad) and seen.summary()["count"] == 2
    np.testing.assert_array_equal(batches[1][0].numpy()[1], 0.0)
    resumed, = make_train_pipeline(ds, 8, 3, bad_images=BadImages(), skip_steps=1, **common)
    np.testing.assert_array_equal(resumed[0].numpy(), batches[1][0].numpy())
    np.testing.assert_array_equal(resumed[1].numpy(), batches[1][1].numpy())
    seen = BadImages()
    labels = [b[1].numpy().tolist() for b in make_eval_pipeline(
        ds, 8, 4, num_examples=6, global_batch_size=4, read=tf.io.read_file,
        bad_images=seen)]
    assert labels == [[0, -1, 2, 3], [-1, 5, -1, -1]] and sorted(seen.names) == sorted(bad)


def test_bad_images_past_the_limit_stop_with_one_line_naming_them():
    from training.data import BadImages
    seen = BadImages(limit=1)
    seen.record(tf.constant("a/1.jpg"))
    seen.record(tf.constant("a/1.jpg"))  # the same file met again (next epoch) counts once
    seen.check()
    seen.record(tf.constant("b/2.png"))
    with pytest.raises(DataError, match=r"^2 images could not be read or decoded, more than "
                                        r"--max-bad-images 1: a/1\.jpg, b/2\.png; fix") as error:
        seen.check()
    assert "\n" not in str(error.value)


def _crop_pair(jpeg, seed):
    from training.data import decode_and_inception_crop, inception_crop
    seed = tf.constant([seed, 7], tf.int64)
    cropped = decode_and_inception_crop(tf.constant(jpeg), 0.05, seed).numpy()
    today = inception_crop(tf.io.decode_jpeg(jpeg, channels=3), 0.05, seed).numpy()
    return cropped, today


def test_jpeg_crop_decodes_only_the_window_that_decode_then_crop_takes():
    """Same window for the same seed. Without chroma subsampling (4:4:4) the pixels are bit
    for bit those of decode-then-crop; with 4:2:0 libjpeg's chroma upsampling at the
    window's left and right edges sees other neighbours, so only those two columns may
    differ (measured: up to 48 levels on noise), every other pixel is bit-exact."""
    image = np.random.default_rng(0).integers(0, 255, (75, 100, 3), dtype=np.uint8)
    full = tf.io.encode_jpeg(image, quality=90, chroma_downsampling=False).numpy()
    half = tf.io.encode_jpeg(image, quality=90, chroma_downsampling=True).numpy()
    for seed in range(12):
        cropped, today = _crop_pair(full, seed)
        np.testing.assert_array_equal(cropped, today)
        cropped, today = _crop_pair(half, seed)
        assert cropped.shape == today.shape
        np.testing.assert_array_equal(cropped[:, 1:-1], today[:, 1:-1])


def test_training_pipeline_decodes_jpegs_with_decode_and_crop(tmp_path):
    from training.data import make_train_pipeline
    ds = tf.data.Dataset.from_tensor_slices((["a.jpg"], [0]))
    graph = make_train_pipeline(ds, 8, 1, seed=0, crop_area_min=0.5, read=tf.io.read_file,
                                shuffle_buffer=1)._as_serialized_graph().numpy()
    assert b"DecodeAndCropJpeg" in graph


def test_folder_source_ignores_hidden_entries_and_needs_a_test_image_per_class(tmp_path):
    root = tmp_path / "images"
    _write_images(root, {"cat": 3, "dog": 3, ".ipynb_checkpoints": 2})
    (root / "cat" / ".hidden.png").write_bytes(b"not an image")
    source = load_source(f"folder:{root}")
    assert source.labels == ["cat", "dog"] and source.num_train + source.num_test == 6
    tiny = tmp_path / "tiny"
    _write_images(tiny, {"cat": 1, "dog": 1})
    with pytest.raises(DataError, match="each class needs at least 2"):
        load_source(f"folder:{tiny}")


def test_each_worker_reads_only_its_share_and_together_they_make_the_global_batch(tmp_path):
    """Two input pipelines of a 2-worker run: disjoint positions; the files of the other
    worker are never read (they do not exist here, so reading one would fail)."""
    from training.data import make_train_pipeline
    paths = [str(tmp_path / f"{i}.png") for i in range(12)]
    for i in range(0, 12, 2):  # only worker 0's files
        image = np.full((4, 4, 3), i, np.uint8)
        (tmp_path / f"{i}.png").write_bytes(tf.io.encode_png(image).numpy())
    ds = tf.data.Dataset.from_tensor_slices((paths, np.arange(12)))
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=0,
                                         num_replicas_in_sync=2)
    batches = list(make_train_pipeline(ds, 4, 3, seed=0, read=tf.io.read_file,
                                       input_context=context, shuffle_buffer=1, num_steps=2))
    labels = [b[1].numpy().tolist() for b in batches]
    assert labels == [[0, 2, 4], [6, 8, 10]]
    # A resume at step 1 starts with the second batch, without reading the first.
    (tmp_path / "0.png").unlink()
    resumed = make_train_pipeline(ds, 4, 3, seed=0, read=tf.io.read_file,
                                  input_context=context, shuffle_buffer=1, skip_steps=1)
    assert [b[1].numpy().tolist() for b in resumed] == [[6, 8, 10]]


def test_eval_pipeline_pads_every_worker_to_the_same_number_of_steps():
    from training.data import make_eval_pipeline
    ds = tf.data.Dataset.from_tensor_slices((np.zeros((5, 4, 4, 3), np.uint8), np.arange(5)))
    shares = []
    for worker in range(2):
        context = tf.distribute.InputContext(2, worker, 2)
        shares.append([b[1].numpy().tolist() for b in make_eval_pipeline(
            ds, 4, 2, num_examples=5, global_batch_size=4, input_context=context)])
    assert shares == [[[0, 2], [4, -1]], [[1, 3], [-1, -1]]]


def test_folder_images_over_the_serving_pixel_limit_train_and_evaluate(tmp_path):
    """A 48-megapixel photo (a phone camera's) is training data, not an attack: the
    serving limit (25 million pixels) must not stop a run on it."""
    from training.data import make_eval_pipeline, make_train_pipeline
    root = tmp_path / "images"
    _write_images(root, {"cat": 2, "dog": 2})
    photo = np.zeros((6000, 8000, 3), np.uint8)
    photo[:, 4000:] = 200
    (root / "dog" / "photo.png").write_bytes(tf.io.encode_png(photo).numpy())
    source = load_source(f"folder:{root}")
    paths = [str(root / "dog" / "photo.png")]
    ds = tf.data.Dataset.from_tensor_slices((paths, np.array([1], np.int64)))
    (image, _), = make_train_pipeline(ds, 8, 1, seed=0, read=tf.io.read_file,
                                      shuffle_buffer=1, num_steps=1)
    assert image.shape == (1, 8, 8, 3)
    (image, _), = make_eval_pipeline(ds, 8, 1, num_examples=1, global_batch_size=1,
                                     read=tf.io.read_file)
    np.testing.assert_allclose(image.numpy()[0, :, :4], 0.0)
    np.testing.assert_allclose(image.numpy()[0, :, 4:], 200.0)
    assert source.num_train + source.num_test == 5
