"""The keras-vit training application: data, recipes, tf.distribute loop, CLI."""
import keras_vit  # noqa: F401  (first: its TensorFlow runtime defaults, keras_vit/runtime.py)
from training.recipes import RECIPES, Recipe
from training.trainer import RunConfig, TrainingError, build_model, evaluate, train

__all__ = ["RECIPES", "Recipe", "RunConfig", "TrainingError", "build_model", "evaluate", "train"]
