"""Input pipelines: the sources (digits, TFDS, image folders) and one tf.data pipeline.

Every image goes through :func:`keras_vit.preprocess_image` (decode, resize to the model's
resolution), the same function the TF Serving export uses. Training adds the original's
augmentation (inception crop + random horizontal flip) before it.
"""
from __future__ import annotations

import dataclasses
import os
from typing import List, Optional

import numpy as np
import tensorflow as tf

from keras_vit import preprocess_image
from keras_vit.preprocessing import decode_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


class DataError(ValueError):
    """A dataset specification that cannot be served (unknown name, missing folder...)."""


@dataclasses.dataclass
class DataSource:
    """Unbatched (image, label) datasets; images are uint8 (H, W, C) tensors or encoded bytes."""

    name: str
    train: tf.data.Dataset
    test: tf.data.Dataset
    num_classes: int
    labels: List[str]
    num_train: int
    num_test: int


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


def load_tfds(name: str, data_dir: Optional[str] = None, train_split: Optional[str] = None,
              test_split: Optional[str] = None, download: bool = True) -> DataSource:
    """A TFDS image-classification dataset, with the paper's splits by default.

    Training uses ``train[:98%]`` (the paper holds 2% out as minival); evaluation uses
    ``test`` when the dataset has it, else ``validation``, else ``train[98%:]``.
    """
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as error:  # tfds raises several types for unknown names
        raise DataError(f"unknown TFDS dataset {name!r}: {error}") from None
    splits = builder.info.splits
    train_split = train_split or "train[:98%]"
    if test_split is None:
        test_split = next((s for s in ("test", "validation") if s in splits),
                          "train[98%:]" if len(splits) else "test")
    label = builder.info.features["label"]
    image_key = next(k for k, f in builder.info.features.items()
                     if isinstance(f, tfds.features.Image))
    train_ds, test_ds = tfds.load(name, split=[train_split, test_split], data_dir=data_dir,
                                  download=download, shuffle_files=False)

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


def load_folder(path: str, test_fraction: float = 0.2) -> DataSource:
    """``path/<class>/<image>`` JPEG/PNG/BMP/GIF files; a fixed per-class split."""
    if not os.path.isdir(path):
        raise DataError(f"image folder not found: {path}")
    classes = sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d)))
    if len(classes) < 2:
        raise DataError(f"{path} must hold one sub-folder per class (at least 2), "
                        f"found {len(classes)}")
    rng = np.random.default_rng(0)
    train, test = [], []
    for index, cls in enumerate(classes):
        files = sorted(os.path.join(path, cls, f) for f in os.listdir(os.path.join(path, cls))
                       if f.lower().endswith(IMAGE_EXTENSIONS))
        if not files:
            raise DataError(f"class folder {os.path.join(path, cls)} has no images "
                            f"({', '.join(IMAGE_EXTENSIONS)})")
        files = [files[i] for i in rng.permutation(len(files))]
        cut = max(1, int(round(len(files) * test_fraction))) if len(files) > 1 else 0
        test += [(f, index) for f in files[:cut]]
        train += [(f, index) for f in files[cut:]]

    def pairs(items):
        paths = tf.constant([p for p, _ in items], tf.string)
        labels = tf.constant([label for _, label in items], tf.int64)
        return tf.data.Dataset.from_tensor_slices((paths, labels)).map(
            lambda p, y: (tf.io.read_file(p), y), num_parallel_calls=tf.data.AUTOTUNE)

    return DataSource(name=f"folder:{path}", train=pairs(train), test=pairs(test),
                      num_classes=len(classes), labels=classes,
                      num_train=len(train), num_test=len(test))


def load_source(spec: str, data_dir: Optional[str] = None, train_split: Optional[str] = None,
                test_split: Optional[str] = None) -> DataSource:
    """``digits``, ``tfds:NAME`` or ``folder:PATH``."""
    if spec == "digits":
        return load_digits()
    if spec.startswith("tfds:"):
        return load_tfds(spec[5:], data_dir, train_split, test_split)
    if spec.startswith("folder:"):
        return load_folder(spec[7:])
    raise DataError(f"unknown dataset {spec!r}: expected 'digits', 'tfds:NAME' or "
                    "'folder:PATH'")


def inception_crop(image: tf.Tensor, area_min: float, seed=None) -> tf.Tensor:
    """Random crop of 5%..100% area and 3/4..4/3 aspect ratio (the original's augmentation)."""
    begin, size, _ = tf.image.sample_distorted_bounding_box(
        tf.shape(image), tf.zeros([0, 0, 4], tf.float32), area_range=(area_min, 1.0),
        aspect_ratio_range=(3 / 4, 4 / 3), min_object_covered=0,
        use_image_if_no_bounding_boxes=True, seed=seed or 0)
    return tf.slice(image, begin, size)


def make_pipeline(ds: tf.data.Dataset, image_size, batch_size: int, *, training: bool,
                  crop_area_min: Optional[float] = None, flip: bool = False,
                  shuffle_buffer: int = 10_000, seed: int = 0,
                  drop_remainder: Optional[bool] = None) -> tf.data.Dataset:
    """Batched (float32 pixels in [0, 255], int64 labels), parallel map, prefetch.

    Deterministic for a given ``seed``; training shuffles (one epoch per call).
    """
    def prepare(image, label):
        if training and crop_area_min is not None:
            if image.dtype == tf.string:
                image = decode_image(image)
            image = inception_crop(image, crop_area_min)
        image = preprocess_image(image, image_size)
        if training and flip:
            image = tf.image.random_flip_left_right(image)
        return image, label

    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=False)
    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=training if drop_remainder is None
                  else drop_remainder)
    options = tf.data.Options()
    options.deterministic = True
    options.experimental_distribute.auto_shard_policy = \
        tf.data.experimental.AutoShardPolicy.DATA
    return ds.with_options(options).prefetch(tf.data.AUTOTUNE)
