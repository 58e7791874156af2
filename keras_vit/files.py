"""Writing a file whole or not at all: a temporary sibling, then one rename over the path.
The one atomic write of the project (run files and ``model.keras`` of training, the
``models.config`` of export)."""
from __future__ import annotations

import os
import uuid
from typing import Callable

import tensorflow as tf


def write_atomically(path: str, write: Callable[[str], None], suffix: str = "") -> None:
    """Writes ``path`` whole or not at all: ``write(partial)`` writes a temporary sibling
    (``.<name>.<unique>.partial<suffix>``; ``suffix`` for writers that need one, as
    ``model.save`` needs ``.keras``), which is then renamed over ``path``. On any failure the
    temporary file is removed and ``path`` is as it was. Any filesystem :mod:`tf.io.gfile`
    knows (local, ``gs://``, ...); a local file is on disk (fsync) and readable by all
    (0o644) before the rename."""
    directory, name = os.path.split(path)
    partial = os.path.join(directory, f".{name}.{uuid.uuid4().hex[:12]}.partial{suffix}")
    try:
        write(partial)
        if "://" not in path:
            _sync(partial)
        tf.io.gfile.rename(partial, path, overwrite=True)
    except BaseException:
        if tf.io.gfile.exists(partial):
            tf.io.gfile.remove(partial)
        raise


def write_text_atomically(path: str, text: str) -> None:
    """:func:`write_atomically` of ``text`` (UTF-8)."""
    def write(partial: str) -> None:
        with tf.io.gfile.GFile(partial, "w") as f:
            f.write(text)
    write_atomically(path, write)


def _sync(path: str) -> None:
    os.chmod(path, 0o644)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
