"""The keras-vit training application: data, recipes, tf.distribute loop, CLI.

Importing the package changes no environment variable and loads nothing heavy: the names
below are imported on first use, so the CLI (``training.cli.main``) can set its TensorFlow
defaults before TensorFlow loads.
"""
import importlib

_EXPORTS = {"RECIPES": "training.recipes", "Recipe": "training.recipes",
            "RunConfig": "training.run_config", "TrainingError": "training.run_config",
            "build_model": "training.run_config", "evaluate": "training.steps",
            "train": "training.trainer"}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'training' has no attribute {name!r}")
