"""Progress of long work (evaluation, export verification, LiteRT / ONNX conversion) for a
person at a terminal: Keras's ``Progbar`` on stderr when stderr is a terminal, nothing
otherwise (logs, pipes, tests), so that stdout keeps only the commands' results."""
from __future__ import annotations

import contextlib
import sys


class Progress:
    """``Progress(total, unit)``; ``advance(n=1)`` after each piece of work, ``close()`` at
    the end (where ``total`` is None: unknown, the bar counts). A no-op unless
    ``sys.stderr`` is a terminal."""

    def __init__(self, total=None, unit: str = "step"):
        self._bar = None
        self._done = 0
        stream = sys.stderr
        if hasattr(stream, "isatty") and stream.isatty():
            import keras  # only for a terminal: the commands' --help stays without it
            with contextlib.redirect_stdout(stream):  # Progbar writes to sys.stdout
                self._bar = keras.utils.Progbar(total, unit_name=unit)

    def advance(self, count: int = 1) -> None:
        self._done += count
        if self._bar is not None:
            with contextlib.redirect_stdout(sys.stderr):
                self._bar.update(self._done)

    def close(self) -> None:
        """Draws the final count (updates closer than Progbar's interval are skipped)."""
        if self._bar is not None and self._done != self._bar.target:
            with contextlib.redirect_stdout(sys.stderr):
                self._bar.update(self._done, finalize=True)
