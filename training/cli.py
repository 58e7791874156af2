"""The ``keras-vit`` command: ``train`` (the main job), ``evaluate``, ``explain``,
``inspect``, ``export``, ``predict``, ``convert``, ``prepare``, ``data-service``; one module each in
``training/commands/`` (``export`` and ``predict``: ``export/commands/``, also run by
``python -m export``), run by :mod:`export.command_line`. ``python -m training`` runs
``train``."""
from __future__ import annotations

import sys

from export.commands import export as export_command
from export.commands import predict as predict_command
from training.commands import (convert, data_service, evaluate, explain, inspect, prepare,
                               train)

PROG = "keras-vit"
DESCRIPTION = "Vision Transformer for Keras 3: train, evaluate, export, predict, convert."
COMMANDS = (train, evaluate, explain, inspect, export_command, predict_command, convert,
            prepare, data_service)


def _user_errors():
    from export.client import ServingError
    from export.saved_model import ExportError
    from keras_vit.checkpoints import CheckpointError
    from training.run_config import TrainingError
    return TrainingError, CheckpointError, ExportError, ServingError


def build_parser():
    from export.command_line import build_parser as build
    return build(PROG, DESCRIPTION, COMMANDS)


def main(argv=None) -> int:
    from export.command_line import run
    return run(PROG, DESCRIPTION, COMMANDS, _user_errors, argv)


if __name__ == "__main__":
    sys.exit(main())
