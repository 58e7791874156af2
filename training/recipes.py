"""Training recipes as plain config objects (paper Tables 3 and 4). Plain data, no TensorFlow:
the CLI checks a recipe before TensorFlow loads; what a recipe builds (its optimizer and
learning-rate schedule) is in :mod:`training.optimizers`."""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

# The mixed-precision policies a run may use (``--precision``).
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")

# How many distinct unreadable images a run (or keras-vit prepare) skips before it stops
# (--max-bad-images; training.data.BadImages). Here, not in training.data: the CLI shows it
# in --help before TensorFlow loads.
DEFAULT_MAX_BAD_IMAGES = 100

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
    ema_decay: Optional[float] = None       # --ema-decay: average the weights (training.ema)

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
        if self.ema_decay is not None and not (isinstance(self.ema_decay, (int, float))
                                               and 0 < self.ema_decay < 1):
            bad("ema_decay", "a number in (0, 1)", self.ema_decay)
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


def check_accumulate(accumulate, batch_size: int, replicas: int = 1) -> None:
    """``--accumulate K`` splits each replica's share of the batch into K equal micro-batches:
    raises ValueError unless K is a positive integer that divides it."""
    if not isinstance(accumulate, int) or isinstance(accumulate, bool) or accumulate < 1:
        raise ValueError(f"accumulate must be a positive integer (got {accumulate!r}; "
                         "flag --accumulate)")
    if batch_size % (replicas * accumulate):
        shared = f" over the {replicas} replicas" if replicas > 1 else ""
        raise ValueError(f"batch size {batch_size} does not split into {accumulate} equal "
                         f"micro-batches{shared} (--accumulate {accumulate}): choose a batch "
                         f"size that is a multiple of {replicas * accumulate}")
