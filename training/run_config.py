"""A run's configuration: :class:`RunConfig` (written to the run directory's ``config.json``
and read back, checked field by field, by ``--resume``), the model a recipe names, and the
error a run ends with (:class:`TrainingError`)."""
from __future__ import annotations

import dataclasses
import json
from typing import Optional

import tensorflow as tf

import keras_vit
from export.run_layout import CONFIG, RunLayout
from keras_vit.sources import parse_json
from training.data_service import DEFAULT_STALL_TIMEOUT_S, check_stall_timeout
from training.recipes import (DEFAULT_MAX_BAD_IMAGES, PRECISIONS, TINY_MODEL, Recipe,
                              check_accumulate)


class TrainingError(RuntimeError):
    """The run cannot go on (diverged, or a run directory that would be overwritten)."""


@dataclasses.dataclass
class RunConfig:
    """Everything a run needs; written to ``config.json`` and read back by ``--resume``."""

    recipe: Recipe
    output: str
    strategy: str = "auto"
    precision: str = "float32"
    jit_compile: bool = False
    weights: Optional[str] = None
    data_dir: Optional[str] = None
    train_split: Optional[str] = None
    test_split: Optional[str] = None
    checkpoint_every: int = 200
    log_every: int = 20
    seed: int = 0
    export: bool = True
    max_bad_images: int = DEFAULT_MAX_BAD_IMAGES
    data_service: Optional[str] = None  # grpc://HOST:PORT of a tf.data service dispatcher
    # seconds a trainer waits for the service's next batch (--data-service-timeout)
    data_service_timeout: float = DEFAULT_STALL_TIMEOUT_S
    accumulate: int = 1  # micro-batches a step (--accumulate; training.steps)

    def validate(self) -> "RunConfig":
        """Raises ValueError naming the first setting no run can use."""
        self.recipe.validate()
        if self.precision not in PRECISIONS:
            raise ValueError(f"unknown precision {self.precision!r}: expected one of "
                             f"{', '.join(PRECISIONS)}")
        for name in ("checkpoint_every", "log_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name.replace('_', '-')} must be a positive integer "
                                 f"(got {value!r})")
        if not isinstance(self.max_bad_images, int) or self.max_bad_images < 0:
            raise ValueError("max-bad-images must be a non-negative integer "
                             f"(got {self.max_bad_images!r})")
        if self.data_service is not None:
            from training.data_service import check_data_service
            check_data_service(self.data_service, self.recipe.dataset)
        check_stall_timeout(self.data_service_timeout)
        check_accumulate(self.accumulate, self.recipe.batch_size)
        keras_vit.variants.check_fits(  # --image-size 100000: refused before anything is built
            model_architecture(self.recipe.model), self.recipe.image_size, num_prefix_tokens=0,
            activation_bytes=2 if "16" in self.precision else 4)
        return self

    def to_json(self):
        data = dataclasses.asdict(self)
        return json.dumps(data, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text, source: str = CONFIG):
        """Parses ``text``; errors (ValueError) name ``source`` and the offending key."""
        data = parse_json(text, source)
        if not isinstance(data, dict) or not isinstance(data.get("recipe"), dict):
            raise ValueError(f"{source}: expected a run configuration with a 'recipe' object")
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)}) + sorted(
            f"recipe.{k}" for k in set(data["recipe"]) -
            {f.name for f in dataclasses.fields(Recipe)})
        if unknown:
            raise ValueError(f"{source}: unknown key(s) {', '.join(unknown)} (written by "
                             "another version of keras-vit?)")
        _check_field_types(cls, data, source)
        _check_field_types(Recipe, data["recipe"], source, "recipe.")
        try:
            data["recipe"] = Recipe(**data["recipe"])
            config = cls(**data)
        except TypeError as error:  # a missing key
            raise ValueError(f"{source}: {error}") from None
        try:
            return config.validate()
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None


# What a field of config.json may hold, by its declared type ("Optional[...]": also null).
_FIELD_KINDS = {"str": ((str,), "a string"), "bool": ((bool,), "true or false"),
                "int": ((int,), "an integer"), "float": ((int, float), "a number")}


def _check_field_types(cls, data: dict, source: str, prefix: str = "") -> None:
    """Every field of ``data`` holds a value of the type ``cls`` declares for it (a
    config.json edited by hand: ``"crop_area_min": "abc"`` would fail deep in tf.image)."""
    for field in dataclasses.fields(cls):
        declared = str(field.type)
        if field.name not in data or declared not in _FIELD_KINDS and \
                not declared.startswith("Optional["):
            continue
        optional = declared.startswith("Optional[")
        types, need = _FIELD_KINDS[declared[len("Optional["):-1] if optional else declared]
        value = data[field.name]
        if value is None and optional:
            continue
        if value is None or not isinstance(value, types) or \
                (isinstance(value, bool) and bool not in types):
            shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
            raise ValueError(f"{source}: field {prefix}{field.name} must be {need}"
                             f"{' or null' if optional else ''}, got {shown}")


def load_run_config(run_dir: str) -> RunConfig:
    """The RunConfig of an existing run directory (for ``--resume``)."""
    path = RunLayout(run_dir).config
    if not tf.io.gfile.exists(path):
        raise ValueError(f"--resume: {path} not found (not a keras-vit run directory)")
    with tf.io.gfile.GFile(path, "rb") as f:
        config = RunConfig.from_json(f.read(), source=path)
    config.output = run_dir
    return config


def model_architecture(model: str) -> keras_vit.ViTConfig:
    """The architecture of a recipe's ``model``: ``"tiny"`` or a variant name."""
    if model == "tiny":
        return keras_vit.ViTConfig(**TINY_MODEL)
    if model not in keras_vit.VARIANTS:
        raise ValueError(f"unknown model {model!r}: expected 'tiny' or one of "
                         f"{', '.join(sorted(keras_vit.VARIANTS))}")
    return keras_vit.VARIANTS[model]


def build_model(recipe: Recipe, num_classes: int, weights: Optional[str] = None):
    """The recipe's model with a fresh (zero) head for ``num_classes``."""
    common = dict(image_size=recipe.image_size, num_classes=num_classes,
                  dropout_rate=recipe.dropout_rate, **from_scratch_model_options(recipe))
    model_architecture(recipe.model)
    if recipe.model == "tiny":
        return keras_vit.ViT(**TINY_MODEL, **common, weights=weights, name="vit_tiny")
    return getattr(keras_vit, recipe.model)(weights=weights, **common)


def from_scratch_model_options(recipe: Recipe) -> dict:
    """The model options a from-scratch recipe sets (deit: stochastic depth; plain: "gap",
    "sincos2d"); none for the other recipes, whose models are built exactly as before."""
    options = dict(classifier=recipe.classifier, drop_path_rate=recipe.drop_path_rate,
                   position_embedding=recipe.position_embedding)
    defaults = dict(classifier="token", drop_path_rate=0.0, position_embedding="learned")
    return {key: value for key, value in options.items() if value != defaults[key]}
