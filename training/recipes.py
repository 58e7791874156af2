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

# keras_vit.ViT's classifier and position_embedding choices (here: no TensorFlow for the CLI).
CLASSIFIERS = ("token", "gap")
POSITION_EMBEDDINGS = ("learned", "sincos2d")

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
    # From-scratch training (DeiT, plain ViT; training.augment): 0 / defaults switch it off.
    label_smoothing: float = 0.0
    rand_augment_layers: int = 0
    rand_augment_magnitude: float = 0.0
    rand_augment_magnitude_std: float = 0.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    mix_probability: float = 1.0         # a batch is mixed with this probability
    mix_switch_probability: float = 0.5  # CutMix rather than Mixup, when both alphas > 0
    random_erasing: float = 0.0          # probability of erasing one box of an image
    drop_path_rate: float = 0.0
    classifier: str = "token"            # "token" or "gap"
    position_embedding: str = "learned"  # "learned" or "sincos2d"
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
        self._validate_from_scratch(bad)
        return self

    def _validate_from_scratch(self, bad) -> None:
        for field in ("label_smoothing", "drop_path_rate"):
            value = getattr(self, field)
            if not (isinstance(value, (int, float)) and 0 <= value < 1):
                bad(field, "in [0, 1)", value)
        for field in ("mix_probability", "mix_switch_probability", "random_erasing"):
            value = getattr(self, field)
            if not (isinstance(value, (int, float)) and 0 <= value <= 1):
                bad(field, "in [0, 1]", value)
        for field in ("mixup_alpha", "cutmix_alpha", "rand_augment_magnitude",
                      "rand_augment_magnitude_std"):
            value = getattr(self, field)
            if not (isinstance(value, (int, float)) and 0 <= value < math.inf):
                bad(field, "a finite number >= 0", value)
        if not isinstance(self.rand_augment_layers, int) or self.rand_augment_layers < 0:
            bad("rand_augment_layers", "a non-negative integer", self.rand_augment_layers)
        if self.rand_augment_magnitude > 10:
            bad("rand_augment_magnitude", "at most 10", self.rand_augment_magnitude)
        if self.classifier not in CLASSIFIERS:
            bad("classifier", f"one of {', '.join(CLASSIFIERS)}", self.classifier)
        if self.position_embedding not in POSITION_EMBEDDINGS:
            bad("position_embedding", f"one of {', '.join(POSITION_EMBEDDINGS)}",
                self.position_embedding)

    @property
    def soft_targets(self) -> bool:
        """Whether the pipeline gives (B, classes) float targets (Mixup, CutMix, smoothing)
        rather than int64 labels."""
        return self.mixup_alpha > 0 or self.cutmix_alpha > 0 or self.label_smoothing > 0

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
    # DeiT (Touvron et al. 2021, arXiv 2012.12877v2), Table 9, DeiT-S (= ViT-S/16, 79.8%
    # top-1 on ImageNet-1k at 224 px after 300 epochs): AdamW lr 5e-4 * batch/512, weight
    # decay 0.05, cosine decay, 5 warm-up epochs (1,226 steps an epoch at batch 1024), no
    # gradient clipping, label smoothing 0.1, stochastic depth 0.1, RandAugment m9 mstd0.5
    # (timm "rand-m9-mstd0.5-inc1", 2 layers), Mixup 0.8 / CutMix 1.0 (switch 0.5), random
    # erasing 0.25, inception crop 8%-100% + flip. Left out: repeated augmentation, bicubic
    # resizing (here bilinear), DeiT's distillation token (the 79.8% is without it).
    "deit": Recipe(name="deit", model="ViT_S16", dataset="tfds:imagenet2012", image_size=224,
                   batch_size=1024, optimizer="adamw", learning_rate=1e-3, schedule="cosine",
                   warmup_steps=6_130, epochs=300, weight_decay=0.05, clip_global_norm=None,
                   crop_area_min=0.08, label_smoothing=0.1, rand_augment_layers=2,
                   rand_augment_magnitude=9, rand_augment_magnitude_std=0.5, mixup_alpha=0.8,
                   cutmix_alpha=1.0, random_erasing=0.25, drop_path_rate=0.1),
    # Better plain ViT baselines (Beyer, Zhai, Kolesnikov 2022, arXiv 2205.01580), as
    # big_vision's configs/vit_s16_i1k.py: ViT-S/16, global-average pool, fixed 2-D sin-cos
    # position embeddings, batch 1024, Adam (0.9, 0.999) lr 1e-3, 10k warm-up steps, cosine,
    # clip 1, decoupled weight decay 1e-4 (big_vision does not scale it by the learning rate;
    # Keras's AdamW does: 1e-4 / 1e-3 = 0.1 here), inception crop (5%) + flip,
    # RandAugment(2, 10), Mixup Beta(0.2, 0.2) on every batch, no dropout, no stochastic
    # depth. 76.5% top-1 after 90 epochs (the config), ~80% after 300 (the paper's Fig. 1).
    # Left out: big_vision's pre-logits layer (rep_size=True), its 99% / 1% minival split.
    "plain": Recipe(name="plain", model="ViT_S16", dataset="tfds:imagenet2012",
                    image_size=224, batch_size=1024, optimizer="adamw", learning_rate=1e-3,
                    schedule="cosine", warmup_steps=10_000, epochs=90, weight_decay=0.1,
                    crop_area_min=0.05, rand_augment_layers=2, rand_augment_magnitude=10,
                    mixup_alpha=0.2, classifier="gap", position_embedding="sincos2d"),
    # The offline demo: a tiny ViT trained from scratch on digits in minutes on 2 CPU cores.
    "demo": Recipe(name="demo", model="tiny", dataset="digits", image_size=32, batch_size=64,
                   optimizer="adamw", learning_rate=2e-3, schedule="cosine", warmup_steps=100,
                   epochs=30, weight_decay=1e-4, crop_area_min=None, flip=False),
}

# The flags of keras-vit train that override the from-scratch fields of a recipe:
# (recipe field, type, help). Every field of RECIPES["deit"] / ["plain"] can be changed.
FROM_SCRATCH_FLAGS = (
    ("label_smoothing", float, "label smoothing of the targets (deit: 0.1)"),
    ("rand_augment_layers", int, "RandAugment ops per image, 0: none (deit, plain: 2)"),
    ("rand_augment_magnitude", float, "RandAugment magnitude, 0..10 (deit: 9, plain: 10)"),
    ("rand_augment_magnitude_std", float, "std of the RandAugment magnitude (deit: 0.5)"),
    ("mixup_alpha", float, "Mixup ratio ~ Beta(a, a), 0: no Mixup (deit: 0.8, plain: 0.2)"),
    ("cutmix_alpha", float, "CutMix ratio ~ Beta(a, a), 0: no CutMix (deit: 1.0)"),
    ("mix_probability", float, "probability that a batch is mixed (default 1)"),
    ("mix_switch_probability", float, "CutMix rather than Mixup when both (default 0.5)"),
    ("random_erasing", float, "probability of erasing a box of an image (deit: 0.25)"),
    ("drop_path_rate", float, "stochastic depth of the last block (deit: 0.1)"),
    ("classifier", str, "token (class token) or gap (global average pool; plain)"),
    ("position_embedding", str, "learned or sincos2d (fixed 2-D sin-cos; plain)"),
    ("dropout_rate", float, "dropout (pretrain: 0.1)"),
    ("crop_area_min", float, "smallest area of the inception crop (deit: 0.08)"),
)


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
