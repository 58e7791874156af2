"""``keras-vit train`` paths that must end in a one-line error (exit 2) or do the obvious
right thing, with nothing written that misleads. In-process: ``main`` is what the console
script runs (the subprocess test in test_training.py checks the exit code end to end)."""
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from training.cli import main

TINY_RUN = ["--image-size", "16", "--batch-size", "16", "--steps", "4", "--warmup-steps", "1"]


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


def test_output_that_is_not_a_run_directory_is_left_alone(tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("precious")
    assert "is not a keras-vit run directory" in _error(capsys, [*TINY_RUN, "--output",
                                                                 str(out)])
    assert os.listdir(out) == ["notes.txt"] and (out / "notes.txt").read_text() == "precious"


def test_resume_refuses_flags_it_cannot_honour_and_bad_config_files(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY_RUN, "--output", str(out), "--no-export"]) == 0
    capsys.readouterr()
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
