"""What a recipe builds: its optimizer and learning-rate schedule (Keras)."""
from __future__ import annotations

import keras

from keras_vit.model_ops import NO_WEIGHT_DECAY  # biases, norms, embeddings (keras_vit's)
from training.recipes import Recipe


@keras.saving.register_keras_serializable(package="keras_vit_training")
class WarmupLinearDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup from 0 to ``peak`` over ``warmup_steps``, then linear decay to 0."""

    def __init__(self, peak: float, warmup_steps: int, total_steps: int):
        self.peak, self.warmup_steps, self.total_steps = peak, warmup_steps, total_steps

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warm = self.peak * step / max(self.warmup_steps, 1)
        decay = self.peak * (self.total_steps - step) / max(self.total_steps -
                                                            self.warmup_steps, 1)
        rate = keras.ops.where(step < self.warmup_steps, warm, decay)
        return keras.ops.maximum(rate, 0.0)

    def get_config(self):
        return dict(peak=self.peak, warmup_steps=self.warmup_steps,
                    total_steps=self.total_steps)


def make_schedule(recipe: Recipe, total_steps: int):
    warmup = min(recipe.warmup_steps, max(total_steps - 1, 0))
    if recipe.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0, decay_steps=max(total_steps - warmup, 1),
            warmup_target=recipe.learning_rate, warmup_steps=warmup)
    if recipe.schedule == "linear":
        return WarmupLinearDecay(recipe.learning_rate, warmup, total_steps)
    raise ValueError(f"unknown schedule {recipe.schedule!r}: expected 'cosine' or 'linear'")


def make_optimizer(recipe: Recipe, total_steps: int):
    """The recipe's optimizer, without clipping: the trainer clips the all-reduced gradient
    by its global norm, in every precision (``training.trainer.make_train_step``)."""
    schedule = make_schedule(recipe, total_steps)
    if recipe.optimizer == "sgd":
        return keras.optimizers.SGD(schedule, momentum=recipe.momentum)
    if recipe.optimizer == "adamw":
        optimizer = keras.optimizers.AdamW(schedule, weight_decay=recipe.weight_decay,
                                           beta_1=recipe.beta_1, beta_2=recipe.beta_2)
        optimizer.exclude_from_weight_decay(var_names=NO_WEIGHT_DECAY)
        return optimizer
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}: expected 'sgd' or 'adamw'")
