"""Versions under concurrent deploys: atomic claims, checked names and versions, leftovers."""
import json
import os
import subprocess
import sys
import time

import pytest

import keras_vit
from export import ExportError, export_saved_model
from export.saved_model import read_labels
from tests.conftest import REPO, TINY, perturb


@pytest.fixture(scope="module")
def model():
    return perturb(keras_vit.ViT(image_size=32, num_classes=5, name="tiny", **TINY), scale=0.1)


@pytest.fixture(scope="module")
def model_file(model, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("model") / "tiny.keras")
    model.save(path)
    return path


# Loads the model, then exports it twice, each time once the parent says "go" (a file), so
# that two such processes export at the same moment.
RACER = r"""
import json, os, sys, time
import keras, keras_vit
from export import ExportError, export_saved_model
model_file, base, barrier, me = sys.argv[1:5]
model = keras.saving.load_model(model_file)
def wait(step):
    open(os.path.join(barrier, f"{me}-ready-{step}"), "w").close()
    while not os.path.exists(os.path.join(barrier, f"go-{step}")):
        time.sleep(0.01)
results = []
for step, version in enumerate([None, 7]):
    wait(step)
    try:
        results.append(export_saved_model(model, base, name="tiny", version=version))
    except ExportError as error:
        results.append("ExportError: " + str(error))
print(json.dumps(results))
"""


def test_concurrent_exports_get_distinct_versions_or_one_clean_failure(model_file, tmp_path):
    base, barrier = str(tmp_path / "models"), tmp_path / "barrier"
    barrier.mkdir()
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    racers = [subprocess.Popen([sys.executable, "-c", RACER, model_file, base, str(barrier),
                                name], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=env) for name in ("a", "b")]
    try:
        for step in (0, 1):
            deadline = time.time() + 120
            while not all((barrier / f"{n}-ready-{step}").exists() for n in "ab"):
                assert time.time() < deadline and all(r.poll() is None for r in racers), \
                    [r.communicate() for r in racers if r.poll() is not None]
                time.sleep(0.01)
            (barrier / f"go-{step}").touch()
        outputs = [r.communicate(timeout=120) for r in racers]
    finally:
        for racer in racers:
            if racer.poll() is None:
                racer.kill()
    assert all(r.returncode == 0 for r in racers), [err[-2000:] for _, err in outputs]
    first, second = zip(*[json.loads(out.splitlines()[-1]) for out, _ in outputs])
    assert sorted(first) == [os.path.join(base, "tiny", "1"), os.path.join(base, "tiny", "2")]
    # The same explicit version: one writes it, the other fails cleanly.
    assert sorted(second) == sorted([os.path.join(base, "tiny", "7"),
                                     f"ExportError: version {os.path.join(base, 'tiny', '7')} "
                                     "already exists; pass overwrite=True (--overwrite) or "
                                     "another version"])
    for version in ("1", "2", "7"):
        assert os.path.exists(os.path.join(base, "tiny", version, "saved_model.pb"))
    assert sorted(os.listdir(os.path.join(base, "tiny"))) == [".export.lock", "1", "2", "7"]


@pytest.mark.parametrize("name", [".", "..", ".hidden", "a/b", "", "../x"])
def test_names_that_could_escape_or_hide_are_refused(model, tmp_path, name):
    base = tmp_path / "models"
    with pytest.raises(ValueError, match="model name .* must start with a letter"):
        export_saved_model(model, str(base), name=name)
    assert os.listdir(tmp_path) == []  # nothing written, not even the base


@pytest.mark.parametrize("version", [0, -1, True, 1.5, "3"])
def test_versions_must_be_positive_integers(model, tmp_path, version):
    with pytest.raises(ValueError, match="version must be a positive integer"):
        export_saved_model(model, str(tmp_path / "models"), name="tiny", version=version)
    assert not os.path.exists(tmp_path / "models")


def test_cli_refuses_a_stored_name_that_climbs_and_keeps_siblings(model, tmp_path, capsys):
    from training.cli import main
    climber = perturb(keras_vit.ViT(image_size=32, num_classes=5, name="..", **TINY))
    path = str(tmp_path / "climber.keras")
    climber.save(path)
    sibling = tmp_path / "7"
    sibling.mkdir()
    (sibling / "data.txt").write_text("user data")
    base = str(tmp_path / "models")
    assert main(["export", path, "--output", base, "--version", "7", "--overwrite"]) == 2
    assert "model name '..' must start with a letter" in capsys.readouterr().err
    assert (sibling / "data.txt").read_text() == "user data"
    assert not os.path.exists(os.path.join(base, "models.config"))
    with pytest.raises(SystemExit) as exit_:
        main(["export", path, "--output", base, "--name", "ok", "--version", "-1"])
    assert exit_.value.code == 2
    assert "--version: must be a positive integer, got '-1'" in capsys.readouterr().err


def test_a_killed_exports_leftovers_are_removed(model, tmp_path):
    model_dir = tmp_path / "models" / "tiny"
    (model_dir / ".tmp-1-abcd1234" / "variables").mkdir(parents=True)  # as a kill leaves it
    (model_dir / ".old-xyz" / "version").mkdir(parents=True)
    path = export_saved_model(model, str(tmp_path / "models"), name="tiny")
    assert path == str(model_dir / "1")
    assert sorted(os.listdir(model_dir)) == [".export.lock", "1"]


def test_overwrite_replaces_the_version_and_leaves_nothing_else(model, tmp_path):
    base = str(tmp_path / "models")
    first = export_saved_model(model, base, name="tiny", labels=list("abcde"))
    stamp = os.stat(os.path.join(first, "saved_model.pb")).st_ino
    with pytest.raises(ExportError, match="already exists"):
        export_saved_model(model, base, name="tiny", version=1)
    assert export_saved_model(model, base, name="tiny", version=1, overwrite=True) == first
    assert os.stat(os.path.join(first, "saved_model.pb")).st_ino != stamp
    assert sorted(os.listdir(os.path.dirname(first))) == [".export.lock", "1"]


def test_labels_file_with_a_blank_line_is_refused(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("ant\nbee\n\ncat\n")
    with pytest.raises(ValueError, match=r"labels.txt: line 3 is blank"):
        read_labels(str(path))
    path.write_text("ant\nbee \r\ncat\n\n\n")  # trailing blank lines and spaces are fine
    assert read_labels(str(path)) == ["ant", "bee", "cat"]
