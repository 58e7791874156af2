"""``keras-vit train`` paths that must end in a one-line error (exit 2) or do the obvious
right thing, with nothing written that misleads. In-process: ``main`` is what the console
script runs (the subprocess test in test_training.py checks the exit code end to end)."""
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from training.cli import main

TINY_RUN = ["--image-size", "16", "--batch-size", "16", "--steps", "4", "--warmup-steps", "1"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A finished 4-step run (checkpoints of steps 2 and 4, no export), trained once for the
    tests that resume or damage a run: each works on its own copy."""
    out = tmp_path_factory.mktemp("tiny_run") / "run"
    saved = dict(os.environ)  # main sets TensorFlow defaults (see tests/conftest.py)
    try:
        assert main(["train", *TINY_RUN, "--checkpoint-every", "2", "--output", str(out),
                     "--no-export"]) == 0
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return out


def _error(capsys, argv):
    """Runs ``keras-vit train ARGV``; returns its one-line error."""
    assert main(["train", *argv]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("keras-vit train: error: "), lines
    return lines[0]


@pytest.mark.parametrize("flags,named", [
    (["--steps", "0"], "steps"), (["--steps", "-5"], "steps"), (["--epochs", "-1"], "epochs"),
    (["--checkpoint-every", "0"], "checkpoint-every"), (["--learning-rate", "nan"],
                                                         "learning-rate"),
    (["--batch-size", "0"], "batch-size"), (["--warmup-steps", "-1"], "warmup-steps")])
def test_bad_numbers_are_refused_before_anything_is_written(tmp_path, capsys, flags, named):
    out = tmp_path / "run"
    assert named in _error(capsys, [*flags, "--output", str(out)])
    assert not out.exists()


@pytest.mark.parametrize("value", ["0", "-3"])
def test_evaluate_batch_size_below_one_is_an_argument_error(tmp_path, capsys, value):
    """A traceback from deep inside the evaluation before."""
    with pytest.raises(SystemExit) as exit_:
        main(["evaluate", str(tmp_path / "run"), "--batch-size", value])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "Traceback" not in err
    assert f"--batch-size: must be a positive integer, got '{value}'" in err.splitlines()[-1]


def test_evaluate_refuses_a_served_model_in_one_line(tmp_path, capsys):
    """evaluate decides what MODEL is with the one path-kind detector: an exported version
    is named as such (before: 'model not found: .../saved_model/model.keras')."""
    version = tmp_path / "export" / "vit" / "1"
    version.mkdir(parents=True)
    (version / "saved_model.pb").write_bytes(b"")
    assert main(["evaluate", str(version), "--dataset", "digits"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "is a served model (saved_model)" in lines[0], lines


def test_output_that_is_not_a_run_directory_is_left_alone(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    assert "is not a keras-vit run directory" in _error(capsys, [*TINY_RUN, "--output",
                                                                 str(out)])
    assert os.listdir(out) == ["notes.txt"] and (out / "notes.txt").read_text() == "precious"


def test_resume_refuses_flags_it_cannot_honour_and_bad_config_files(tiny_run, tmp_path,
                                                                    capsys):
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    error = _error(capsys, ["--resume", "--output", str(out), "--learning-rate", "0.1"])
    assert "cannot change --learning-rate" in error and "--steps" in error
    config = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps(dict(config, colour="blue")))
    error = _error(capsys, ["--resume", "--output", str(out)])
    assert str(out / "config.json") in error and "unknown key(s) colour" in error
    (out / "config.json").write_text("{not json")
    assert "not valid JSON" in _error(capsys, ["--resume", "--output", str(out)])
    # What a resume may change: the length of the run.
    (out / "config.json").write_text(json.dumps(config))
    assert main(["train", "--resume", "--output", str(out), "--steps", "6"]) == 0
    assert "resumed at step 4" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["steps"] == 6
    assert json.loads((out / "config.json").read_text())["recipe"]["steps"] == 6


def _versions(model_dir):
    """The version directories (not the export's hidden lock file)."""
    return sorted(name for name in os.listdir(model_dir) if not name.startswith("."))


def test_resume_of_a_finished_run_writes_nothing_new_and_one_killed_in_its_end_finishes(
        tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY_RUN, "--output", str(out)]) == 0
    versions = _versions(out / "export" / "vit_tiny")
    metrics = (out / "metrics.json").read_text()
    capsys.readouterr()
    assert main(["train", "--resume", "--output", str(out)]) == 0
    assert "already finished at step 4" in capsys.readouterr().out
    assert _versions(out / "export" / "vit_tiny") == versions == ["1"]
    assert (out / "metrics.json").read_text() == metrics
    # Killed after the export, before metrics.json: the resume keeps the export it made.
    os.remove(out / "metrics.json")
    assert main(["train", "--resume", "--output", str(out)]) == 0
    assert "already holds this model" in capsys.readouterr().out
    assert _versions(out / "export" / "vit_tiny") == ["1"]
    assert json.loads((out / "metrics.json").read_text())["export"].endswith(
        os.path.join("vit_tiny", "1"))
    # Killed during the final save: the resume evaluates and writes what is missing.
    os.remove(out / "metrics.json")
    os.remove(out / "model.keras")
    assert main(["train", "--resume", "--output", str(out), "--no-export"]) == 0
    assert "no steps trained now" in capsys.readouterr().out
    finished = json.loads((out / "metrics.json").read_text())
    assert finished["steps"] == 4 and finished["examples_per_second"] is None
    assert (out / "model.keras").exists()


def test_a_corrupt_image_past_max_bad_images_stops_the_run_naming_the_file(tmp_path, capsys):
    root = tmp_path / "images"
    for cls in ("a", "b"):
        os.makedirs(root / cls)
        for i in range(3):
            (root / cls / f"{i}.png").write_bytes(tf.io.encode_png(
                np.full((8, 8, 3), 40 * i, np.uint8)).numpy())
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    error = _error(capsys, [*TINY_RUN, "--batch-size", "2", "--dataset", f"folder:{root}",
                            "--output", str(tmp_path / "run"), "--max-bad-images", "0"])
    assert ("1 images could not be read or decoded, more than --max-bad-images 0: "
            f"{root / 'b' / 'broken.png'}; fix or remove them") in error


def test_the_cli_drops_the_onednn_weight_cache_and_says_so(tmp_path, capsys, monkeypatch):
    # The serving setting makes oneDNN keep the first weights each kernel saw: a run would
    # compute every step with stale weights (see tests/export/test_onednn_weight_cache.py).
    # The command removes it before any model runs (its effect in a fresh process: the
    # predict test in tests/export/test_onednn_weight_cache.py).
    monkeypatch.setenv("TF_ONEDNN_ASSUME_FROZEN_WEIGHTS", "1")
    assert main(["train", *TINY_RUN, "--output", str(tmp_path / "run"), "--no-export"]) == 0
    err = capsys.readouterr().err
    assert "keras-vit: ignoring TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1" in err
    assert "TF_ONEDNN_ASSUME_FROZEN_WEIGHTS" not in os.environ


def test_training_refuses_the_onednn_weight_cache(tmp_path, monkeypatch):
    from training.recipes import RECIPES
    from training.trainer import RunConfig, TrainingError, train
    monkeypatch.setenv("TF_ONEDNN_ASSUME_FROZEN_WEIGHTS", "1")
    out = tmp_path / "run"
    recipe = RECIPES["demo"].replace(image_size=16, batch_size=16, steps=2, warmup_steps=1)
    with pytest.raises(TrainingError, match="TF_ONEDNN_ASSUME_FROZEN_WEIGHTS is set.*unset it"):
        train(RunConfig(recipe=recipe, output=str(out)), tf.distribute.get_strategy())
    assert not out.exists()


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def test_damaged_resume_state_is_a_one_line_error_naming_the_file_and_field(tiny_run, tmp_path,
                                                                           capsys):
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())
    # A field of the wrong type (a TypeError inside tf.image before).
    config_path.write_text(json.dumps(dict(config, recipe=dict(config["recipe"],
                                                                 crop_area_min="abc"))))
    assert _error(capsys, ["--resume", "--output", str(out), "--steps", "6"]) == (
        f"keras-vit train: error: {config_path}: field recipe.crop_area_min must be a number "
        "or null, got 'abc'")
    config_path.write_text(json.dumps(dict(config, seed=[1])))
    assert f"{config_path}: field seed must be an integer, got [1]" in _error(
        capsys, ["--resume", "--output", str(out)])
    # 100,000 nested "[" (a RecursionError before).
    config_path.write_text("[" * 100_000)
    assert _error(capsys, ["--resume", "--output", str(out)]) == (
        f"keras-vit train: error: {config_path}: not valid JSON (nested too deeply)")
    config_path.write_text(json.dumps(config))
    # A truncated data file of the newest checkpoint: named, the run goes on from ckpt-2.
    ckpt = out / "checkpoints"
    data4 = next(str(ckpt / n) for n in os.listdir(ckpt) if n.startswith("ckpt-4.data"))
    _truncate(data4)
    assert main(["train", "--resume", "--output", str(out), "--steps", "6"]) == 0
    said = capsys.readouterr().out
    assert f"{data4} cannot be read (" in said
    assert f"resuming from {ckpt / 'ckpt-2'}, the newest intact checkpoint" in said
    assert "resumed at step 2" in said
    assert json.loads((out / "metrics.json").read_text())["steps"] == 6
    assert tf.train.latest_checkpoint(str(ckpt)) == str(ckpt / "ckpt-6")
    tf.train.load_checkpoint(str(ckpt / "ckpt-4")).get_variable_to_shape_map()  # rewritten
    # Every kept checkpoint damaged: one line naming the newest, nothing to fall back on.
    for name in os.listdir(ckpt):
        if ".data-" in name:
            _truncate(ckpt / name)
    data6 = next(str(ckpt / n) for n in os.listdir(ckpt) if n.startswith("ckpt-6.data"))
    error = _error(capsys, ["--resume", "--output", str(out), "--steps", "8"])
    assert error.startswith(f"keras-vit train: error: --resume: {data6} cannot be read (")
    assert error.endswith("; no earlier checkpoint is intact (2 more cannot be read): start a "
                          "new run (another --output)")


def test_an_image_size_that_cannot_fit_is_refused_with_the_estimate(tmp_path, capsys):
    """`train --image-size 100000` and `export RUN --image-size 100000`: a one-line error
    with the estimate, before anything is allocated or written (a ResourceExhaustedError
    traceback from PatchEncoder.build before)."""
    import keras_vit
    out = tmp_path / "run"
    error = _error(capsys, ["--image-size", "100000", "--batch-size", "16", "--output",
                            str(out)])
    assert error.startswith("keras-vit train: error: image size 100000x100000 cannot fit: "
                            "its 625,000,000 tokens need at least 160.0 GB for the position "
                            "embedding and ")
    assert not out.exists()
    run = tmp_path / "exported-run"
    run.mkdir()
    keras_vit.ViT(image_size=32, patch_size=4, hidden_size=64, mlp_size=128, num_heads=4,
                  num_layers=4, num_classes=3, name="vit_tiny").save(run / "model.keras")
    models = tmp_path / "models"
    assert main(["export", str(run), "--image-size", "100000", "--output", str(models)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "keras-vit export: error: image size 100000x100000 cannot fit: its 625,000,001 "
        "tokens need at least 160.0 GB for the position embedding and "), lines
    assert not models.exists()


def _class_folders(root, names):
    for index, name in enumerate(names):
        os.makedirs(root / name)
        for i in range(3):
            (root / name / f"{i}.png").write_bytes(tf.io.encode_png(
                np.full((8, 8, 3), 60 * index + 10 * i, np.uint8)).numpy())


def _predictions(capsys, model, image):
    assert main(["predict", model, image, "--json", "--top-k", "3"]) == 0
    return json.loads(capsys.readouterr().out)["predictions"][0]


def test_class_names_that_do_not_fit_labels_txt_round_trip_exactly(tmp_path, capsys):
    """Folders named "a\\nz" and " ": the run stores the names exactly (labels.json), so
    predict of the run, its own export and a later export of the run name every class
    alike (labels.txt had three lines for two classes: a silent wrong label, and a blank
    line predict and export refused)."""
    root = tmp_path / "images"
    names = [" ", "a\nz", "c"]  # sorted, as the folder source orders them
    _class_folders(root, names)
    out = tmp_path / "run"
    assert main(["train", *TINY_RUN, "--batch-size", "2", "--dataset", f"folder:{root}",
                 "--output", str(out)]) == 0
    assert "labels.json only" in capsys.readouterr().out
    assert json.loads((out / "labels.json").read_text()) == names
    assert not (out / "labels.txt").exists()
    image = str(root / "c" / "0.png")
    own_export = str(out / "export" / "vit_tiny" / "1")
    assert main(["export", str(out), "--output", str(tmp_path / "models")]) == 0
    later_export = str(tmp_path / "models" / "vit_tiny" / "1")
    capsys.readouterr()
    for model in (str(out), own_export, later_export):
        row = _predictions(capsys, model, image)
        assert sorted(row["classes"]) == [0, 1, 2], model
        assert row["labels"] == [names[c] for c in row["classes"]], model
    # The text output keeps one line per image, the odd names quoted.
    assert main(["predict", str(out), image, image]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and '"a\\nz"' in lines[0] and '" "' in lines[0]
    # A run written before labels.json: its labels.txt is still read.
    os.remove(out / "labels.json")
    (out / "labels.txt").write_text("x\ny\nz\n")
    assert _predictions(capsys, str(out), image)["labels"][0] in ("x", "y", "z")


def test_resume_refuses_a_flag_given_as_zero(tmp_path, capsys):
    """A flag given with the value 0 is given (before: 0 counted as absent, so --resume
    --seed 0 continued with the run's own seed without a word)."""
    for flag in ("--seed", "--accumulate"):
        error = _error(capsys, ["--resume", "--output", str(tmp_path), flag, "0"])
        assert f"cannot change {flag}" in error, error
