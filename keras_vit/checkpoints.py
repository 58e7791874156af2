"""Loading checkpoints into keras_vit models: the original release's ``.npz`` files, and
timm and transformers ``.safetensors`` files (the Hugging Face hub's two ViT layouts).

The key maps of the project live here, one per source: every keras_vit weight and the
key(s) it comes from (:func:`checkpoint_entries` for the original, :func:`timm_entries`,
:func:`transformers_entries`). All three go through the same checks and transfer rules
(:func:`load_pretrained`, :func:`load_timm`, :func:`load_transformers`). Layer names in
keras_vit models mirror the original module names, so the original's map is short:

=============================================  ==============================================
original key                                   keras_vit weight
=============================================  ==============================================
``embedding/{kernel,bias}``                     ``embedding`` (Patches) kernel (HWIO), bias
``cls``                                         ``posembed_input.cls``
``Transformer/posembed_input/pos_embedding``    ``posembed_input.pos_embedding`` (resized)
``Transformer/encoderblock_{i}/LayerNorm_0``    ``encoderblock_{i}.ln1_{gamma,beta}``
``.../MultiHeadDotProductAttention_1/{query,    ``encoderblock_{i}.qkv_kernel`` (D, 3D): the
key,value}/kernel`` (D, H, D/H)                 three reshaped to (D, D), side by side
``.../{query,key,value}/bias`` (H, D/H)         ``encoderblock_{i}.qkv_bias`` (3D,)
``.../MultiHeadDotProductAttention_1/out``      ``encoderblock_{i}.out_{kernel,bias}``
``.../LayerNorm_2``                             ``encoderblock_{i}.ln2_{gamma,beta}``
``.../MlpBlock_3/Dense_{0,1}``                  ``encoderblock_{i}.mlp{1,2}_{kernel,bias}``
``Transformer/encoder_norm``                    ``encoder_norm`` gamma, beta
``pre_logits``, ``head``                        Dense layers of the same names
``conv_root/kernel``, ``gn_root``               hybrid stem (GroupNorm (1,1,1,C) squeezed)
``block{s}/unit{u}/{conv,gn}{1,2,3,_proj}``     ``block{s}_unit{u}`` (ResNetUnit) sublayers
=============================================  ==============================================

timm (``VisionTransformer``, ``vision_transformer_hybrid``) and transformers
(``ViTForImageClassification``, ``ViTModel``) store PyTorch layouts: linear weights
(out, in), transposed here; conv kernels OIHW, transposed to HWIO; timm's fused qkv weight
(3D, D) is the fused kernel transposed; transformers' separate query/key/value (D, D)
weights are transposed and put side by side. Their maps are in :func:`timm_entries` and
:func:`transformers_entries`.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import zipfile
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import keras
import numpy as np

from keras_vit.layers import PatchEncoder, Patches, ResNetUnit, StdConv2D, TransformerBlock
from keras_vit.position_embeddings import resize_position_embeddings
from keras_vit.sources import NUMERICS, ORIGINAL as ORIGINAL_SOURCE, source_numerics

logger = logging.getLogger("keras_vit")

POS_EMBEDDING_KEY = "Transformer/posembed_input/pos_embedding"
Shape = Tuple[int, ...]


# What a ViT can be: the most a checkpoint may declare, checked from its headers before any
# model is built or any array is read, so that a corrupt or hostile file (a stray key, a
# header claiming a huge grid, a deflate bomb) is refused before it costs memory. The largest
# published ViTs are well inside: ViT-22B is 6144 wide and 48 blocks deep with a 24576-wide
# MLP; position grids reach 64 x 64 (1024 px at patch 16); BiT's widest ResNet is R152x4.
ARCHITECTURE_BOUNDS = {
    "width": 8192, "MLP width": 65536, "depth": 256, "patch size": 128, "channels": 1024,
    "position grid side": 256, "classes": 1 << 20, "ResNet stages": 8,
    "ResNet units per stage": 64, "ResNet width": 16,
}


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or whose arrays cannot be weights."""


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not fit the model; the message lists every offending key."""


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


def _concat_qkv(arrays):
    return np.concatenate([a.reshape(a.shape[0], -1) for a in arrays], axis=1)


def _flatten(arrays):
    return np.concatenate([a.reshape(-1) for a in arrays])


def _out_kernel(arrays):
    heads, head_dim, dim = arrays[0].shape
    return arrays[0].reshape(heads * head_dim, dim)


def _shape(array_or_var) -> Shape:
    return tuple(int(d) for d in array_or_var.shape)


def _same(key, variable, kind="plain"):
    """An entry whose source array has the variable's own shape."""
    return Entry([key], variable, [_shape(variable)], kind=kind)


def _group_norm_entries(prefix, layer):
    # The original stores GroupNorm parameters as (1, 1, 1, C).
    return [Entry([f"{prefix}/scale"], layer.gamma, [(1, 1, 1) + _shape(layer.gamma)]),
            Entry([f"{prefix}/bias"], layer.beta, [(1, 1, 1) + _shape(layer.beta)])]


def _block_entries(p, layer):
    att = f"{p}/MultiHeadDotProductAttention_1"
    mlp = f"{p}/MlpBlock_3"
    dim, heads = layer.hidden_size, layer.num_heads
    per_head = (heads, dim // heads)
    qkv = ("query", "key", "value")
    return [
        _same(f"{p}/LayerNorm_0/scale", layer.ln1_gamma),
        _same(f"{p}/LayerNorm_0/bias", layer.ln1_beta),
        Entry([f"{att}/{n}/kernel" for n in qkv], layer.qkv_kernel, [(dim,) + per_head] * 3,
              _concat_qkv),
        Entry([f"{att}/{n}/bias" for n in qkv], layer.qkv_bias, [per_head] * 3, _flatten),
        Entry([f"{att}/out/kernel"], layer.out_kernel, [per_head + (dim,)], _out_kernel),
        _same(f"{att}/out/bias", layer.out_bias),
        _same(f"{p}/LayerNorm_2/scale", layer.ln2_gamma),
        _same(f"{p}/LayerNorm_2/bias", layer.ln2_beta),
        _same(f"{mlp}/Dense_0/kernel", layer.mlp1_kernel),
        _same(f"{mlp}/Dense_0/bias", layer.mlp1_bias),
        _same(f"{mlp}/Dense_1/kernel", layer.mlp2_kernel),
        _same(f"{mlp}/Dense_1/bias", layer.mlp2_bias),
    ]


def checkpoint_entries(model: keras.Model) -> List[Entry]:
    """The key map: one :class:`Entry` per weight of a keras_vit model."""
    entries: List[Entry] = []
    for layer in model.layers:
        name = layer.name
        if isinstance(layer, Patches):
            entries += [_same("embedding/kernel", layer.kernel),
                        _same("embedding/bias", layer.bias)]
        elif isinstance(layer, PatchEncoder):
            if layer.num_prefix_tokens:
                entries.append(_same("cls", layer.cls))
            entries.append(Entry([POS_EMBEDDING_KEY], layer.pos_embedding, None, kind="posemb"))
        elif isinstance(layer, TransformerBlock):
            entries += _block_entries(f"Transformer/{name}", layer)
        elif name == "encoder_norm":
            entries += [_same("Transformer/encoder_norm/scale", layer.gamma),
                        _same("Transformer/encoder_norm/bias", layer.beta)]
        elif name in ("pre_logits", "head"):
            kind = "head" if name == "head" else "plain"
            entries += [_same(f"{name}/kernel", layer.kernel, kind),
                        _same(f"{name}/bias", layer.bias, kind)]
        elif isinstance(layer, StdConv2D):  # conv_root
            entries.append(_same(f"{name}/kernel", layer.kernel))
        elif isinstance(layer, keras.layers.GroupNormalization):  # gn_root
            entries += _group_norm_entries(name, layer)
        elif isinstance(layer, ResNetUnit):
            prefix = name.replace("_", "/")  # block{s}_unit{u} -> block{s}/unit{u}
            convs = ["conv1", "conv2", "conv3"] + (["conv_proj"] if layer.use_projection else [])
            for conv in convs:
                entries.append(_same(f"{prefix}/{conv}/kernel", getattr(layer, conv).kernel))
                gn = conv.replace("conv", "gn")
                entries += _group_norm_entries(f"{prefix}/{gn}", getattr(layer, gn))
    return entries


# ---- PyTorch layouts (timm, transformers). ----

def _linear(key, variable, kind="plain"):
    """A Dense kernel from a PyTorch ``Linear`` weight (out, in)."""
    return Entry([key], variable, [_shape(variable)[::-1]], lambda a: a[0].T, kind)


def _conv(key, variable):
    """An HWIO conv kernel from a PyTorch OIHW weight."""
    h, w, i, o = _shape(variable)
    return Entry([key], variable, [(o, i, h, w)], lambda a: a[0].transpose(2, 3, 1, 0))


def _side_by_side(arrays):
    return np.concatenate([a.T for a in arrays], axis=1)


def _block_index(layer) -> int:
    return int(layer.name.rsplit("_", 1)[1])  # encoderblock_{i}


def _unit_indices(layer) -> Tuple[int, int]:
    stage, unit = layer.name.split("_")  # block{s}_unit{u}, 1-based
    return int(stage[len("block"):]) - 1, int(unit[len("unit"):]) - 1


def _torch_norm(key, layer):
    return [_same(f"{key}.weight", layer.gamma), _same(f"{key}.bias", layer.beta)]


def timm_entries(model: keras.Model) -> List[Entry]:
    """The timm key map (``timm.models.vision_transformer.VisionTransformer``, hybrids with
    the ``ResNetV2`` backbone of ``vision_transformer_hybrid``)."""
    entries: List[Entry] = []
    backbone = "patch_embed.backbone"
    for layer in model.layers:
        name = layer.name
        if isinstance(layer, Patches):
            entries += [_conv("patch_embed.proj.weight", layer.kernel),
                        _same("patch_embed.proj.bias", layer.bias)]
        elif isinstance(layer, PatchEncoder):
            if layer.num_prefix_tokens:
                entries.append(_same("cls_token", layer.cls))
            entries.append(Entry(["pos_embed"], layer.pos_embedding, None, kind="posemb"))
        elif isinstance(layer, TransformerBlock):
            p = f"blocks.{_block_index(layer)}"
            entries += [
                _same(f"{p}.norm1.weight", layer.ln1_gamma),
                _same(f"{p}.norm1.bias", layer.ln1_beta),
                _linear(f"{p}.attn.qkv.weight", layer.qkv_kernel),
                _same(f"{p}.attn.qkv.bias", layer.qkv_bias),
                _linear(f"{p}.attn.proj.weight", layer.out_kernel),
                _same(f"{p}.attn.proj.bias", layer.out_bias),
                _same(f"{p}.norm2.weight", layer.ln2_gamma),
                _same(f"{p}.norm2.bias", layer.ln2_beta),
                _linear(f"{p}.mlp.fc1.weight", layer.mlp1_kernel),
                _same(f"{p}.mlp.fc1.bias", layer.mlp1_bias),
                _linear(f"{p}.mlp.fc2.weight", layer.mlp2_kernel),
                _same(f"{p}.mlp.fc2.bias", layer.mlp2_bias)]
        elif name == "encoder_norm":
            entries += _torch_norm("norm", layer)
        elif name == "pre_logits":  # timm < 0.9: Sequential(fc=Linear(D, R), act=Tanh)
            entries += [_linear("pre_logits.fc.weight", layer.kernel),
                        _same("pre_logits.fc.bias", layer.bias)]
        elif name == "head":
            entries += [_linear("head.weight", layer.kernel, "head"),
                        _same("head.bias", layer.bias, "head")]
        elif isinstance(layer, StdConv2D):  # conv_root
            entries.append(_conv(f"{backbone}.stem.conv.weight", layer.kernel))
        elif isinstance(layer, keras.layers.GroupNormalization):  # gn_root
            entries += _torch_norm(f"{backbone}.stem.norm", layer)
        elif isinstance(layer, ResNetUnit):
            stage, unit = _unit_indices(layer)
            p = f"{backbone}.stages.{stage}.blocks.{unit}"
            for i in (1, 2, 3):
                entries.append(_conv(f"{p}.conv{i}.weight", getattr(layer, f"conv{i}").kernel))
                entries += _torch_norm(f"{p}.norm{i}", getattr(layer, f"gn{i}"))
            if layer.use_projection:
                entries.append(_conv(f"{p}.downsample.conv.weight", layer.conv_proj.kernel))
                entries += _torch_norm(f"{p}.downsample.norm", layer.gn_proj)
    return entries


def transformers_entries(model: keras.Model, prefix: str = "vit.") -> List[Entry]:
    """The transformers key map (``ViTForImageClassification``; ``ViTModel`` with
    ``prefix=""``, whose ``pooler`` is the pre-logits layer)."""
    entries: List[Entry] = []
    emb = f"{prefix}embeddings"
    for layer in model.layers:
        name = layer.name
        if isinstance(layer, Patches):
            entries += [_conv(f"{emb}.patch_embeddings.projection.weight", layer.kernel),
                        _same(f"{emb}.patch_embeddings.projection.bias", layer.bias)]
        elif isinstance(layer, PatchEncoder):
            if layer.num_prefix_tokens:
                entries.append(_same(f"{emb}.cls_token", layer.cls))
            entries.append(Entry([f"{emb}.position_embeddings"], layer.pos_embedding, None,
                                 kind="posemb"))
        elif isinstance(layer, TransformerBlock):
            p = f"{prefix}encoder.layer.{_block_index(layer)}"
            att = f"{p}.attention.attention"
            dim = layer.hidden_size
            qkv = ("query", "key", "value")
            entries += [
                _same(f"{p}.layernorm_before.weight", layer.ln1_gamma),
                _same(f"{p}.layernorm_before.bias", layer.ln1_beta),
                Entry([f"{att}.{n}.weight" for n in qkv], layer.qkv_kernel, [(dim, dim)] * 3,
                      _side_by_side),
                Entry([f"{att}.{n}.bias" for n in qkv], layer.qkv_bias, [(dim,)] * 3,
                      _flatten),
                _linear(f"{p}.attention.output.dense.weight", layer.out_kernel),
                _same(f"{p}.attention.output.dense.bias", layer.out_bias),
                _same(f"{p}.layernorm_after.weight", layer.ln2_gamma),
                _same(f"{p}.layernorm_after.bias", layer.ln2_beta),
                _linear(f"{p}.intermediate.dense.weight", layer.mlp1_kernel),
                _same(f"{p}.intermediate.dense.bias", layer.mlp1_bias),
                _linear(f"{p}.output.dense.weight", layer.mlp2_kernel),
                _same(f"{p}.output.dense.bias", layer.mlp2_bias)]
        elif name == "encoder_norm":
            entries += _torch_norm(f"{prefix}layernorm", layer)
        elif name == "pre_logits":
            entries += [_linear("pooler.dense.weight", layer.kernel),
                        _same("pooler.dense.bias", layer.bias)]
        elif name == "head":
            entries += [_linear("classifier.weight", layer.kernel, "head"),
                        _same("classifier.bias", layer.bias, "head")]
    return entries


@dataclasses.dataclass(frozen=True)
class KeyMap:
    """One checkpoint layout: its key map and the keys the transfer rules treat specially.

    Args:
        source: what the file is, for messages (``"original .npz"``, ``"timm"``, ...).
        entries: the key map, model -> :class:`Entry` list.
        cls: the class token's key.
        head: the prefix of the head's keys.
        pre_logits: the prefix of the pre-logits layer's keys ("" when the layout has none).
        hints: ``{key prefix: why it has no place}`` added to "unexpected key" problems.
    """

    source: str
    entries: Callable[[keras.Model], List[Entry]]
    cls: str
    head: str
    pre_logits: str = ""
    hints: Dict[str, str] = dataclasses.field(default_factory=dict)


ORIGINAL = KeyMap("original .npz", checkpoint_entries, "cls", "head/", "pre_logits/")
TIMM = KeyMap("timm", timm_entries, "cls_token", "head.", "pre_logits.", hints={
    "fc_norm.": "timm's fc_norm (LayerNorm after average pooling); keras_vit normalises "
                "before pooling, as the original: timm models with fc_norm=False load",
    "reg_token": "register tokens are not part of keras_vit's ViT",
    "norm_pre.": "a LayerNorm before the blocks (CLIP-style) is not part of keras_vit's ViT"})


def transformers_prefix(index) -> str:
    """``"vit."`` for ``ViTForImageClassification`` keys, ``""`` for a bare ``ViTModel``'s."""
    return "vit." if any(key.startswith("vit.") for key in index) else ""


def transformers_key_map(index) -> KeyMap:
    """The transformers layout of a checkpoint (:func:`transformers_prefix`)."""
    prefix = transformers_prefix(index)
    return KeyMap("transformers", lambda model: transformers_entries(model, prefix),
                  f"{prefix}embeddings.cls_token", "classifier.", "pooler.")


# ---- Reading an .npz archive: headers first, then only the arrays that load. ----

@dataclasses.dataclass(frozen=True)
class ArrayInfo:
    """What an ``.npz`` member's header declares."""

    shape: Shape
    dtype: np.dtype


def _read_header(member, size: int, key: str, path: str) -> ArrayInfo:
    version = np.lib.format.read_magic(member)
    readers = {(1, 0): np.lib.format.read_array_header_1_0,
               (2, 0): np.lib.format.read_array_header_2_0}
    if version not in readers:
        raise CheckpointError(f"{path}: array {key!r} has .npy format version {version}, "
                              "which keras_vit does not read")
    shape, _, dtype = readers[version](member)
    shape = tuple(int(d) for d in shape)
    if dtype.hasobject:
        raise CheckpointError(f"{path} is not a readable .npz checkpoint: array {key!r} holds "
                              "Python objects (pickles are refused)")
    needed = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    available = size - member.tell()
    if available < needed:
        raise CheckpointError(
            f"{path} is not a readable .npz checkpoint (corrupt or truncated?): array {key!r} "
            f"declares shape {shape} ({needed:,} bytes) but holds {available:,} bytes")
    return ArrayInfo(shape, dtype)


def read_npz_index(path) -> Dict[str, ArrayInfo]:
    """Names, shapes and dtypes of an ``.npz`` checkpoint's arrays, from the headers only.

    No array data is read, so a checkpoint can be checked against a model before its
    (possibly large) arrays cost any memory.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    index = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                key = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                with archive.open(info) as member:
                    index[key] = _read_header(member, info.file_size, key, path)
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as error:
        raise CheckpointError(
            f"{path} is not a readable .npz checkpoint (corrupt or truncated?): "
            f"{type(error).__name__}: {error}") from None
    return index


def read_npz_arrays(path, keys: Sequence[str]) -> Dict[str, np.ndarray]:
    """The arrays ``keys`` of an ``.npz`` checkpoint (no pickles), with clear errors."""
    path = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in keys}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as error:
        raise CheckpointError(
            f"{path} is not a readable .npz checkpoint (corrupt or truncated?): "
            f"{type(error).__name__}: {error}") from None


# ---- Reading a .safetensors file (numpy API, no torch): header first, then the arrays. ----

_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16,
                       "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
                       "U8": np.uint8, "BOOL": np.bool_}


def _safe_open(path: str):
    try:
        from safetensors import safe_open
    except ImportError:
        raise CheckpointError(f"reading {path} needs the safetensors package: pip install "
                              "safetensors (or keras-vit[hub])") from None
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return safe_open(path, framework="np")
    except Exception as error:  # safetensors raises its own SafetensorError, or OSError
        raise CheckpointError(f"{path} is not a readable .safetensors file (corrupt or "
                              f"truncated?): {type(error).__name__}: {error}") from None


def read_safetensors_index(path) -> Dict[str, ArrayInfo]:
    """Names, shapes and dtypes of a ``.safetensors`` file's tensors, from its header only."""
    path = os.fspath(path)
    index = {}
    with _safe_open(path) as tensors:
        for key in tensors.keys():
            info = tensors.get_slice(key)
            dtype = info.get_dtype()
            if dtype not in _SAFETENSORS_DTYPES:
                raise CheckpointError(
                    f"{path}: tensor {key!r} is {dtype}, which numpy cannot hold (keras_vit "
                    "reads safetensors without torch); save the checkpoint as float32 or "
                    "float16")
            index[key] = ArrayInfo(tuple(int(d) for d in info.get_shape()),
                                   np.dtype(_SAFETENSORS_DTYPES[dtype]))
    return index


def read_safetensors_arrays(path, keys: Sequence[str]) -> Dict[str, np.ndarray]:
    """The tensors ``keys`` of a ``.safetensors`` file as numpy arrays."""
    path = os.fspath(path)
    try:
        with _safe_open(path) as tensors:
            return {key: tensors.get_tensor(key) for key in keys}
    except CheckpointError:
        raise
    except Exception as error:
        raise CheckpointError(f"{path} is not a readable .safetensors file (corrupt or "
                              f"truncated?): {type(error).__name__}: {error}") from None


def check_dtypes(index: Dict[str, ArrayInfo], path: str) -> None:
    """Weights are floating-point arrays: strings, complex, bool, void and integer arrays
    (an integer tensor where a float weight belongs is a broken or foreign file) are not."""
    bad = [f"{key!r} ({info.dtype})" for key, info in sorted(index.items())
           if info.dtype.kind != "f"]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} array(s) are not floating-point (weights "
                              f"are float16, float32 or float64); no weight was changed: "
                              f"{', '.join(bad)}")


def check_bounds(path: str, values: Dict[str, int]) -> None:
    """Raises for a value read from a checkpoint (``{what: value}``, ``what`` a key of
    :data:`ARCHITECTURE_BOUNDS`) that no ViT has."""
    for what, value in values.items():
        bound = ARCHITECTURE_BOUNDS[what]
        if not 1 <= value <= bound:
            raise CheckpointError(
                f"{path}: {what} {value} is not what a ViT can be (1 to {bound:,}, "
                "keras_vit.checkpoints.ARCHITECTURE_BOUNDS): a corrupt or hostile file?")


def check_position_grid(path: str, key: str, tokens: int, prefix: int) -> None:
    """Raises for position embeddings of more grid tokens than the bound's square grid
    (checked from the header, before they are read or a model is built for them)."""
    side = ARCHITECTURE_BOUNDS["position grid side"]
    if tokens - prefix > side * side:
        raise CheckpointError(
            f"{path}: {key!r} declares {tokens - prefix:,} grid tokens, more than a ViT can "
            f"have (a grid of at most {side} x {side}, keras_vit.checkpoints."
            "ARCHITECTURE_BOUNDS): a corrupt or hostile file?")


def check_finite(path: str, named_arrays, what: str = "array(s)", detail: str = "",
                 consequence: str = "no weight was changed") -> None:
    """The finiteness promise of every loader: raises naming each ``(name, array)`` that
    holds NaN or infinite values."""
    bad = sorted(name for name, array in named_arrays if not np.isfinite(array).all())
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} {what} hold NaN or infinite values{detail}; "
                              f"{consequence}: {', '.join(map(repr, bad))}")


# ---- Matching a checkpoint to a model. ----

def _strip_leading_ones(shape: Shape) -> Shape:
    while shape and shape[0] == 1:
        shape = shape[1:]
    return shape


def _fits(found: Shape, expected: Shape) -> bool:
    """Equal shapes, up to leading 1s (GroupNorm parameters are stored as (1, 1, 1, C))."""
    return found == expected or _strip_leading_ones(found) == _strip_leading_ones(expected)


@dataclasses.dataclass
class _Plan:
    """What loading will do, decided from the archive's headers alone."""

    load: List[Entry] = dataclasses.field(default_factory=list)
    reset: List[Entry] = dataclasses.field(default_factory=list)  # the head, set to zeros
    problems: List[str] = dataclasses.field(default_factory=list)
    report: Dict[str, list] = dataclasses.field(default_factory=lambda: {
        "loaded": [], "dropped": [], "reinitialized": [], "resized": []})
    head_reset_because: str = ""  # why the model's head is set to zeros
    head_dropped: bool = False
    head_keys: List[str] = dataclasses.field(default_factory=list)


def _posemb_problem(found: Shape, encoder: PatchEncoder, has_cls: bool) -> Optional[str]:
    """Why a checkpoint's position embeddings cannot be fitted to ``encoder``, or None."""
    prefix = 1 if has_cls else 0
    if len(found) != 3 or found[0] != 1 or found[2] != encoder.hidden_size:
        return f"expected shape (1, tokens, {encoder.hidden_size}), found {found}"
    if encoder.num_prefix_tokens > prefix:
        return "the model has a class token but the checkpoint has none"
    grid = found[1] - prefix
    side = int(np.sqrt(grid))
    if side * side != grid:
        return f"{grid} grid tokens in shape {found} are not a square grid"
    return None


def _plan(model: keras.Model, index: Dict[str, ArrayInfo], key_map: KeyMap = ORIGINAL,
          path: str = "") -> _Plan:
    plan = _Plan()
    encoder = model.get_layer("posembed_input")
    layer_names = {layer.name for layer in model.layers}
    has_cls = key_map.cls in index
    # Pre-logits the model does not have: the checkpoint's head was trained on top of them,
    # so it cannot be kept on the raw encoder output (the original re-initialises it too).
    has_pre_logits = bool(key_map.pre_logits) and any(k.startswith(key_map.pre_logits)
                                                      for k in index)
    pre_logits_dropped = has_pre_logits and "pre_logits" not in layer_names
    # A checkpoint without any head key is a feature extractor's (timm num_classes=0, e.g.
    # the *.orig_in21k weights; transformers' ViTModel): the model's head starts from zeros.
    headless = not any(k.startswith(key_map.head) for k in index)
    used = set()
    for entry in key_map.entries(model):
        if entry.kind == "head" and headless:
            plan.head_reset_because = "the checkpoint has no head (a feature extractor's)"
            plan.report["reinitialized"].append(entry.keys[0])
            plan.reset.append(entry)
            continue
        missing = [k for k in entry.keys if k not in index]
        why = (": the checkpoint has no pre-logits layer; build the model without "
               "representation_size" if key_map.pre_logits and not has_pre_logits
               and entry.keys[0].startswith(key_map.pre_logits) else "")
        for key in missing:
            plan.problems.append(f"missing key {key!r} (model expects a value for "
                                 f"{entry.variable.path}, shape {_shape(entry.variable)}){why}")
        if missing:
            continue
        used.update(entry.keys)
        found = [index[k].shape for k in entry.keys]
        if entry.kind == "head":
            fits = all(_fits(f, e) for f, e in zip(found, entry.shapes))
            if pre_logits_dropped or not fits:
                plan.head_reset_because = "the checkpoint's head is not kept because " + (
                    "it was trained on pre-logits features this model does not have (pass "
                    "representation_size to keep them)" if pre_logits_dropped else
                    f"it does not fit {model.get_layer('head').units} classes")
                plan.report["reinitialized"].append(entry.keys[0])
                plan.reset.append(entry)
                continue
        elif entry.kind == "posemb":
            if len(found[0]) == 3:
                check_position_grid(path, entry.keys[0], found[0][1], int(has_cls))
            problem = _posemb_problem(found[0], encoder, has_cls)
            if problem:
                plan.problems.append(f"{entry.keys[0]}: {problem}")
                continue
        else:
            wrong = [f"{k}: expected shape {e}, found {f}"
                     for k, f, e in zip(entry.keys, found, entry.shapes) if not _fits(f, e)]
            if wrong:
                plan.problems += wrong
                continue
        plan.load.append(entry)
    for key in sorted(set(index) - used):
        head_of_headless = key.startswith(key_map.head) and "head" not in layer_names
        if ((key_map.pre_logits and key.startswith(key_map.pre_logits)) or head_of_headless
                or (key == key_map.cls and not encoder.num_prefix_tokens)):
            plan.report["dropped"].append(key)
            plan.head_dropped |= head_of_headless
            if head_of_headless:
                plan.head_keys.append(key)
        else:
            hint = next((f": {why}" for start, why in key_map.hints.items()
                         if key.startswith(start)), "")
            plan.problems.append(f"unexpected key {key!r} (shape {index[key].shape}) has no "
                                 f"place in this model{hint}")
    return plan


def _fit_position_embeddings(value, encoder, has_cls, report, key=POS_EMBEDDING_KEY):
    """Drops the class token's embedding if the model has none, then resizes the grid."""
    prefix = 1 if has_cls else 0
    if prefix and not encoder.num_prefix_tokens:
        value, prefix = value[:, 1:], 0
    side = int(np.sqrt(value.shape[1] - prefix))
    if (side, side) != tuple(encoder.grid_size):
        report["resized"].append(f"{key} grid {(side, side)} -> "
                                 f"{tuple(encoder.grid_size)}")
        value = resize_position_embeddings(value, encoder.grid_size, prefix,
                                           old_grid=(side, side))
    return value


def _values(plan: _Plan, arrays, encoder, has_cls, path):
    """(variable, value in the variable's dtype) for every entry to load; nothing is
    assigned here. Every array is checked finite *after* the cast to the variable's dtype
    (a finite float64 1e300 is infinite as float32)."""
    updates, cast_arrays = [], []
    for entry in plan.load:
        dtype = np.dtype(keras.backend.standardize_dtype(entry.variable.dtype))
        with np.errstate(over="ignore"):
            cast = [np.asarray(arrays[k], dtype) for k in entry.keys]
        cast_arrays += zip(entry.keys, cast)
        value = entry.combine(cast)
        if entry.kind == "posemb":
            value = _fit_position_embeddings(value, encoder, has_cls, plan.report,
                                             entry.keys[0])
        updates.append((entry.variable,
                        np.asarray(value, dtype).reshape(_shape(entry.variable))))
        plan.report["loaded"].extend(entry.keys)
    check_finite(path, cast_arrays, detail=" (as the model's floats)")
    return updates


def _log(plan: _Plan, model: keras.Model) -> None:
    report = plan.report
    if plan.head_dropped:
        logger.warning("keras_vit: the checkpoint's head is not loaded: model %r has no head "
                       "(include_top=False)", model.name)
    others = [k for k in report["dropped"] if k not in plan.head_keys]
    if others:
        logger.warning("keras_vit: not loaded (no place in this model, as when fine-tuning): "
                       "%s", ", ".join(others))
    if report["reinitialized"]:
        logger.warning("keras_vit: %s; the head is zero-initialised for fine-tuning",
                       plan.head_reset_because)
    if report["resized"]:
        logger.warning("keras_vit: position embeddings resized: %s", "; ".join(report["resized"]))


def load_pretrained(model: keras.Model, path, *, verbose: bool = True) -> Dict[str, list]:
    """Loads an original ViT ``.npz`` checkpoint into a built keras_vit model.

    Follows the paper's transfer recipe. ``pre_logits`` is dropped when the model has no
    representation layer, and then the checkpoint's head (trained on the pre-logits
    features) is not kept either. A head of another shape (class count) is not loaded. In
    both cases the model's head is set to zeros (a fresh zero-initialised D x K layer, paper
    section 3.1); so is it when the checkpoint has no head key at all (a feature extractor's,
    e.g. timm's ``num_classes=0`` or transformers' ``ViTModel``). A model without a head
    (``include_top=False``) ignores the checkpoint's head. Position embeddings are resized to
    the model's grid with aligned-corners bilinear interpolation (section 3.2). GroupNorm
    parameters stored as (1, 1, 1, C) are squeezed. Each of these is logged (logger
    ``"keras_vit"``).

    Names and shapes are checked from the archive's headers first; only the arrays that load
    are read. Anything else that does not fit raises :class:`CheckpointMismatchError`
    listing every offending key; arrays that are not floating-point, or hold NaN or
    infinite values once cast to the model's dtype, raise :class:`CheckpointError` naming
    them. On any error no weight of the model has been changed.

    Args:
        model: a keras_vit model (built by :func:`keras_vit.ViT` or a named builder).
        path: the ``.npz`` file (a path or path-like).
        verbose: log what was dropped, re-initialised or resized.

    Returns:
        A report ``{"loaded": [...], "dropped": [...], "reinitialized": [...],
        "resized": [...]}`` of original keys.
    """
    path = os.fspath(path)
    index = read_npz_index(path)
    return _load(model, path, index, lambda keys: read_npz_arrays(path, keys), ORIGINAL,
                 verbose)


def _model_numerics(model: keras.Model) -> Dict[str, set]:
    """The values of each :data:`keras_vit.sources.NUMERICS` option in the model's layers
    (the ResNet options only in hybrids)."""
    found: Dict[str, set] = {option: set() for option in NUMERICS[ORIGINAL_SOURCE]}
    for layer in model.layers:
        if isinstance(layer, TransformerBlock):
            found["gelu"].add(layer.gelu)
            found["layer_norm_epsilon"].add(layer.layer_norm_epsilon)
        elif isinstance(layer, ResNetUnit):
            convs = [layer.conv1, layer.conv2, layer.conv3]
            gns = [layer.gn1, layer.gn2, layer.gn3]
            if layer.use_projection:
                convs.append(layer.conv_proj)
                gns.append(layer.gn_proj)
            found["std_conv_epsilon"].update(conv.epsilon for conv in convs)
            found["std_conv_epsilon_in_sqrt"].update(conv.epsilon_in_sqrt for conv in convs)
            found["group_norm_epsilon"].update(gn.epsilon for gn in gns)
        elif isinstance(layer, StdConv2D):  # conv_root
            found["std_conv_epsilon"].add(layer.epsilon)
            found["std_conv_epsilon_in_sqrt"].add(layer.epsilon_in_sqrt)
        elif isinstance(layer, keras.layers.GroupNormalization):  # gn_root
            found["group_norm_epsilon"].add(layer.epsilon)
    return found


def _warn_other_numerics(model: keras.Model, numerics: dict, source: str) -> None:
    """Logs where the model's layers compute otherwise than the checkpoint's source: GELU
    and LayerNorm epsilon of the blocks; GroupNorm and weight-standardisation epsilons of a
    hybrid's ResNet."""
    for option, values in _model_numerics(model).items():
        found = sorted(values - {numerics[option]})
        if found:
            logger.warning("keras_vit: %s computes with %s=%r, this model has %s=%r: its "
                           "outputs will differ from %s's (build it with weights=, or pass "
                           "%s=%r)", source, option, numerics[option], option, found[0],
                           source, option, numerics[option])


def _load(model, path, index, read_arrays, key_map: KeyMap, verbose: bool) -> Dict[str, list]:
    """The checks and transfer rules shared by every source: plan from the headers, read
    the arrays that load, check them, then assign (nothing before every check passed)."""
    check_dtypes(index, path)
    plan = _plan(model, index, key_map, path)
    if plan.problems:
        raise CheckpointMismatchError(
            f"{key_map.source} checkpoint {path} does not fit model {model.name!r} "
            f"({len(plan.problems)} problem(s)):\n  " + "\n  ".join(plan.problems))
    arrays = read_arrays([k for entry in plan.load for k in entry.keys])
    updates = _values(plan, arrays, model.get_layer("posembed_input"), key_map.cls in index,
                      path)
    updates += [(entry.variable, np.zeros(_shape(entry.variable), np.float32))
                for entry in plan.reset]
    for variable, value in updates:
        variable.assign(value)
    if verbose:
        _log(plan, model)
    return plan.report


def load_timm(model: keras.Model, path, *, verbose: bool = True) -> Dict[str, list]:
    """Loads a timm ViT ``.safetensors`` checkpoint into a built keras_vit model.

    The same checks, guarantees and transfer rules as :func:`load_pretrained` (all keys,
    shapes, dtypes and values checked before any weight changes; the head dropped for
    ``include_top=False``, re-initialised for another class count or a checkpoint without
    head; position embeddings resized), with timm's key map (:func:`timm_entries`; old
    timm's ``pre_logits.fc`` fills a model built with ``representation_size``). For the model to
    compute what timm computes, build it with timm's numerics (``keras_vit.ViT(weights=path)``
    and the named builders do; see :mod:`keras_vit.sources`); a model whose GELU, LayerNorm
    epsilon or (hybrids) GroupNorm / weight-standardisation epsilon differs is loaded all the
    same, with a warning.

    Args:
        model: a keras_vit model.
        path: the ``.safetensors`` file of a timm ``VisionTransformer`` (plain or hybrid).
        verbose: log what was dropped, re-initialised or resized.

    Returns:
        The report of :func:`load_pretrained`, with timm's keys.
    """
    path = os.fspath(path)
    index = read_safetensors_index(path)
    if any(key.startswith(("vit.embeddings.", "embeddings.patch_embeddings.")) for key in index):
        raise CheckpointError(f"{path} is a transformers checkpoint: pass its model directory "
                              "(config.json + model.safetensors) instead")
    report = _load(model, path, index, lambda keys: read_safetensors_arrays(path, keys), TIMM,
                   verbose)
    _warn_other_numerics(model, source_numerics(path), "timm")
    return report


def transformers_weights_file(directory) -> str:
    """The ``model.safetensors`` of a transformers model directory, or a clear error."""
    directory = os.fspath(directory)
    path = os.path.join(directory, "model.safetensors")
    if os.path.exists(path):
        return path
    pickled = [name for name in ("pytorch_model.bin", "model.pt", "model.pth")
               if os.path.exists(os.path.join(directory, name))]
    if pickled:
        from keras_vit.sources import refuse_pickle
        refuse_pickle(os.path.join(directory, pickled[0]))
    if os.path.exists(os.path.join(directory, "model.safetensors.index.json")):
        raise CheckpointError(f"{directory}: sharded safetensors checkpoints are not supported; "
                              "save the model as one model.safetensors")
    raise CheckpointError(f"{directory} has no model.safetensors")


def load_transformers(model: keras.Model, directory, *, verbose: bool = True) -> Dict[str, list]:
    """Loads a transformers ViT model directory (``config.json`` + ``model.safetensors``,
    e.g. ``google/vit-base-patch16-224``) into a built keras_vit model.

    As :func:`load_timm`, with transformers' key map (:func:`transformers_entries`):
    ``ViTForImageClassification`` (keys ``vit.*`` and ``classifier.*``) and ``ViTModel``
    (its ``pooler`` is the pre-logits layer, dropped when the model has none). See
    :func:`keras_vit.from_transformers` for a model built from the ``config.json``.

    Args:
        model: a keras_vit model.
        directory: the transformers model directory.
        verbose: log what was dropped, re-initialised or resized.

    Returns:
        The report of :func:`load_pretrained`, with transformers' keys.
    """
    from keras_vit.sources import check_pooler_act, read_transformers_config
    config = read_transformers_config(directory)
    path = transformers_weights_file(directory)
    index = read_safetensors_index(path)
    if any(layer.name == "pre_logits" for layer in model.layers):
        check_pooler_act(config, directory, index)
    report = _load(model, path, index, lambda keys: read_safetensors_arrays(path, keys),
                   transformers_key_map(index), verbose)
    _warn_other_numerics(model, source_numerics(directory), "transformers")
    return report
