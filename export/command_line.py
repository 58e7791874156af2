"""How a command line of subcommands runs: ``keras-vit`` (:mod:`training.cli`) and
``python -m export`` (:mod:`export.cli`) are both built here, from command modules.

A command module (``training/commands/*.py``, ``export/commands/*.py``) declares ``NAME``,
``HELP``, ``add_arguments(parser)``, optionally ``check(args)`` (the checks that need no
TensorFlow: a ValueError naming the problem) and ``run(args) -> exit code``. The runner
parses, checks (so ``--help`` and argument errors answer before TensorFlow loads), starts
TensorFlow once (:mod:`export.startup`), runs the command and turns the errors a user can act
on into one line on stderr with exit code 2.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence, Tuple


def positive_int(text):
    """An argparse type: a positive integer."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def build_parser(prog: str, description: str, commands: Sequence) -> argparse.ArgumentParser:
    """The parser of ``commands`` (command modules), each a subcommand, with ``--verbose``."""
    from export.startup import add_verbose_flag

    parser = argparse.ArgumentParser(prog=prog, description=description)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in commands:
        command.add_arguments(sub.add_parser(command.NAME, help=command.HELP))
    add_verbose_flag(parser, sub)
    return parser


def _error(prog: str, command: str, text) -> int:
    print(f"{prog} {command}: error: {text}", file=sys.stderr)
    return 2


def run(prog: str, description: str, commands: Sequence,
        user_errors: Callable[[], Tuple[type, ...]], argv=None) -> int:
    """Parses ``argv``, checks, starts TensorFlow and runs the chosen command;
    ``user_errors()`` (called once TensorFlow is loaded) names the exception types, besides
    ValueError and OSError, reported as one line."""
    by_name = {command.NAME: command for command in commands}
    args = build_parser(prog, description, commands).parse_args(argv)
    command = by_name[args.command]
    try:
        if hasattr(command, "check"):
            command.check(args)
    except ValueError as error:
        return _error(prog, args.command, error)
    from export.startup import start_tensorflow
    start_tensorflow(prog, args.verbose)  # the defaults it reads once, then the import
    import tensorflow as tf

    try:
        return command.run(args)
    except (ValueError, OSError) + tuple(user_errors()) as error:
        return _error(prog, args.command, error)
    except tf.errors.InvalidArgumentError as error:  # e.g. a file that is not an image
        from keras_vit.preprocessing import error_detail
        return _error(prog, args.command, f"invalid input: {error_detail(error)}")
