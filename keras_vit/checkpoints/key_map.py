"""What a key map is: :class:`Entry` (one keras_vit weight, the checkpoint key(s) it is
filled from, their shapes and how they combine) and :class:`KeyMap` (one checkpoint layout),
with the entry helpers the three layouts share.

timm (``VisionTransformer``, ``vision_transformer_hybrid``) and transformers
(``ViTForImageClassification``, ``ViTModel``) store PyTorch layouts: linear weights
(out, in), transposed here (:func:`_linear`); conv kernels OIHW, transposed to HWIO
(:func:`_conv`).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import keras
import numpy as np

from keras_vit.layers import (AttentionPooling, PatchEncoder, Patches, ResNetUnit, StdConv2D,
                              TransformerBlock)

Shape = Tuple[int, ...]


@dataclasses.dataclass
class Entry:
    """One keras_vit weight, the original key(s) it is filled from and their shapes.

    ``shapes`` holds the expected shape of each source array (checked from the archive's
    headers before anything is read); ``None`` for the position embeddings, whose grid may
    differ (they are resized).
    """

    keys: Sequence[str]
    variable: keras.Variable
    shapes: Optional[Sequence[Shape]]
    combine: Callable[[List[np.ndarray]], np.ndarray] = lambda arrays: arrays[0]
    kind: str = "plain"  # "plain", "posemb" (resized to the grid) or "head" (may be reset)
    # posemb: the (1, tokens, D) shape ``combine`` makes of the keys' shapes (None: the
    # first key's; transformers' nn.Embedding tables are (tokens, D)).
    posemb_shape: Optional[Callable[[List[Shape]], Shape]] = None



def _flatten(arrays):
    return np.concatenate([a.reshape(-1) for a in arrays])


def _shape(array_or_var) -> Shape:
    return tuple(int(d) for d in array_or_var.shape)


def _same(key, variable, kind="plain"):
    """An entry whose source array has the variable's own shape."""
    return Entry([key], variable, [_shape(variable)], kind=kind)


def layer_kind(layer: keras.Layer) -> Optional[str]:
    """What a keras_vit model's layer is to a key map: ``"patches"``, ``"position"``,
    ``"block"``, ``"encoder_norm"``, ``"pre_logits"``, ``"head"``, ``"conv_root"`` and
    ``"gn_root"`` (a hybrid's stem), ``"unit"`` (a ResNet unit), and the family's
    ``"pre_norm"``, ``"fc_norm"``, ``"attn_pool"`` (MAP), ``"head_dist"`` (DeiT
    distilled), ``"projection"`` (CLIP's image-text projection); None for a layer without
    weights of its own (rescaling, pooling, ...)."""
    if isinstance(layer, Patches):
        return "patches"
    if isinstance(layer, PatchEncoder):
        return "position"
    if isinstance(layer, TransformerBlock):
        return "block"
    if layer.name in ("encoder_norm", "pre_logits", "head", "pre_norm", "fc_norm", "head_dist",
                      "projection"):
        return layer.name
    if isinstance(layer, AttentionPooling):
        return "attn_pool"
    if isinstance(layer, StdConv2D):
        return "conv_root"
    if isinstance(layer, keras.layers.GroupNormalization):
        return "gn_root"
    if isinstance(layer, ResNetUnit):
        return "unit"
    return None


def walk(model: keras.Model, handlers: Dict[str, Callable[[Any], list]]) -> list:
    """The lists ``handlers[kind](layer)`` of the model's layers, in order, concatenated
    (:func:`layer_kind`; a kind without a handler is skipped): the one walk of
    ``model.layers`` that every key map (and the numerics check of the loaders) shares."""
    found: list = []
    for layer in model.layers:
        kind = layer_kind(layer)
        if kind in handlers:
            found += handlers[kind](layer)
    return found


# ---- PyTorch layouts (timm, transformers). ----

def _linear(key, variable, kind="plain"):
    """A Dense kernel from a PyTorch ``Linear`` weight (out, in)."""
    return Entry([key], variable, [_shape(variable)[::-1]], lambda a: a[0].T, kind)


def _conv(key, variable):
    """An HWIO conv kernel from a PyTorch OIHW weight."""
    h, w, i, o = _shape(variable)
    return Entry([key], variable, [(o, i, h, w)], lambda a: a[0].transpose(2, 3, 1, 0))



def _block_index(layer) -> int:
    return int(layer.name.rsplit("_", 1)[1])  # encoderblock_{i}



def _torch_norm(key, layer):
    return [_same(f"{key}.weight", layer.gamma), _same(f"{key}.bias", layer.beta)]


@dataclasses.dataclass(frozen=True)
class KeyMap:
    """One checkpoint layout: its key map and the keys the transfer rules treat specially.

    Args:
        source: what the file is, for messages (``"original .npz"``, ``"timm"``, ...).
        entries: the key map, model -> :class:`Entry` list.
        cls: the class token's key.
        head: the prefix (or a tuple of prefixes) of the head's keys.
        pre_logits: the prefix of the pre-logits layer's keys ("" when the layout has none).
        hints: ``{key prefix: why it has no place}`` added to "unexpected key" problems.
        ignored: prefixes of keys that are not part of the image model (a CLIP text tower,
            a pre-training mask token): left out before planning.
        resize: how position embeddings are resized to the model's grid when loading
            (:data:`keras_vit.position_embeddings.RESIZE_METHODS`: the source's own method).
    """

    source: str
    entries: Callable[[keras.Model], List[Entry]]
    cls: str
    head: Union[str, Tuple[str, ...]]
    pre_logits: str = ""
    hints: Dict[str, str] = dataclasses.field(default_factory=dict)
    ignored: Tuple[str, ...] = ()
    resize: str = "bilinear"

