"""``python -m export``: the ``export`` and ``predict`` commands of ``keras-vit``, the same
command modules (``export/commands/``) run by the same runner (:mod:`export.command_line`)."""
from __future__ import annotations

import sys

from export.commands import export as export_command
from export.commands import predict as predict_command

PROG = "python -m export"
DESCRIPTION = "keras-vit's export and predict commands"
COMMANDS = (export_command, predict_command)


def _user_errors():
    from export.client import ServingError
    from export.saved_model import ExportError
    from keras_vit.checkpoints import CheckpointError
    return ExportError, ServingError, CheckpointError


def build_parser():
    from export.command_line import build_parser as build
    return build(PROG, DESCRIPTION, COMMANDS)


def main(argv=None) -> int:
    from export.command_line import run
    return run(PROG, DESCRIPTION, COMMANDS, _user_errors, argv)


if __name__ == "__main__":
    sys.exit(main())
