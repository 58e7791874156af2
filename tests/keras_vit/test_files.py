"""keras_vit.files: the one atomic write (models.config, run files, model.keras)."""
import os

import pytest

from keras_vit.files import write_atomically, write_text_atomically


def test_text_replaces_the_file_whole_and_leaves_nothing_else(tmp_path):
    path = tmp_path / "models.config"
    path.write_text("old")
    write_text_atomically(str(path), "new ü\n")
    assert path.read_text(encoding="utf-8") == "new ü\n"
    assert os.listdir(tmp_path) == ["models.config"]
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o644)


def test_a_writer_that_fails_halfway_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text("old")
    seen = []

    def write(partial):
        seen.append(partial)
        with open(partial, "w") as f:
            f.write("half")
        raise KeyboardInterrupt  # even an interrupt: the temporary file goes

    with pytest.raises(KeyboardInterrupt):
        write_atomically(str(path), write)
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["metrics.json"]
    assert os.path.dirname(seen[0]) == str(tmp_path)  # a sibling: the rename stays on one disk


def test_the_writer_gets_a_temporary_name_with_the_suffix_it_needs(tmp_path):
    names = []

    def write(partial):
        names.append(os.path.basename(partial))
        open(partial, "w").close()

    write_atomically(str(tmp_path / "model.keras"), write, suffix=".keras")
    assert names[0].endswith(".keras") and names[0] != "model.keras"
    assert os.listdir(tmp_path) == ["model.keras"]
