"""The layout of a ``keras-vit train`` run directory, defined once.

``training`` writes run directories and ``export`` reads them (``keras-vit export RUN``), and
``export`` never imports ``training``: so the one definition lives here. Paths are joined as
strings, so a run directory may be on any TensorFlow filesystem (``gs://``, ``ram://``...).
"""
from __future__ import annotations

import dataclasses
import json
import os

CONFIG = "config.json"        # the run's RunConfig, read back by --resume
LABELS = "labels.txt"         # class names, one a line (when every name fits on one)
LABELS_JSON = "labels.json"   # class names, a JSON list: exactly, whatever the names
MODEL = "model.keras"         # the final Keras model
CHECKPOINTS = "checkpoints"   # tf.train checkpoints (model, optimizer, step)
LOGS = "logs"                 # TensorBoard event files (logs/train)
METRICS = "metrics.json"      # top1, top5, steps, examples_per_second, ...
CURVES = "curves.png"         # loss and accuracy against steps, from the TensorBoard logs
EXPORT = "export"             # TF Serving base directory: export/<name>/<version>/
LOCK = ".run.lock"            # held (flock) by the run writing the directory: pid and host


def fits_labels_txt(name: str) -> bool:
    """Whether ``name`` reads back from ``labels.txt`` as itself: one non-blank line with no
    surrounding whitespace (a folder may be named ``"a\\nz"`` or ``" "``)."""
    return bool(name) and name == name.strip() and "\n" not in name and "\r" not in name


def labels_json(names) -> str:
    """The text of ``labels.json``: the class names as a JSON list (escaped: any name)."""
    return json.dumps(list(names), indent=0, ensure_ascii=False) + "\n"


def parse_labels_json(text, source: str) -> list:
    """The class names of a ``labels.json``; a ValueError naming ``source`` otherwise."""
    from keras_vit.sources import parse_json
    names = parse_json(text, source)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ValueError(f"{source}: expected a JSON list of class names (strings)")
    return names


@dataclasses.dataclass(frozen=True)
class RunLayout:
    """The paths of the run directory ``root``."""

    root: str

    def _join(self, name):
        return os.path.join(self.root, name)

    config = property(lambda self: self._join(CONFIG))
    labels = property(lambda self: self._join(LABELS))
    labels_json = property(lambda self: self._join(LABELS_JSON))
    model = property(lambda self: self._join(MODEL))
    checkpoints = property(lambda self: self._join(CHECKPOINTS))
    logs = property(lambda self: self._join(LOGS))
    metrics = property(lambda self: self._join(METRICS))
    curves = property(lambda self: self._join(CURVES))
    export = property(lambda self: self._join(EXPORT))
    lock = property(lambda self: self._join(LOCK))

    def scratch(self, task_id: int) -> str:
        """A non-chief worker's scratch directory (tf.distribute has every worker save)."""
        return self._join(f".worker{task_id}-scratch")

    @classmethod
    def of_version(cls, version_dir: str) -> "RunLayout":
        """The run directory that would hold ``<run>/export/<name>/<version>``."""
        return cls(os.path.dirname(os.path.dirname(os.path.dirname(
            os.path.abspath(version_dir)))))
