"""``keras-vit prepare``: a dataset written once as TFDS's own sharded TFRecords (the images'
encoded bytes as they are, the class names in ``features.json``), so that
``tfds.builder_from_directory(DIR)`` opens it and ``keras-vit train --dataset tfds:DIR``
trains from a few large files instead of millions of small ones.

The output is written into a hidden sibling directory and renamed to ``--output`` at the end:
a prepare that fails or is killed leaves no directory that looks complete. The example order
is a fixed permutation and the files carry no time, so preparing the same folder twice gives
byte-identical files. Nothing here imports TensorFlow at module level (the CLI checks the
arguments first).
"""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from typing import Callable, List, Optional

DATASET_NAME = "prepared"  # the {DATASET} of TFDS's file names: prepared-train.tfrecord-...
DEFAULT_SHARD_MB = 128  # TFDS aims at 100-200 MB shards: few files, yet many per worker
# The description starts with this: load_tfds then trains on the whole train split (the
# test split was held out when preparing; see training.data.load_tfds).
# A fixed seed: the order of the examples (shuffled once, here) is part of the files.
ORDER_SEED = 0


def check_output(output: str) -> None:
    """``output`` must be new or an empty directory, in an existing folder (ValueError)."""
    if os.path.lexists(output) and (not os.path.isdir(output) or os.listdir(output)):
        raise ValueError(f"--output {output} exists and is not empty: prepare writes a new "
                         "dataset, give it a new or empty directory")
    parent = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(parent):
        raise ValueError(f"--output {output}: the folder {parent} does not exist")


def check_arguments(args) -> None:
    """The checks of ``keras-vit prepare`` that need no TensorFlow."""
    check_output(args.output)
    spec = args.dataset
    if spec.startswith("folder:"):
        if not os.path.isdir(spec[7:]):
            raise ValueError(f"image folder not found: {spec[7:]}")
    elif spec != "digits" and not spec.startswith("tfds:"):
        raise ValueError(f"unknown dataset {spec!r}: expected 'digits', 'tfds:NAME', "
                         "'tfds:DIR' or 'folder:PATH'")
    if args.shard_mb <= 0:
        raise ValueError(f"--shard-mb must be positive (got {args.shard_mb})")
    if args.max_bad_images is not None and args.max_bad_images < 0:
        raise ValueError(f"--max-bad-images must be >= 0 (got {args.max_bad_images})")


def add_arguments(parser) -> None:
    from training.recipes import DEFAULT_MAX_BAD_IMAGES

    parser.add_argument("--dataset", required=True,
                        help="folder:PATH, tfds:NAME, tfds:DIR or digits")
    parser.add_argument("--output", required=True,
                        help="new (or empty) directory to write the prepared dataset to")
    parser.add_argument("--data-dir", help="TFDS data directory (tfds:NAME)")
    parser.add_argument("--shard-mb", type=float, default=DEFAULT_SHARD_MB,
                        help=f"target shard size in MB (default: {DEFAULT_SHARD_MB})")
    parser.add_argument("--max-bad-images", type=int,
                        help="unreadable images skipped before prepare stops "
                             f"(default: {DEFAULT_MAX_BAD_IMAGES})")


def run(args) -> int:
    """``keras-vit prepare`` once the arguments were checked and TensorFlow started."""
    from training.recipes import DEFAULT_MAX_BAD_IMAGES

    limit = DEFAULT_MAX_BAD_IMAGES if args.max_bad_images is None else args.max_bad_images
    prepare_dataset(args.dataset, args.output, data_dir=args.data_dir,
                    shard_bytes=int(args.shard_mb * 2 ** 20), max_bad_images=limit)
    return 0


def _encoded_examples(source, ds, bad_images):
    """(encoded bytes, label) of ``ds``, read and checked to decode; an image that does not
    is skipped (label -1) and recorded in ``bad_images`` (training.data's policy). Items
    that are file references are put in a fixed random order first (the trainer's shuffle
    buffer then mixes classes from the first record on)."""
    import numpy as np
    import tensorflow as tf

    from keras_vit.preprocessing import decode_image
    from training.data import TRAINING_MAX_PIXELS, _bad_image_name, _map_skipping_bad

    if source.read is not None:  # (a seeded ds.shuffle would also depend on the global seed)
        items, labels = ds.batch(max(1, int(ds.cardinality()))).get_single_element()
        order = np.random.default_rng(ORDER_SEED).permutation(len(labels))
        ds = tf.data.Dataset.from_tensor_slices((tf.gather(items, order),
                                                 tf.gather(labels, order)))

    def check(item, label):
        data = source.read(item) if source.read is not None else item
        if data.dtype != tf.string:  # pixels (digits): stored losslessly
            return tf.io.encode_png(tf.cast(data, tf.uint8)), label
        image = decode_image(data, max_pixels=TRAINING_MAX_PIXELS)
        with tf.control_dependencies([image]):
            return tf.identity(data), label

    def fallback():
        return tf.constant(b""), tf.constant(-1, ds.element_spec[1].dtype)

    return _map_skipping_bad(ds, check, fallback,
                             lambda item, label: _bad_image_name(item, source.read),
                             bad_images)


class _ShardWriter:
    """TFRecord files of about ``shard_bytes`` each, named as TFDS names them once the count
    is known (:meth:`close`)."""

    def __init__(self, directory: str, split: str, shard_bytes: int):
        self.directory, self.split, self.shard_bytes = directory, split, shard_bytes
        self.lengths: List[int] = []
        self.num_bytes = 0
        self._writer = None
        self._size = 0

    def _path(self, index: int, count: Optional[int] = None) -> str:
        name = f"{DATASET_NAME}-{self.split}.tfrecord-{index:05d}"
        return os.path.join(self.directory, name + (f"-of-{count:05d}" if count else ""))

    def write(self, record: bytes) -> None:
        import tensorflow as tf

        if self._writer is None or self._size >= self.shard_bytes:
            if self._writer is not None:
                self._writer.close()
            self._writer = tf.io.TFRecordWriter(self._path(len(self.lengths)))
            self.lengths.append(0)
            self._size = 0
        self._writer.write(record)
        self.lengths[-1] += 1
        self._size += len(record) + 16  # TFRecord framing: length, two CRCs
        self.num_bytes += len(record) + 16

    def close(self):
        """Names the shards ``...-00000-of-000NN``; returns the split's ``SplitInfo``."""
        import tensorflow_datasets as tfds

        if self._writer is not None:
            self._writer.close()
        count = len(self.lengths)
        for index in range(count):
            os.rename(self._path(index), self._path(index, count))
        return tfds.core.SplitInfo(name=self.split, shard_lengths=list(self.lengths),
                                   num_bytes=self.num_bytes, filename_template=None)


@contextlib.contextmanager
def _progress(total: int, label: str):
    """A ``keras.utils.Progbar`` on stderr when stderr is a terminal; else nothing."""
    if not sys.stderr.isatty():
        yield lambda done: None
        return
    import keras

    print(label, file=sys.stderr)
    bar = keras.utils.Progbar(total, unit_name="image")

    def update(done):
        with contextlib.redirect_stdout(sys.stderr):  # Progbar writes to stdout
            bar.update(done)
    yield update


def _write_split(source, split: str, ds, total: int, work: str, shard_bytes: int,
                 features, bad_images, say: Callable) -> tuple:
    """Writes one split; returns (its SplitInfo, the number of examples written)."""
    writer = _ShardWriter(work, split, shard_bytes)
    written = 0
    with _progress(total, f"{split}: {total} images") as update:
        for done, (data, label) in enumerate(
                _encoded_examples(source, ds, bad_images).as_numpy_iterator(), 1):
            if label >= 0:
                writer.write(_serialize(features, data, label))
                written += 1
            if label < 0 or done % 256 == 0 or done == total:
                for name in bad_images.new_names():
                    say(f"keras-vit prepare: skipped {name}: cannot be read or decoded")
                bad_images.check()
                update(done)
    if written == 0:
        from training.data import DataError
        raise DataError(f"{source.name}: no readable image in the {split} split")
    return writer.close(), written


def _serialize(features, data: bytes, label: int) -> bytes:
    """The record of one example as TFDS writes it (``features.serialize_example``), but
    serialized deterministically: a proto's map (the feature names) comes out in another
    order in another process otherwise, and the shards would differ from run to run."""
    from tensorflow_datasets.core import example_serializer

    serializer = example_serializer.ExampleSerializer(features.get_serialized_info())
    example = serializer.get_tf_example(features.encode_example({"image": data,
                                                                  "label": label}))
    return example.SerializeToString(deterministic=True)


def _features(labels):
    import tensorflow_datasets as tfds

    return tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3)),  # any format, bytes as they were
        "label": tfds.features.ClassLabel(names=list(labels))})


def prepare_dataset(spec: str, output: str, *, data_dir: Optional[str] = None,
                    shard_bytes: int = DEFAULT_SHARD_MB * 2 ** 20,
                    max_bad_images: Optional[int] = None, say: Callable = print) -> dict:
    """Writes ``spec`` (as :func:`training.data.load_source` reads it: its train and test
    splits, class names) to the new directory ``output`` in TFDS's format.

    Returns ``{"train": n, "test": n, "skipped_images": {...}}``. Raises ValueError (a
    DataError for the data) with nothing written at ``output``.
    """
    import tensorflow_datasets as tfds

    from training.data import (DEFAULT_MAX_BAD_IMAGES, PREPARED_DESCRIPTION_PREFIX, BadImages,
                               load_source)

    check_output(output)
    source = load_source(spec, data_dir)
    bad_images = BadImages(DEFAULT_MAX_BAD_IMAGES if max_bad_images is None
                           else max_bad_images)
    features = _features(source.labels)
    output = os.path.abspath(output)
    work = tempfile.mkdtemp(prefix=f".{os.path.basename(output)}.partial-",
                            dir=os.path.dirname(output))
    try:
        splits, counts = [], {}
        for split, ds, total in (("train", source.train, source.num_train),
                                 ("test", source.test, source.num_test)):
            info, counts[split] = _write_split(source, split, ds, total, work, shard_bytes,
                                               features, bad_images, say)
            splits.append(info)
        tfds.folder_dataset.write_metadata(
            data_dir=work, features=features, split_infos=splits, check_data=False,
            description=PREPARED_DESCRIPTION_PREFIX + source.name)
        check_output(output)  # still free: nothing of someone else's is replaced
        if os.path.isdir(output):
            os.rmdir(output)
        os.rename(work, output)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    summary = bad_images.summary()
    say(f"keras-vit prepare: wrote {output}: {counts['train']} train / {counts['test']} "
        f"test images, {len(source.labels)} classes, {sum(len(s.shard_lengths) for s in splits)}"
        f" shards; {summary['count']} unreadable images skipped")
    return dict(counts, skipped_images=summary)
