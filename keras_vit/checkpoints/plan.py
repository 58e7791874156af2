"""The load plan: what loading a checkpoint into a model will do (load, reset the head, drop,
or refuse with every problem listed), decided from the headers alone."""
from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Set

import keras
import numpy as np

from keras_vit.checkpoints.checks import check_position_grid
from keras_vit.checkpoints.key_map import Entry, KeyMap, Shape, _shape
from keras_vit.checkpoints.original_keys import ORIGINAL
from keras_vit.checkpoints.readers import ArrayInfo
from keras_vit.layers import PatchEncoder


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


def checkpoint_position_prefix(encoder: PatchEncoder, has_cls: bool) -> int:
    """The prefix entries a checkpoint's position embeddings hold: the model's own for the
    family's layouts (distillation or register tokens, embeddings without the prefix);
    otherwise one where the checkpoint has a class token (a class-token checkpoint also
    loads into a model without one, its embedding dropped)."""
    if encoder.distillation_token or encoder.num_register_tokens or not encoder.embed_prefix:
        return encoder.position_prefix_tokens
    return int(has_cls)


def _posemb_problem(found: Shape, encoder: PatchEncoder, has_cls: bool) -> Optional[str]:
    """Why a checkpoint's position embeddings cannot be fitted to ``encoder``, or None."""
    prefix = checkpoint_position_prefix(encoder, has_cls)
    if len(found) != 3 or found[0] != 1 or found[2] != encoder.hidden_size:
        return f"expected shape (1, tokens, {encoder.hidden_size}), found {found}"
    if encoder.position_prefix_tokens > prefix:
        return "the model has a class token but the checkpoint has none"
    grid = found[1] - prefix
    if grid < 1:
        return f"{found[1]} tokens in shape {found} leave no grid after {prefix} prefix token(s)"
    side = int(np.sqrt(grid))
    if side * side != grid:
        return f"{grid} grid tokens in shape {found} are not a square grid"
    return None


@dataclasses.dataclass(frozen=True)
class _Facts:
    """What the plan needs to know of the model and of the checkpoint's keys."""

    encoder: PatchEncoder
    layer_names: Set[str]
    has_cls: bool
    has_pre_logits: bool
    pre_logits_dropped: bool
    headless: bool


def _facts(model: keras.Model, index: Dict[str, ArrayInfo], key_map: KeyMap) -> _Facts:
    layer_names = {layer.name for layer in model.layers}
    # Pre-logits the model does not have: the checkpoint's head was trained on top of them,
    # so it cannot be kept on the raw encoder output (the original re-initialises it too).
    has_pre_logits = bool(key_map.pre_logits) and any(k.startswith(key_map.pre_logits)
                                                      for k in index)
    pre_logits_dropped = has_pre_logits and "pre_logits" not in layer_names
    # A checkpoint without any head key is a feature extractor's (timm num_classes=0, e.g.
    # the *.orig_in21k weights; transformers' ViTModel): the model's head starts from zeros.
    headless = not any(k.startswith(key_map.head) for k in index)
    return _Facts(model.get_layer("posembed_input"), layer_names, key_map.cls in index,
                  has_pre_logits, pre_logits_dropped, headless)


def _plan(model: keras.Model, index: Dict[str, ArrayInfo], key_map: KeyMap = ORIGINAL,
          path: str = "") -> _Plan:
    plan = _Plan()
    facts = _facts(model, index, key_map)
    used = set()
    for entry in key_map.entries(model):
        if entry.kind == "head" and facts.headless:
            _reset_head(plan, entry, "the checkpoint has no head (a feature extractor's)")
            continue
        if _missing(plan, entry, index, key_map, facts):
            continue
        used.update(entry.keys)
        _place(plan, entry, [index[k].shape for k in entry.keys], model, facts, path)
    _unused(plan, sorted(set(index) - used), index, key_map, facts)
    return plan


def _reset_head(plan: _Plan, entry: Entry, because: str) -> None:
    plan.head_reset_because = because
    plan.report["reinitialized"].append(entry.keys[0])
    plan.reset.append(entry)


def _missing(plan: _Plan, entry: Entry, index, key_map: KeyMap, facts: _Facts) -> bool:
    """Adds a problem for each of the entry's keys the checkpoint lacks; True if any."""
    missing = [k for k in entry.keys if k not in index]
    why = (": the checkpoint has no pre-logits layer; build the model without "
           "representation_size" if key_map.pre_logits and not facts.has_pre_logits
           and entry.keys[0].startswith(key_map.pre_logits) else "")
    for key in missing:
        plan.problems.append(f"missing key {key!r} (model expects a value for "
                             f"{entry.variable.path}, shape {_shape(entry.variable)}){why}")
    return bool(missing)


def _place(plan: _Plan, entry: Entry, found: List[Shape], model: keras.Model, facts: _Facts,
           path: str) -> None:
    """Loads, resets (the head) or refuses (a problem) an entry whose keys are all there."""
    if entry.kind == "head":
        fits = all(_fits(f, e) for f, e in zip(found, entry.shapes))
        if facts.pre_logits_dropped or not fits:
            _reset_head(plan, entry, "the checkpoint's head is not kept because " + (
                "it was trained on pre-logits features this model does not have (pass "
                "representation_size to keep them)" if facts.pre_logits_dropped else
                f"it does not fit {model.get_layer('head').units} classes"))
            return
    elif entry.kind == "posemb":
        shape = entry.posemb_shape(found) if entry.posemb_shape else found[0]
        if len(shape) == 3:
            check_position_grid(path, entry.keys[0], shape[1],
                                checkpoint_position_prefix(facts.encoder, facts.has_cls))
        problem = _posemb_problem(shape, facts.encoder, facts.has_cls)
        if problem:
            plan.problems.append(f"{entry.keys[0]}: {problem}")
            return
    else:
        wrong = [f"{k}: expected shape {e}, found {f}"
                 for k, f, e in zip(entry.keys, found, entry.shapes) if not _fits(f, e)]
        if wrong:
            plan.problems += wrong
            return
    plan.load.append(entry)


def _unused(plan: _Plan, keys: List[str], index, key_map: KeyMap, facts: _Facts) -> None:
    """The checkpoint's keys no entry took: dropped (pre-logits, a head the model lacks, a
    class token the model has not) or a problem each."""
    for key in keys:
        head_of_headless = key.startswith(key_map.head) and "head" not in facts.layer_names
        if ((key_map.pre_logits and key.startswith(key_map.pre_logits)) or head_of_headless
                or (key == key_map.cls and not facts.encoder.class_token)):
            plan.report["dropped"].append(key)
            plan.head_dropped |= head_of_headless
            if head_of_headless:
                plan.head_keys.append(key)
        else:
            hint = next((f": {why}" for start, why in key_map.hints.items()
                         if key.startswith(start)), "")
            plan.problems.append(f"unexpected key {key!r} (shape {index[key].shape}) has no "
                                 f"place in this model{hint}")
