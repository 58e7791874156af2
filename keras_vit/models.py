"""ViT and ResNet+ViT hybrid models as plain ``keras.Model`` s (paper section 3.1)."""
from __future__ import annotations

import dataclasses
import logging
from typing import Optional, Sequence, Union

import keras

from keras_vit.layers import (AttentionPooling, ImageValidation, PatchEncoder, Patches,
                              ResNetUnit, StdConv2D, TokenPooling, TransformerBlock)
from keras_vit.layers.pooling import CLASSIFIERS
from keras_vit.layers.resnet import group_norm
from keras_vit.position_embeddings import to_pair
from keras_vit.preprocessing import normalization_layer
from keras_vit.sources import source_numerics
from keras_vit.variants import VARIANTS, ViTConfig, check_fits, total_stride

logger = logging.getLogger("keras_vit")

ImageSize = Union[int, Sequence[int]]


@keras.saving.register_keras_serializable(package="keras_vit")
class ViTModel(keras.Model):
    """The functional model the builders return: a plain functional ``keras.Model`` whose
    ``class_names`` (the names of the head's classes, when known) are saved in its config, so
    a ``.keras`` file reloaded with ``keras.saving.load_model`` (safe mode) has them."""

    def get_config(self):
        config = super().get_config()
        names = getattr(self, "class_names", None)
        if names:
            config["class_names"] = [str(name) for name in names]
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        names = config.pop("class_names", None)
        model = super().from_config(config, custom_objects=custom_objects)
        if names is not None:
            model.class_names = list(names)
        return model


def _resnet_v2_backbone(x, stages, width, dtype, numerics):
    """BiT ResNet v2 stem and stages, layer names as in the original checkpoints."""
    base = 64 * width
    std_conv = dict(epsilon=numerics["std_conv_epsilon"],
                    epsilon_in_sqrt=numerics["std_conv_epsilon_in_sqrt"])
    x = StdConv2D(base, 7, strides=2, padding="same", use_bias=False, name="conv_root",
                  dtype=dtype, **std_conv)(x)
    x = group_norm("gn_root", dtype, epsilon=numerics["group_norm_epsilon"])(x)
    x = keras.layers.ReLU(name="relu_root", dtype=dtype)(x)
    x = keras.layers.MaxPooling2D(3, strides=2, padding="same", name="pool_root",
                                  dtype=dtype)(x)
    for s, num_units in enumerate(stages):
        for u in range(num_units):
            x = ResNetUnit(base * 2 ** s, strides=(2 if s > 0 and u == 0 else 1),
                           use_projection=(u == 0), name=f"block{s + 1}_unit{u + 1}",
                           dtype=dtype, group_norm_epsilon=numerics["group_norm_epsilon"],
                           std_conv_epsilon=std_conv["epsilon"],
                           std_conv_epsilon_in_sqrt=std_conv["epsilon_in_sqrt"])(x)
    return x


def ViT(image_size: ImageSize = 224, patch_size: int = 16, hidden_size: int = 768,
        mlp_size: int = 3072, num_heads: int = 12, num_layers: int = 12,
        resnet_stages: Optional[Sequence[int]] = None, resnet_width: int = 1,
        num_classes: int = 1000, include_top: bool = True, weights=None,
        classifier: str = "token", representation_size: Optional[int] = None,
        include_preprocessing: bool = True, mean=None, std=None, interpolation=None,
        dropout_rate: float = 0.0, attention_dropout_rate: float = 0.0, drop_path_rate: float = 0.0,
        channels: int = 3, dtype=None, name: str = "vit", gelu: Optional[str] = None,
        layer_norm_epsilon: Optional[float] = None, group_norm_epsilon: Optional[float] = None,
        std_conv_epsilon: Optional[float] = None,
        std_conv_epsilon_in_sqrt: Optional[bool] = None, class_token: Optional[bool] = None,
        num_register_tokens: int = 0, embed_prefix: bool = True, layer_scale: bool = False,
        pre_norm: bool = False, patch_bias: bool = True, fc_norm: bool = False,
        position_embedding: str = "learned", distillation_token: Optional[bool] = None,
        projection_dim: Optional[int] = None) -> keras.Model:
    """Builds a Vision Transformer (or, with ``resnet_stages``, a ResNet+ViT hybrid).

    The model takes images (batch, H, W, channels): raw pixels in [0, 255] when
    ``include_preprocessing`` (it normalises them itself: to [-1, 1] as the original input
    pipeline did, or with ``mean`` / ``std``), else normalised values. Built for ``image_size``
    it takes any multiple of the patch size (times the ResNet stride for hybrids), resizing its
    position embeddings in the graph. It returns float32 logits (batch, num_classes), with
    ``projection_dim`` an embedding, without ``include_top`` the pooled features.

    Args:
        image_size: int or (height, width) the position embeddings are learned for.
        patch_size, hidden_size, mlp_size, num_heads, num_layers, resnet_stages, resnet_width:
            the architecture: the fields of :class:`keras_vit.ViTConfig`, as in each row of
            :data:`keras_vit.VARIANTS` (``num_heads`` must divide ``hidden_size``).
        num_classes, include_top: outputs of the head; ``include_top=False``: no head.
        projection_dim: instead of the head, a CLIP tower's bias-free projection to the
            image-text space (``Dense`` named ``projection``: an embedding, not classes).
        weights: None, an original ``.npz``, a timm ``.safetensors`` file, a transformers or
            timm hub model directory, an ``hf://`` name, a ``.keras`` / ``.weights.h5`` file
            (:func:`keras_vit.weights.load_weights`), or (named builders) a published name.
        classifier: ``"token"``, ``"gap"`` (patch mean), ``"map"`` (attention pooling),
            ``"distilled"`` (DeiT's two heads, averaged) or ``"token_gap"`` (class token and
            patch mean side by side: DINOv2's); see :class:`keras_vit.layers.TokenPooling`.
        position_embedding, representation_size: ``"learned"`` or ``"sincos2d"`` (fixed,
            arXiv 2205.01580); the width of a pre-logits ``Dense + tanh`` (None: none).
        mean, std, interpolation: the weights' input statistics (per channel, [0, 1] scale;
            None: 0.5, the original's) and resize method (:mod:`keras_vit.preprocessing`).
        dropout_rate, attention_dropout_rate, drop_path_rate: dropout after the position
            embeddings and dense layers; on the attention probabilities; the last block's
            stochastic depth (from 0 at the first).
        channels, dtype, name: input channels; the layers' dtype policy (head: float32); name.
        gelu, layer_norm_epsilon, group_norm_epsilon, std_conv_epsilon, std_conv_epsilon_in_sqrt:
            the numerics (:mod:`keras_vit.sources`); None: the weights' source's or the original's.
        class_token, distillation_token: a class token (default: with a class-token
            classifier); DeiT's distillation token (default: for ``"distilled"``).
        num_register_tokens, embed_prefix, layer_scale, pre_norm, patch_bias, fc_norm: the
            ViT family's options (:class:`keras_vit.ViTConfig`, docs/models.md).

    Example:
    >>> model = ViT(image_size=32, patch_size=8, hidden_size=64, mlp_size=128, num_heads=4,
    ...             num_layers=2, num_classes=10)
    >>> model.output_shape
    (None, 10)
    """
    return _with_weights(_build(dict(locals())), weights)


_FAMILY_OPTIONS = ("num_register_tokens", "embed_prefix", "layer_scale", "pre_norm",
                   "patch_bias", "fc_norm")
_NUMERICS_OPTIONS = ("gelu", "layer_norm_epsilon", "group_norm_epsilon", "std_conv_epsilon",
                     "std_conv_epsilon_in_sqrt")


def _build(a: dict) -> keras.Model:
    """The functional model of :func:`ViT`'s arguments ``a``, checked in named steps."""
    config = _architecture(a["classifier"], a["patch_size"], a["hidden_size"], a["mlp_size"],
                           a["num_heads"], a["num_layers"], a["resnet_stages"],
                           a["resnet_width"], **{k: a[k] for k in _FAMILY_OPTIONS})
    prefix = _prefix_tokens(config, a["classifier"], a["class_token"],
                            a["representation_size"], a["distillation_token"])
    rates = _dropout_rates(a["dropout_rate"], a["attention_dropout_rate"],
                           a["drop_path_rate"])
    numerics = _numerics(a["weights"], **{k: a[k] for k in _NUMERICS_OPTIONS})
    dtype = a["dtype"]
    grid = _token_grid(config, a["image_size"], prefix, dtype)
    inputs = keras.Input(shape=(None, None, a["channels"]), name="images")
    preprocessing = ((a["mean"], a["std"], a["interpolation"]) if a["include_preprocessing"]
                     else None)
    x = _stem(inputs, config, a["channels"], preprocessing, numerics, dtype)
    x = _encoder(x, config, grid, prefix, rates, numerics, dtype, a["position_embedding"])
    x = _top(x, dict(a, config=config, prefix=prefix, numerics=numerics))
    return ViTModel(inputs, x, name=a["name"])


def _with_weights(model: keras.Model, weights) -> keras.Model:
    if weights is not None:
        from keras_vit.weights import load_weights
        load_weights(model, weights)
    return model


def _architecture(classifier, patch_size, hidden_size, mlp_size, num_heads, num_layers,
                  resnet_stages, resnet_width, **family) -> ViTConfig:
    """The builder's arguments as a :class:`ViTConfig` (a row of the variant table), checked."""
    if classifier not in CLASSIFIERS:
        raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {classifier!r}")
    family = {k: (int if k == "num_register_tokens" else bool)(v) for k, v in family.items()}
    config = ViTConfig(patch_size=int(patch_size), hidden_size=int(hidden_size),
                       mlp_size=int(mlp_size), num_heads=int(num_heads),
                       num_layers=int(num_layers),
                       resnet_stages=tuple(resnet_stages) if resnet_stages else None,
                       resnet_width=int(resnet_width), **family)
    if config.num_register_tokens < 0:
        raise ValueError(f"num_register_tokens must be >= 0, got {config.num_register_tokens}")
    if config.hidden_size % config.num_heads:
        raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
    return config


def _prefix_tokens(config: ViTConfig, classifier, class_token, representation_size,
                   distillation_token=None) -> dict:
    """The tokens before the patches: class token, distillation token, registers."""
    with_class = ("token", "distilled", "token_gap")
    if class_token is None:
        class_token = classifier in with_class
    if classifier in with_class and not class_token:
        raise ValueError(f"classifier {classifier!r} needs the class token (class_token=True)")
    if classifier == "distilled" and representation_size:
        raise ValueError("classifier 'distilled' has no pre-logits layer (representation_size)")
    distilled = classifier == "distilled" if distillation_token is None else bool(
        distillation_token)
    if classifier == "distilled" and not distilled:
        raise ValueError("classifier 'distilled' needs the distillation token")
    if distilled and not class_token:
        raise ValueError("a distillation token needs the class token (class_token=True)")
    count = int(class_token) + int(distilled) + config.num_register_tokens
    return dict(count=count, class_token=bool(class_token), distilled=distilled)


def _dropout_rates(dropout_rate, attention_dropout_rate, drop_path_rate) -> dict:
    rates = dict(dropout_rate=dropout_rate, attention_dropout_rate=attention_dropout_rate,
                 drop_path_rate=drop_path_rate)
    for what, value in rates.items():
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{what} must be in [0, 1), got {value}")
    return rates


def _numerics(weights, **chosen) -> dict:
    """The numerics of the source of ``weights``, with the ones passed (not None) instead."""
    numerics = source_numerics(weights)
    for key, value in chosen.items():
        if value is not None:
            numerics[key] = value
    return numerics


def _token_grid(config: ViTConfig, image_size, prefix, dtype):
    """The (rows, columns) of tokens of ``image_size``, checked divisible and to fit memory."""
    height, width = to_pair(image_size, "image_size")
    stride = total_stride(config)
    if height % stride or width % stride:
        raise ValueError(f"image_size {(height, width)} is not divisible by {stride} (the "
                         f"{'ResNet stride times the ' if config.resnet_stages else ''}patch "
                         f"size); expected multiples of {stride}")
    grid = (height // stride, width // stride)
    policy = keras.dtype_policies.get(dtype) if dtype is not None else \
        keras.config.dtype_policy()
    check_fits(config, (height, width), prefix["count"],
               activation_bytes=2 if "16" in policy.compute_dtype else 4)
    return grid


def _stem(inputs, config: ViTConfig, channels, preprocessing, numerics, dtype):
    """Input checks, the normalisation of the pixels (``preprocessing``: (mean, std,
    interpolation), None for none) and (hybrids) the ResNet backbone."""
    x = ImageValidation(total_stride(config), channels, name="image_validation",
                        dtype=dtype)(inputs)
    if preprocessing is not None:
        x = normalization_layer(*preprocessing, channels, dtype)(x)
    if config.resnet_stages:
        x = _resnet_v2_backbone(x, config.resnet_stages, config.resnet_width, dtype, numerics)
    return x


def _encoder(x, config: ViTConfig, grid, prefix, rates, numerics, dtype,
             position_embedding="learned"):
    """Patch embedding, position embeddings, the Transformer blocks and the final norm
    (after the pooling instead with ``fc_norm``)."""
    x = Patches(config.patch_size, config.hidden_size, use_bias=config.patch_bias,
                name="embedding", dtype=dtype)(x)
    x = PatchEncoder(grid, config.hidden_size, num_prefix_tokens=prefix["count"],
                     dropout_rate=rates["dropout_rate"], name="posembed_input", dtype=dtype,
                     num_register_tokens=config.num_register_tokens,
                     distillation_token=prefix["distilled"],
                     embed_prefix=config.embed_prefix,
                     position_embedding=position_embedding)(x)
    if config.pre_norm:
        x = keras.layers.LayerNormalization(epsilon=numerics["layer_norm_epsilon"],
                                            name="pre_norm", dtype=dtype)(x)
    for i in range(config.num_layers):
        # Stochastic depth grows linearly with depth (0 for the first block).
        rate = rates["drop_path_rate"] * i / max(config.num_layers - 1, 1)
        x = TransformerBlock(config.num_heads, config.mlp_size,
                             dropout_rate=rates["dropout_rate"],
                             attention_dropout_rate=rates["attention_dropout_rate"],
                             drop_path_rate=rate, name=f"encoderblock_{i}", dtype=dtype,
                             gelu=numerics["gelu"],
                             layer_norm_epsilon=numerics["layer_norm_epsilon"],
                             layer_scale=config.layer_scale)(x)
    if config.fc_norm:
        return x
    return keras.layers.LayerNormalization(epsilon=numerics["layer_norm_epsilon"],
                                           name="encoder_norm", dtype=dtype)(x)


def _pool(x, top: dict):
    """The pooling of ``top["classifier"]`` (then the LayerNorm with ``fc_norm``)."""
    config, classifier, dtype = top["config"], top["classifier"], top["dtype"]
    epsilon = top["numerics"]["layer_norm_epsilon"]
    if classifier == "map":
        x = AttentionPooling(config.num_heads, config.mlp_size, top["prefix"]["count"],
                             layer_norm_epsilon=epsilon, gelu=top["numerics"]["gelu"],
                             name="pool", dtype=dtype)(x)
    else:
        skip = top["prefix"]["count"] if classifier in ("gap", "token_gap") else 0
        x = TokenPooling(classifier, skip, name="pool", dtype=dtype)(x)
    if config.fc_norm:
        x = keras.layers.LayerNormalization(epsilon=epsilon, name="fc_norm", dtype=dtype)(x)
    return x


def _distilled_head(x, num_classes, dtype):
    """DeiT distilled: the class token's head and the distillation token's head, averaged
    (timm ``VisionTransformerDistilled`` at inference)."""
    heads = [keras.layers.Dense(num_classes, kernel_initializer="zeros", name=name,
                                dtype="float32")(TokenPooling(kind, name=pool, dtype=dtype)(x))
             for kind, pool, name in (("token", "pool", "head"),
                                      ("dist", "pool_dist", "head_dist"))]
    return keras.layers.Average(name="head_average", dtype="float32")(heads)


def _top(x, top: dict):
    """Pooling, the pre-logits layer if any, and the head (or the features' output)."""
    representation_size, dtype = top["representation_size"], top["dtype"]
    projection = top.get("projection_dim") if top["include_top"] else None
    if projection is not None and (int(projection) < 1 or top["classifier"] == "distilled"):
        raise ValueError(f"projection_dim must be a positive width (and the classifier not "
                         f"'distilled'), got {projection!r} with {top['classifier']!r}")
    if top["classifier"] == "distilled" and top["include_top"]:
        return _distilled_head(x, top["num_classes"], dtype)
    x = _pool(x, top)
    if representation_size:
        x = keras.layers.Dense(representation_size, activation="tanh", name="pre_logits",
                               dtype=dtype)(x)
    if projection is not None:  # CLIP: an embedding in the image-text space, float32
        return keras.layers.Dense(int(projection), use_bias=False, name="projection",
                                  dtype="float32")(x)
    if top["include_top"]:
        # Zero-initialised head in float32 (paper section 3.1, fine-tuning).
        return keras.layers.Dense(top["num_classes"], kernel_initializer="zeros", name="head",
                                  dtype="float32")(x)
    return keras.layers.Activation("linear", name="features", dtype="float32")(x)


def _label_published_head(model: keras.Model, meta) -> None:
    """``model.class_names``: the published head's class names (ImageNet-1k: its WordNet IDs)
    when the model kept that head (same class count); exports and predictions use them."""
    if meta.labels is None or model.output_shape[-1] != meta.num_classes:
        return
    try:
        model.class_names = meta.class_names()
    except ValueError as error:  # no tensorflow-datasets label list here
        logger.warning("%s: no class names for its head (%s)", meta.name, error)


def _named_builder(variant: str):
    config = VARIANTS[variant]

    def build(image_size: Optional[ImageSize] = None, num_classes: Optional[int] = None,
              include_top: bool = True, weights=None, classifier: Optional[str] = None,
              representation_size: Optional[int] = None, include_preprocessing: bool = True,
              dropout_rate: float = 0.0, attention_dropout_rate: float = 0.0,
              drop_path_rate: float = 0.0, **kwargs) -> keras.Model:
        from keras_vit.pretrained import (builder_arguments, is_published_name, published,
                                          resolve_weights)
        args = builder_arguments(variant, weights, image_size=image_size,
                                 num_classes=num_classes, include_top=include_top,
                                 classifier=classifier, representation_size=representation_size)
        name = weights if is_published_name(weights) else None
        if isinstance(weights, str):
            weights = resolve_weights(variant, weights)
        arch = {k: v for k, v in dataclasses.asdict(config).items() if k != "checkpoint_name"}
        model = ViT(include_top=include_top, weights=weights,
                    include_preprocessing=include_preprocessing, dropout_rate=dropout_rate,
                    attention_dropout_rate=attention_dropout_rate,
                    drop_path_rate=drop_path_rate,
                    **{"name": variant.lower(), **args, **arch, **kwargs})
        if name is not None and include_top:
            _label_published_head(model, published(variant, name))
        return model

    build.__name__ = build.__qualname__ = variant
    build.__doc__ = (
        f"{config.checkpoint_name} of the paper: patch {config.patch_size}, width "
        f"{config.hidden_size}, depth {config.num_layers}, MLP {config.mlp_size}, "
        f"{config.num_heads} heads"
        + (f", ResNet v2 stages {config.resnet_stages}" if config.resnet_stages else "")
        + ".\n\n    Arguments as in :func:`keras_vit.ViT`. ``weights`` may also name a "
          "published checkpoint (see :func:`keras_vit.pretrained.available_weights`); its "
          "image size, class count, classifier and (when the released head is kept) "
          "representation size are then the defaults of the arguments not passed (224, "
          "1000, \"token\" and None otherwise).\n")
    return build


ViT_Ti16 = _named_builder("ViT_Ti16")
ViT_S16 = _named_builder("ViT_S16")
ViT_S32 = _named_builder("ViT_S32")
ViT_B16 = _named_builder("ViT_B16")
ViT_B32 = _named_builder("ViT_B32")
ViT_L16 = _named_builder("ViT_L16")
ViT_L32 = _named_builder("ViT_L32")
ViT_H14 = _named_builder("ViT_H14")
R26_ViT_S32 = _named_builder("R26_ViT_S32")
R50_ViT_B16 = _named_builder("R50_ViT_B16")
R50_ViT_L32 = _named_builder("R50_ViT_L32")


def model_image_size(model: keras.Model):
    """The (height, width) a keras_vit model was built for (its position-embedding grid).

    Args:
        model: a keras_vit model.

    Returns:
        A (height, width) tuple of ints.
    """
    encoder = model.get_layer("posembed_input")
    stride = model.get_layer("image_validation").multiple_of
    return (encoder.grid_size[0] * stride, encoder.grid_size[1] * stride)


def has_head(model: keras.Model) -> bool:
    """Whether a keras_vit model ends in a classifier head (logits out), rather than being a
    headless tower (``include_top=False``, e.g. a CLIP, DINOv2 or SigLIP image tower loaded
    without its head): its output is then the pooled features, an embedding, from the
    float32 layer named ``features``, or (CLIP, ``projection_dim``) the projected embedding
    from the bias-free layer named ``projection``."""
    return "head" in {layer.name for layer in model.layers}
