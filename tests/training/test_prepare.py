"""``keras-vit prepare``: a folder written once as TFDS shards that ``tfds`` opens and
``train --dataset tfds:DIR`` reads; refused, atomic, deterministic, bad files skipped."""
import glob
import json
import os
import pty
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from tests.conftest import REPO
from training.cli import main
from training.data import DataError, load_source
from training.prepare import prepare_dataset

CLASSES = ["cat", "dog", "eel"]


def _folder(root, per_class=12):
    """``per_class`` small JPEGs in each class folder (a PNG among them), and two bad files
    in ``dog``; returns the bad files' paths."""
    rng = np.random.default_rng(0)
    for cls in CLASSES:
        os.makedirs(root / cls)
        for i in range(per_class):
            image = rng.integers(0, 255, (20 + i, 24, 3), dtype=np.uint8)
            encode, ext = (tf.io.encode_png, "png") if i == 3 else (tf.io.encode_jpeg, "jpg")
            (root / cls / f"{i}.{ext}").write_bytes(encode(image).numpy())
    jpeg = (root / "dog" / "0.jpg").read_bytes()
    (root / "dog" / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "dog" / "junk.png").write_bytes(b"not an image")
    return sorted([str(root / "dog" / "cut.jpg"), str(root / "dog" / "junk.png")])


def _examples(builder, split):
    ds = builder.as_dataset(split=split, shuffle_files=False,
                            decoders={"image": tfds.decode.SkipDecoding()})
    return [(ex["image"].numpy(), int(ex["label"])) for ex in ds]


def test_prepared_folder_opens_in_tfds_with_its_classes_bytes_and_split(tmp_path, capsys):
    """The folder source's own train/test split, every readable file's bytes as they were
    (no re-encoding), the class names; the two bad files skipped, counted and named."""
    root = tmp_path / "images"
    bad = _folder(root)
    out = tmp_path / "prepared"
    result = prepare_dataset(f"folder:{root}", str(out))
    assert result["skipped_images"] == {"count": 2, "first": bad}
    captured = capsys.readouterr()
    assert all(f"skipped {name}" in captured.out for name in bad)
    assert "━" not in captured.err + captured.out  # no progress bar: stderr is no terminal
    builder = tfds.builder_from_directory(str(out))
    assert builder.info.features["label"].names == CLASSES
    folder = load_source(f"folder:{root}")
    for split, ds in (("train", folder.train), ("test", folder.test)):
        want = sorted((open(path, "rb").read(), int(label)) for path, label in
                      ds.as_numpy_iterator() if path.decode() not in bad)
        assert sorted(_examples(builder, split)) == want, split
        assert builder.info.splits[split].num_examples == len(want) == result[split]
    assert (result["train"], result["test"]) == (29, 7)


def test_training_from_a_prepared_directory(tmp_path):
    """``train --dataset tfds:DIR`` reads the prepared dataset, on its whole train split."""
    root = tmp_path / "images"
    _folder(root)
    out = tmp_path / "prepared"
    prepare_dataset(f"folder:{root}", str(out))
    source = load_source(f"tfds:{out}")
    assert (source.num_train, source.num_test, source.labels) == (29, 7, CLASSES)
    run = tmp_path / "run"
    assert main(["train", "--image-size", "16", "--batch-size", "4", "--steps", "2",
                 "--warmup-steps", "1", "--dataset", f"tfds:{out}", "--output", str(run),
                 "--no-export"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["dataset"] == f"tfds:{out}"
    assert metrics["skipped_images"]["count"] == 0
    with pytest.raises(DataError, match="holds no dataset_info.json"):
        load_source(f"tfds:{root}")


def test_a_non_empty_output_is_refused_in_one_line_and_left_alone(tmp_path, capsys):
    root = tmp_path / "images"
    _folder(root, per_class=2)
    out = tmp_path / "prepared"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert main(["prepare", "--dataset", f"folder:{root}", "--output", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines == [f"keras-vit prepare: error: --output {out} exists and is not empty: "
                     "prepare writes a new dataset, give it a new or empty directory"]
    assert os.listdir(out) == ["mine.txt"] and (out / "mine.txt").read_text() == "keep"
    assert sorted(os.listdir(tmp_path)) == ["images", "prepared"]  # no partial directory


def test_more_bad_images_than_the_limit_stop_prepare_in_one_line_writing_nothing(tmp_path,
                                                                                  capsys):
    root = tmp_path / "images"
    bad = _folder(root, per_class=3)
    out = tmp_path / "prepared"
    assert main(["prepare", "--dataset", f"folder:{root}", "--output", str(out),
                 "--max-bad-images", "1"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "keras-vit prepare: error: 2 images could not be read or decoded, more than "
        "--max-bad-images 1: "), lines
    named = lines[0].split("--max-bad-images 1: ")[1].split("; ")[0]
    assert sorted(named.split(", ")) == bad, lines
    assert sorted(os.listdir(tmp_path)) == ["images"]


def _files(directory):
    return {name: (directory / name).read_bytes() for name in sorted(os.listdir(directory))}


def test_preparing_twice_gives_identical_files_and_a_progress_bar_on_a_terminal(tmp_path):
    """One prepare from the command line with stderr on a terminal (the progress bar shows
    there), one in-process: the same files, byte for byte, dataset_info.json included."""
    root = tmp_path / "images"
    _folder(root)
    first, second = tmp_path / "first", tmp_path / "second"
    controller, terminal = pty.openpty()
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("TF_CPP_MIN_LOG_LEVEL", None)
    proc = subprocess.Popen([sys.executable, "-m", "training", "prepare", "--dataset",
                             f"folder:{root}", "--output", str(first)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=terminal, text=True)
    os.close(terminal)
    shown = b""
    while True:
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(controller)
    stdout = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, shown.decode()[-3000:]
    assert "29 train / 7 test images" in stdout
    assert "31/31" in shown.decode() and "7/7" in shown.decode()
    prepare_dataset(f"folder:{root}", str(second), say=lambda line: None)
    assert _files(first) == _files(second)
    assert len(glob.glob(str(first / "prepared-train.tfrecord-*-of-00001"))) == 1


def test_a_failure_mid_write_leaves_nothing(tmp_path, monkeypatch):
    from training import prepare
    root = tmp_path / "images"
    _folder(root)
    write, written = prepare._ShardWriter.write, []

    def failing(self, record):
        if len(written) == 5:
            raise OSError("disk full (injected)")
        written.append(record)
        write(self, record)

    monkeypatch.setattr(prepare._ShardWriter, "write", failing)
    with pytest.raises(OSError, match="injected"):
        prepare_dataset(f"folder:{root}", str(tmp_path / "prepared"), say=lambda line: None)
    assert sorted(os.listdir(tmp_path)) == ["images"]


# Prepares with a pause after each record (flushed), so the test can kill it mid-write.
SLOW_PREPARE = """
import sys, time
from training import prepare
write = prepare._ShardWriter.write
def slow(self, record):
    write(self, record)
    self._writer.flush()
    time.sleep(0.1)
prepare._ShardWriter.write = slow
prepare.prepare_dataset(sys.argv[1], sys.argv[2])
"""


def test_kill_minus_9_mid_write_leaves_no_complete_looking_output(tmp_path):
    root = tmp_path / "images"
    _folder(root)
    out = tmp_path / "prepared"
    proc = subprocess.Popen([sys.executable, "-c", SLOW_PREPARE, f"folder:{root}", str(out)],
                            cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    def first_shards():  # wherever prepare writes it (hidden directories too)
        return [os.path.join(d, name) for d, _, names in os.walk(tmp_path) for name in names
                if name.startswith("prepared-train.tfrecord-00000")]

    deadline = time.monotonic() + 600
    while not any(os.path.getsize(p) > 0 for p in first_shards()):
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "the prepare never started writing"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    partial, = glob.glob(str(tmp_path / ".prepared.partial-*"))
    assert not os.path.exists(os.path.join(partial, "dataset_info.json"))
    with pytest.raises(DataError, match="prepared dataset not found"):
        load_source(f"tfds:{out}")
    # The leftover does not stand in the way of the next prepare.
    assert prepare_dataset(f"folder:{root}", str(out), say=lambda line: None)["train"] == 29


def test_a_tfds_source_is_prepared_with_its_encoded_bytes(tmp_path):
    """``tfds:NAME`` (the trainer's default splits: ``train[:98%]``, ``train[98%:]``)."""
    from tests.training.test_data import TinyTrainOnly
    data_dir = str(tmp_path / "tfds")
    TinyTrainOnly(data_dir=data_dir).download_and_prepare()
    source = load_source("tfds:tiny_train_only", data_dir)
    out = tmp_path / "prepared"
    result = prepare_dataset("tfds:tiny_train_only", str(out), data_dir=data_dir,
                             say=lambda line: None)
    assert (result["train"], result["test"]) == (49, 1)
    builder = tfds.builder_from_directory(str(out))
    assert builder.info.features["label"].names == ["0", "1"]
    for split, ds in (("train", source.train), ("test", source.test)):
        want = [(image, int(label)) for image, label in ds.as_numpy_iterator()]
        assert _examples(builder, split) == want, split  # the same order, the same bytes


def test_workers_of_a_prepared_dataset_share_its_epoch_without_overlap(tmp_path):
    """A dataset in many shards (``shard_bytes``); two input pipelines (two workers) get
    disjoint halves whose union is the epoch of one pipeline: the trainer's sharding by
    position applies to a prepared dataset."""
    from training.data import BadImages, make_train_pipeline
    root = tmp_path / "images"
    _folder(root, per_class=6)
    out = tmp_path / "prepared"
    prepare_dataset(f"folder:{root}", str(out), shard_bytes=4096, say=lambda line: None)
    shards = sorted(n for n in os.listdir(out) if n.startswith("prepared-train."))
    assert len(shards) > 2 and shards == [f"prepared-train.tfrecord-{i:05d}-of-"
                                          f"{len(shards):05d}" for i in range(len(shards))]
    source = load_source(f"tfds:{out}")
    assert source.num_train == tfds.builder_from_directory(str(out)).info.splits[
        "train"].num_examples

    def images(pipelines, index, batch):
        context = tf.distribute.InputContext(pipelines, index, pipelines)
        ds = make_train_pipeline(source.train, 16, batch, seed=1, crop_area_min=0.5,
                                 flip=True, read=source.read, input_context=context,
                                 num_steps=source.num_train // 4, bad_images=BadImages())
        return [image.tobytes() for batch_images, _ in ds.as_numpy_iterator()
                for image in batch_images]

    alone = images(1, 0, 4)
    shares = [images(2, index, 2) for index in (0, 1)]
    assert len(alone) == source.num_train // 4 * 4 >= 12
    assert not set(shares[0]) & set(shares[1])
    assert sorted(shares[0] + shares[1]) == sorted(alone)
