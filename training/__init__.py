"""The keras-vit training application: data, recipes, tf.distribute loop, CLI."""
from training.recipes import RECIPES, Recipe
from training.trainer import RunConfig, TrainingError, build_model, evaluate, train

__all__ = ["RECIPES", "Recipe", "RunConfig", "TrainingError", "build_model", "evaluate", "train"]
