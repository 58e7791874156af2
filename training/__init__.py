"""The keras-vit training application: data, recipes, tf.distribute loop, CLI."""
import os

# The CLI's quiet default for TensorFlow's C++ logs; set before keras_vit loads TensorFlow.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras_vit  # noqa: E402,F401  (first: its TensorFlow defaults, keras_vit/runtime.py)
from training.recipes import RECIPES, Recipe  # noqa: E402
from training.trainer import (RunConfig, TrainingError, build_model, evaluate,  # noqa: E402
                              train)

__all__ = ["RECIPES", "Recipe", "RunConfig", "TrainingError", "build_model", "evaluate", "train"]
