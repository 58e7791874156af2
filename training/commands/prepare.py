"""``keras-vit prepare``: a dataset written once as TFDS shards (train with ``tfds:DIR``);
the writing itself is :mod:`training.prepare`."""
from __future__ import annotations

NAME = "prepare"
HELP = "write a dataset once as TFDS shards (train with tfds:DIR)"


def add_arguments(parser) -> None:
    from training.prepare import add_arguments as add
    add(parser)


def check(args) -> None:
    from training.prepare import check_arguments
    check_arguments(args)


def run(args) -> int:
    from training.prepare import run as prepare
    return prepare(args)
