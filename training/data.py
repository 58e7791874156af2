"""Input pipelines: the sources (digits, TFDS, image folders) and the tf.data pipelines.

Every image goes through :func:`keras_vit.preprocess_image` (decode, resize to the model's
resolution), the same function the TF Serving export uses. Training adds the original's
augmentation (inception crop + random horizontal flip) before it, with stateless random ops
keyed by (seed + epoch, position in the epoch's order): a resumed run sees exactly the crops
the uninterrupted one would have. The from-scratch recipes (deit, plain) add RandAugment,
random erasing and Mixup / CutMix (:mod:`training.augment`), keyed the same way. Each worker
of a multi-worker run reads, decodes and evaluates only its own share (shard by position
before reading: by file for folders).
"""
from __future__ import annotations

import dataclasses
import os
import threading
from typing import Callable, List, Optional

import numpy as np
import tensorflow as tf

from keras_vit import preprocess_image
from keras_vit.preprocessing import DEFAULT_INTERPOLATION, _MAGIC, _pixel_check, decode_image
from training.augment import batch_mixer, image_augmenter
from training.recipes import DEFAULT_MAX_BAD_IMAGES

# How a dataset written by keras-vit prepare describes itself (its dataset_info.json).
PREPARED_DESCRIPTION_PREFIX = "Written by keras-vit prepare from "

# Training images are the user's own files, not a stranger's request: the serving limit (25
# million pixels, keras_vit.preprocessing.DEFAULT_MAX_PIXELS) would stop a run on a folder of
# 48-megapixel phone photos. This bound still refuses a decompression bomb (a small file
# declaring gigapixels) from the header, before anything is decoded.
TRAINING_MAX_PIXELS = 250_000_000

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


class DataError(ValueError):
    """A dataset specification that cannot be served (unknown name, missing folder...)."""




class BadImages:
    """The images a run could not read or decode (corrupt, truncated, vanished, over the
    pixel limit): the pipelines skip them and :meth:`record` them here, from the input
    pipeline's threads; past ``limit`` distinct ones, :meth:`check` raises DataError."""

    SHOWN = 5  # named in the log and in metrics.json

    def __init__(self, limit: int = DEFAULT_MAX_BAD_IMAGES):
        self.limit = limit
        self.names: List[str] = []  # distinct, in the order met
        self._logged = 0
        self._lock = threading.Lock()

    def record(self, name) -> bool:
        name = name.numpy().decode("utf-8", "replace")
        with self._lock:
            if name not in self.names:
                self.names.append(name)
        return True

    def new_names(self) -> List[str]:
        """The first :data:`SHOWN` names not returned before (for the log)."""
        with self._lock:
            new = self.names[self._logged:self.SHOWN]
            self._logged = max(self._logged, min(len(self.names), self.SHOWN))
        return new

    def check(self) -> None:
        """A one-line DataError listing the files once there are more than ``limit``."""
        names = list(self.names)
        if len(names) > self.limit:
            shown = ", ".join(names[:20]) + (f" and {len(names) - 20} more"
                                             if len(names) > 20 else "")
            raise DataError(f"{len(names)} images could not be read or decoded, more than "
                            f"--max-bad-images {self.limit}: {shown}; fix or remove them")

    def summary(self) -> dict:
        """What metrics.json says: ``{"count": ..., "first": [names...]}``."""
        return {"count": len(self.names), "first": list(self.names[:self.SHOWN])}


@dataclasses.dataclass
class DataSource:
    """Unbatched (item, label) datasets. An item is a uint8 (H, W, C) image, encoded bytes,
    or (with ``read``) a reference such as a file path that ``read`` turns into bytes; the
    pipelines call ``read`` after sharding, so each worker reads only its own items."""

    name: str
    train: tf.data.Dataset
    test: tf.data.Dataset
    num_classes: int
    labels: List[str]
    num_train: int
    num_test: int
    read: Optional[Callable] = None

    def readable(self, ds: tf.data.Dataset) -> tf.data.Dataset:
        """``ds`` (train or test) with its items read: images or encoded bytes."""
        if self.read is None:
            return ds
        return ds.map(lambda item, label: (self.read(item), label),
                      num_parallel_calls=tf.data.AUTOTUNE)


def load_digits() -> DataSource:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images), fixed 80/20 split."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    images = np.repeat(images, 3, axis=-1)
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(labels))
    cut = int(len(labels) * 0.8)
    train, test = order[:cut], order[cut:]
    return DataSource(
        name="digits",
        train=tf.data.Dataset.from_tensor_slices((images[train], labels[train])),
        test=tf.data.Dataset.from_tensor_slices((images[test], labels[test])),
        num_classes=10, labels=[str(i) for i in range(10)],
        num_train=len(train), num_test=len(test))


def _split_ranges(spec: str, splits) -> list:
    """``train[:98%]+validation`` -> [(split name, first index, end index), ...]."""
    import tensorflow_datasets as tfds
    try:
        parts = tfds.core.ReadInstruction.from_spec(spec).to_absolute(splits)
    except (ValueError, KeyError, AssertionError) as error:
        raise DataError(f"invalid split {spec!r}: {error}") from None
    return [(p.splitname, p.from_ or 0,
             splits[p.splitname].num_examples if p.to is None else p.to) for p in parts]


def _check_disjoint(name: str, train_split: str, test_split: str, splits) -> None:
    """Evaluation data must never be training data."""
    for split, start, end in _split_ranges(train_split, splits):
        for other, other_start, other_end in _split_ranges(test_split, splits):
            if split == other and max(start, other_start) < min(end, other_end):
                raise DataError(
                    f"tfds:{name}: the test split {test_split!r} overlaps the training split "
                    f"{train_split!r} (examples {max(start, other_start)}.."
                    f"{min(end, other_end) - 1} of {split!r}); choose disjoint ones, e.g. "
                    f"--train-split '{split}[:98%]' --test-split '{split}[98%:]'")


def _default_test_split(name: str, train_split: Optional[str], splits) -> str:
    """``test``, else ``validation``, else the 2% of ``train`` the default training split
    leaves out (the paper's minival)."""
    for candidate in ("test", "validation"):
        if candidate in splits:
            return candidate
    if train_split is None:
        return "train[98%:]"
    raise DataError(f"tfds:{name} has no test or validation split, so --train-split "
                    f"{train_split!r} needs an explicit --test-split that it does not cover "
                    "(e.g. --train-split 'train[:98%]' --test-split 'train[98%:]')")


def _prepared_builder(name: str):
    """The TFDS builder of the dataset directory ``name`` (``keras-vit prepare``'s output,
    or any directory holding a ``dataset_info.json``); None when ``name`` is no directory."""
    import tensorflow_datasets as tfds

    if not os.path.isdir(name):
        if name.startswith(("/", ".", "~")):
            raise DataError(f"prepared dataset not found: {name}")
        return None
    if not tf.io.gfile.exists(os.path.join(name, "dataset_info.json")):
        raise DataError(f"{name} holds no dataset_info.json: not a prepared dataset "
                        "(write one with keras-vit prepare --dataset folder:PATH --output "
                        f"{name})")
    try:
        return tfds.builder_from_directory(name)
    except Exception as error:  # tfds raises several types for unreadable metadata
        raise DataError(f"cannot open the prepared dataset {name}: {error}") from None


def load_tfds(name: str, data_dir: Optional[str] = None, train_split: Optional[str] = None,
              test_split: Optional[str] = None, download: bool = True) -> DataSource:
    """A TFDS image-classification dataset (a name, or the directory of a prepared one),
    with the paper's splits by default.

    Training uses ``train[:98%]`` (the paper holds 2% out as minival); evaluation uses
    ``test`` when the dataset has it, else ``validation``, else ``train[98%:]``. Splits that
    would overlap are refused. Images stay encoded until after sharding. A dataset written
    by ``keras-vit prepare`` trains on its whole ``train`` split by default.
    """
    import tensorflow_datasets as tfds

    builder = _prepared_builder(name)
    if builder is None:
        try:
            builder = tfds.builder(name, data_dir=data_dir)
        except Exception as error:  # tfds raises several types for unknown names
            raise DataError(f"unknown TFDS dataset {name!r}: {error}") from None
    splits = builder.info.splits
    if test_split is None:
        test_split = _default_test_split(name, train_split, splits) if len(splits) else "test"
    # keras-vit prepare held the test split out already: its train split is all training.
    prepared = builder.info.description.startswith(PREPARED_DESCRIPTION_PREFIX)
    train_split = train_split or ("train" if prepared else "train[:98%]")
    if len(splits):
        _check_disjoint(name, train_split, test_split, splits)
    label = builder.info.features["label"]
    image_key = next(k for k, f in builder.info.features.items()
                     if isinstance(f, tfds.features.Image))
    decoders = {image_key: tfds.decode.SkipDecoding()}
    if os.path.isdir(name):  # a dataset directory (keras-vit prepare): read, never built
        train_ds, test_ds = builder.as_dataset(split=[train_split, test_split],
                                               shuffle_files=False, decoders=decoders)
    else:
        train_ds, test_ds = tfds.load(name, split=[train_split, test_split],
                                      data_dir=data_dir, download=download,
                                      shuffle_files=False, decoders=decoders)

    def pairs(ds):
        return ds.map(lambda ex: (ex[image_key], tf.cast(ex["label"], tf.int64)),
                      num_parallel_calls=tf.data.AUTOTUNE)

    def count(ds, split):
        try:
            return int(splits[split].num_examples)
        except (KeyError, ValueError):
            return int(ds.reduce(0, lambda n, _: n + 1))

    return DataSource(
        name=f"tfds:{name}", train=pairs(train_ds), test=pairs(test_ds),
        num_classes=label.num_classes, labels=list(label.names),
        num_train=count(train_ds, train_split), num_test=count(test_ds, test_split))


def _visible(names):
    """Directory entries without hidden ones (``.ipynb_checkpoints``, ``.DS_Store``...)."""
    return sorted(n.rstrip("/") for n in names if not n.startswith("."))


def load_folder(path: str, test_fraction: float = 0.2) -> DataSource:
    """``path/<class>/<image>`` JPEG/PNG/BMP/GIF files; a fixed per-class split.

    Hidden folders and files are ignored. Only names are listed (no file is opened): a
    corrupt or truncated file is met when it is read, and the pipelines skip it (see
    :class:`BadImages`). Each class needs at least 2 images (one is held out for testing).
    """
    gfile = tf.io.gfile
    if not gfile.isdir(path):
        raise DataError(f"image folder not found: {path}")
    classes = [d for d in _visible(gfile.listdir(path)) if gfile.isdir(os.path.join(path, d))]
    if len(classes) < 2:
        raise DataError(f"{path} must hold one sub-folder per class (at least 2), "
                        f"found {len(classes)}")
    rng = np.random.default_rng(0)
    train, test = [], []
    for index, cls in enumerate(classes):
        folder = os.path.join(path, cls)
        files = [os.path.join(folder, f) for f in _visible(gfile.listdir(folder))
                 if f.lower().endswith(IMAGE_EXTENSIONS)]
        if len(files) < 2:
            raise DataError(f"class folder {folder} has {len(files)} images "
                            f"({', '.join(IMAGE_EXTENSIONS)}): each class needs at least 2, "
                            "one is held out for testing")
        files = [files[i] for i in rng.permutation(len(files))]
        cut = max(1, int(round(len(files) * test_fraction)))
        test += [(f, index) for f in files[:cut]]
        train += [(f, index) for f in files[cut:]]

    def pairs(items):
        paths = tf.constant([p for p, _ in items], tf.string)
        labels = tf.constant([label for _, label in items], tf.int64)
        return tf.data.Dataset.from_tensor_slices((paths, labels))

    return DataSource(name=f"folder:{path}", train=pairs(train), test=pairs(test),
                      num_classes=len(classes), labels=classes,
                      num_train=len(train), num_test=len(test), read=tf.io.read_file)


def load_source(spec: str, data_dir: Optional[str] = None, train_split: Optional[str] = None,
                test_split: Optional[str] = None) -> DataSource:
    """``digits``, ``tfds:NAME``, ``tfds:DIR`` (a prepared dataset) or ``folder:PATH``."""
    if spec == "digits":
        return load_digits()
    if spec.startswith("tfds:"):
        return load_tfds(spec[5:], data_dir, train_split, test_split)
    if spec.startswith("folder:"):
        return load_folder(spec[7:])
    raise DataError(f"unknown dataset {spec!r}: expected 'digits', 'tfds:NAME', 'tfds:DIR' "
                    "or 'folder:PATH'")


def _crop_window(shape, area_min: float, seed):
    """(begin, size) of the inception crop of an image of ``shape`` (H, W, C)."""
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape, tf.zeros([0, 0, 4], tf.float32), seed=seed,
        area_range=(area_min, 1.0), aspect_ratio_range=(3 / 4, 4 / 3), min_object_covered=0,
        use_image_if_no_bounding_boxes=True)
    return begin, size


def inception_crop(image: tf.Tensor, area_min: float, seed) -> tf.Tensor:
    """Random crop of ``area_min``..100% area and 3/4..4/3 aspect ratio (the original's
    augmentation); stateless: the same ``seed`` (shape [2]) gives the same crop."""
    begin, size = _crop_window(tf.shape(image), area_min, seed)
    return tf.slice(image, begin, size)


def decode_and_inception_crop(data: tf.Tensor, area_min: float, seed) -> tf.Tensor:
    """:func:`inception_crop` of encoded bytes, decoding a JPEG's crop window only
    (``tf.image.decode_and_crop_jpeg``; the window comes from the header's size, so it is
    the one :func:`inception_crop` picks for the same seed); other formats are decoded,
    then cropped. (H, W, 3) uint8."""
    def jpeg():
        shape = tf.image.extract_jpeg_shape(data)
        limit = _pixel_check(shape[0], shape[1], "JPEG", TRAINING_MAX_PIXELS, None)
        with tf.control_dependencies([limit]):
            begin, size = _crop_window(tf.concat([shape[:2], [3]], 0), area_min, seed)
            window = tf.stack([begin[0], begin[1], size[0], size[1]])
            return tf.image.decode_and_crop_jpeg(data, window, channels=3)

    def other():
        return inception_crop(decode_image(data, max_pixels=TRAINING_MAX_PIXELS), area_min,
                              seed)

    is_jpeg = tf.equal(tf.strings.substr(data, 0, len(_MAGIC[0])), _MAGIC[0])
    return tf.ensure_shape(tf.cond(is_jpeg, jpeg, other), (None, None, 3))


def _bad_image_name(item, read):
    """How a skipped image is named: its path, or (encoded bytes) a fingerprint of them."""
    if read is not None:
        return tf.strings.as_string(item) if item.dtype != tf.string else item
    return tf.strings.join(["encoded image #", tf.strings.as_string(
        tf.strings.to_hash_bucket_fast(item, 2 ** 62))])


def _map_skipping_bad(ds, prepare, fallback, name_of, bad_images):
    """``ds.map(prepare)``, except that an element ``prepare`` fails on (an image that
    cannot be read or decoded) becomes ``fallback()`` (label -1: never trained on, left out
    of evaluation, like padding) and is recorded in ``bad_images``. Every element keeps its
    position, so which examples make batch k (and their augmentation) stays a function of
    (seed, k) alone: a resumed run skips the same files in the same batches.

    The map runs in parallel with its failures dropped (``ignore_errors``); each surviving
    element carries its index, so the gaps before it are filled with ``fallback()``, and a
    second pass over the (cheap, undecoded) input names the elements that filled them."""
    count = tf.get_static_value(ds.cardinality())
    count = -1 if count is None else int(count)  # unknown or infinite: no end to mark
    good = ds.enumerate().map(lambda index, element: (index, prepare(*element)),
                              num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    good = good.ignore_errors()
    if count >= 0:  # an end marker (index = count) to fill a gap at the end
        good = good.concatenate(tf.data.Dataset.from_tensors(
            (tf.constant(count, tf.int64), fallback())))

    def gap_before(previous, element):
        return element[0], (element[0] - previous - 1,) + element

    def fill(missing, index, example):
        stand_in = fallback()
        real = tf.cast(tf.logical_or(count < 0, index < count), tf.int64)  # not the marker
        return tuple(tf.concat([tf.repeat(part[None], missing, 0), whole[None]], 0)
                     [:missing + real] for part, whole in zip(stand_in, example))

    filled = good.scan(tf.constant(-1, tf.int64), gap_before).map(
        fill, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()

    def record(example, name):
        if bad_images is None:
            return example
        done = tf.cond(example[1] < 0,
                       lambda: tf.py_function(bad_images.record, [name], tf.bool),
                       lambda: tf.constant(True))
        with tf.control_dependencies([done]):
            return tuple(tf.identity(t) for t in example)

    names = ds.map(name_of)
    return tf.data.Dataset.zip((filled, names)).map(
        record, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _decodes(item_spec, read) -> bool:
    """Whether a pipeline decodes (so may meet a bad image): paths or encoded bytes."""
    return read is not None or item_spec.dtype == tf.string


def _fallback(image_size, label_dtype=tf.int64):
    """The (image, label -1) that stands for padding or an image that cannot be read."""
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    return lambda: (tf.zeros([height, width, 3], tf.float32), tf.constant(-1, label_dtype))


def _options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    # Sharding is done by the pipelines themselves (by position, before reading).
    options.experimental_distribute.auto_shard_policy = \
        tf.data.experimental.AutoShardPolicy.OFF
    return options


# The per-image functions use tf.cond / tf.while_loop themselves: AutoGraph's conversion of
# them (and of keras_vit's decoders) only cost time, half of a process's time to its first
# batch (benchmarks/results/2026-12-06-input-pipeline.md).
_no_autograph = tf.autograph.experimental.do_not_convert


def _shard(ds, input_context):
    if input_context is not None and input_context.num_input_pipelines > 1:
        ds = ds.shard(input_context.num_input_pipelines, input_context.input_pipeline_id)
    return ds


def train_example_fn(image_size, *, seed, crop_area_min: Optional[float] = None,
                     flip: bool = False, read: Optional[Callable] = None,
                     per_image: Optional[Callable] = None) -> Callable:
    """``(position, item, label) -> (image, label)``: one training example read, augmented
    and resized, its augmentation keyed by (``seed``, ``position``) alone (``seed`` may be a
    tensor). :func:`make_train_pipeline` and the tf.data service pipeline
    (:mod:`training.data_service`) both map it. ``per_image``
    (:func:`training.augment.image_augmenter`) runs last, keyed the same way."""
    @_no_autograph
    def prepare(position, item, label):
        if crop_area_min is not None or flip:
            keys = tf.random.experimental.stateless_split(
                tf.stack([tf.cast(seed, tf.int64), tf.cast(position, tf.int64)]), 2)
        image = read(item) if read is not None else item
        if crop_area_min is not None:
            image = (decode_and_inception_crop(image, crop_area_min, keys[0])
                     if image.dtype == tf.string else
                     inception_crop(image, crop_area_min, keys[0]))
        image = preprocess_image(image, image_size, max_pixels=TRAINING_MAX_PIXELS)
        if flip:
            image = tf.image.stateless_random_flip_left_right(image, keys[1])
        if per_image is not None:
            image = per_image(image, tf.stack([tf.cast(seed, tf.int64),
                                               tf.cast(position, tf.int64)]))
        return image, label

    return prepare


def make_train_pipeline(ds: tf.data.Dataset, image_size, batch_size: int, *, seed: int,
                        crop_area_min: Optional[float] = None, flip: bool = False,
                        read: Optional[Callable] = None, skip_steps: int = 0,
                        num_steps: Optional[int] = None, input_context=None,
                        shuffle_buffer: int = 10_000,
                        bad_images: Optional[BadImages] = None, augment=None,
                        num_classes: Optional[int] = None) -> tf.data.Dataset:
    """One epoch of shuffled, augmented (float32 pixels in [0, 255], int64 labels) batches.

    ``augment`` (a :class:`training.recipes.Recipe`) adds its from-scratch augmentations
    (:mod:`training.augment`): RandAugment and random erasing per image, keyed like the crop;
    label smoothing, Mixup and CutMix per batch, keyed by (``seed``, input pipeline, batch
    index); the labels are then (batch, ``num_classes``) float32 soft targets.

    The order and every augmentation are functions of ``seed`` (the run's seed + epoch) and
    the example's position in that order, whatever the number of workers and wherever the
    epoch starts: ``skip_steps`` (a resume) skips before reading anything; ``num_steps``
    limits the epoch. ``batch_size`` is the per-replica batch when ``input_context``
    (tf.distribute) is given; a step takes one batch per replica. An image that cannot be
    read or decoded keeps its place with label -1 (see :func:`_map_skipping_bad`).
    """
    per_image = image_augmenter(augment) if augment is not None else None
    per_batch = batch_mixer(augment, num_classes) if augment is not None else None
    prepare = train_example_fn(image_size, seed=seed, crop_area_min=crop_area_min, flip=flip,
                               read=read, per_image=per_image)
    replicas_here = (input_context.num_replicas_in_sync // input_context.num_input_pipelines
                     if input_context is not None else 1)
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=False).enumerate()
    ds = _shard(ds, input_context).skip(skip_steps * replicas_here * batch_size)
    if _decodes(ds.element_spec[1][0], read):
        ds = _map_skipping_bad(ds, lambda position, example: prepare(position, *example),
                               _fallback(image_size, ds.element_spec[1][1].dtype),
                               lambda position, example: _bad_image_name(example[0], read),
                               bad_images)
    else:
        ds = ds.map(lambda position, example: prepare(position, *example),
                    num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=True)
    if per_batch is not None:
        ds = _mix_batches(ds, per_batch, seed, input_context, skip_steps * replicas_here)
    if num_steps is not None:
        ds = ds.take(num_steps * replicas_here)
    return ds.with_options(_options()).prefetch(tf.data.AUTOTUNE)


def _mix_batches(ds, per_batch, seed, input_context, first_batch: int):
    """``per_batch`` (training.augment.batch_mixer) on each batch, keyed by (seed, this
    input pipeline, the batch's index in the epoch's batches of this pipeline)."""
    pipeline = input_context.input_pipeline_id if input_context is not None else 0
    return ds.enumerate(start=first_batch).map(
        lambda index, batch: per_batch(*batch, tf.stack([
            tf.cast(seed, tf.int64), index + (pipeline << 40)])),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)


def _read_and_resize(read, image_size, interpolation: str = DEFAULT_INTERPOLATION):
    """(item, label) -> (model-resolution float32 pixels, label), for evaluation."""
    @_no_autograph
    def prepare(item, label):
        image = read(item) if read is not None else item
        return preprocess_image(image, image_size, max_pixels=TRAINING_MAX_PIXELS,
                                interpolation=interpolation), label
    return prepare


def make_eval_pipeline(ds: tf.data.Dataset, image_size, batch_size: int, *, num_examples: int,
                       global_batch_size: int, read: Optional[Callable] = None,
                       input_context=None,
                       bad_images: Optional[BadImages] = None) -> tf.data.Dataset:
    """This worker's share of the test set in batches of ``batch_size`` (per replica),
    padded with label -1 so that every replica runs the same number of steps; an image that
    cannot be read or decoded is left out the same way (label -1) and recorded."""
    pipelines = input_context.num_input_pipelines if input_context is not None else 1
    steps = -(-num_examples // global_batch_size)
    per_pipeline = steps * global_batch_size // pipelines
    ds = _shard(ds, input_context)
    if _decodes(ds.element_spec[0], read):
        ds = _map_skipping_bad(ds, _read_and_resize(read, image_size),
                               _fallback(image_size, ds.element_spec[1].dtype),
                               lambda item, label: _bad_image_name(item, read), bad_images)
    else:
        ds = ds.map(_read_and_resize(read, image_size), num_parallel_calls=tf.data.AUTOTUNE,
                    deterministic=True)
    padding = tf.data.Dataset.from_tensors(_fallback(image_size)()).repeat()
    ds = ds.concatenate(padding).take(per_pipeline)
    return ds.batch(batch_size, drop_remainder=True).with_options(_options()).prefetch(
        tf.data.AUTOTUNE)


def make_pipeline(ds: tf.data.Dataset, image_size, batch_size: int, *,
                  read: Optional[Callable] = None,
                  interpolation: str = DEFAULT_INTERPOLATION) -> tf.data.Dataset:
    """Plain evaluation batches (no padding, no augmentation), e.g. for ``keras-vit
    evaluate``, resized with ``interpolation`` (the model's:
    :func:`keras_vit.preprocessing.model_interpolation`). Training goes through
    :func:`make_train_pipeline`."""
    ds = ds.map(_read_and_resize(read, image_size, interpolation),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.batch(batch_size).with_options(_options()).prefetch(tf.data.AUTOTUNE)
