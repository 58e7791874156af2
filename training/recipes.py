"""Training recipes as plain config objects (paper Tables 3 and 4), and what they build."""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

import keras

from keras_vit.model_ops import NO_WEIGHT_DECAY  # biases, norms, embeddings (keras_vit's)

# A small ViT for the built-in demo (digits at 32 px): 64 tokens of 4x4 patches.
TINY_MODEL = dict(patch_size=4, hidden_size=64, mlp_size=128, num_heads=4, num_layers=4)


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    model: str
    dataset: str
    image_size: int
    batch_size: int
    optimizer: str            # "sgd" or "adamw"
    learning_rate: float
    schedule: str             # "cosine" (linear warmup, cosine decay) or "linear"
    warmup_steps: int
    steps: Optional[int] = None
    epochs: Optional[int] = None
    momentum: float = 0.9
    beta_1: float = 0.9
    beta_2: float = 0.999
    weight_decay: float = 0.0
    clip_global_norm: Optional[float] = 1.0
    dropout_rate: float = 0.0
    crop_area_min: Optional[float] = 0.05   # inception crop; None: plain resize
    flip: bool = True

    def validate(self) -> "Recipe":
        """Raises ValueError naming the first field (and its flag) that no run can use."""
        def bad(field, need, value):
            raise ValueError(f"{field.replace('_', '-')} must be {need} (got {value!r}; "
                             f"flag --{field.replace('_', '-')})")

        for field in ("batch_size", "image_size", "steps", "epochs"):
            value = getattr(self, field)
            if value is not None and (not isinstance(value, int) or value < 1):
                bad(field, "a positive integer", value)
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            bad("warmup_steps", "a non-negative integer", self.warmup_steps)
        if not (isinstance(self.learning_rate, (int, float)) and 0 < self.learning_rate < math.inf):
            bad("learning_rate", "a finite positive number", self.learning_rate)
        if not (isinstance(self.weight_decay, (int, float)) and 0 <= self.weight_decay < math.inf):
            bad("weight_decay", "a finite number >= 0", self.weight_decay)
        if self.crop_area_min is not None and not 0 < self.crop_area_min <= 1:
            raise ValueError(f"recipe field crop_area_min must be in (0, 1] or null (got "
                             f"{self.crop_area_min!r})")
        if not 0 <= self.dropout_rate < 1:
            raise ValueError(f"recipe field dropout_rate must be in [0, 1) (got "
                             f"{self.dropout_rate!r})")
        return self

    def replace(self, **overrides) -> "Recipe":
        """A copy with the given fields changed; ``None`` means "keep the recipe's"."""
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if "epochs" in overrides and "steps" not in overrides:
            overrides["steps"] = None  # --epochs alone replaces a step-count recipe
        return dataclasses.replace(self, **overrides)


RECIPES = {
    # Paper Table 4 / appendix B.1.1: SGD momentum 0.9, cosine decay, clip at global norm 1,
    # no weight decay, batch 512, fine-tuned at 384 px (lr swept in {0.001,...,0.03}).
    "finetune": Recipe(name="finetune", model="ViT_B16", dataset="tfds:cifar10",
                       image_size=384, batch_size=512, optimizer="sgd", learning_rate=0.03,
                       schedule="cosine", warmup_steps=500, steps=10_000),
    # Paper section 4.1 / Table 3: Adam(W) b1 0.9 b2 0.999, weight decay 0.1, batch 4096,
    # 10k linear warmup then linear decay, 224 px, dropout 0.1.
    "pretrain": Recipe(name="pretrain", model="ViT_B16", dataset="tfds:imagenet2012",
                       image_size=224, batch_size=4096, optimizer="adamw",
                       learning_rate=1e-3, schedule="linear", warmup_steps=10_000, epochs=300,
                       weight_decay=0.1, dropout_rate=0.1),
    # The offline demo: a tiny ViT trained from scratch on digits in minutes on 2 CPU cores.
    "demo": Recipe(name="demo", model="tiny", dataset="digits", image_size=32, batch_size=64,
                   optimizer="adamw", learning_rate=2e-3, schedule="cosine", warmup_steps=100,
                   epochs=30, weight_decay=1e-4, crop_area_min=None, flip=False),
}


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
