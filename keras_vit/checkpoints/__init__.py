"""Loading checkpoints into keras_vit models: the original release's ``.npz`` files, and
timm and transformers ``.safetensors`` files (the Hugging Face hub's two ViT layouts).

Every keras_vit weight and the key(s) it comes from is a key map, one per layout; all three
go through the same checks and transfer rules. Which file holds what:

=======================  =========================================================================
file                     what it holds
=======================  =========================================================================
``key_map.py``           :class:`Entry` (a weight and its keys), :class:`KeyMap` (a layout), the
                         shared entry helpers (PyTorch transposes)
``original_keys.py``     the original ``.npz`` key map (:func:`checkpoint_entries`, the key table)
``timm_keys.py``         timm's key map (:func:`timm_entries`, :data:`TIMM`)
``transformers_keys.py`` transformers' key maps, one :class:`Layout` per ``model_type`` (ViT, DeiT,
                         DINOv2, CLIP and SigLIP towers; :func:`transformers_entries`), the
                         weights file of a model directory (:func:`transformers_weights_file`)
``readers.py``           the header-first safe readers of ``.npz`` and ``.safetensors`` files
                         (names, shapes, dtypes first; a size a member does not hold is refused)
``checks.py``            :data:`ARCHITECTURE_BOUNDS`, dtype and finiteness checks
``plan.py``              the load plan: what loading will do, decided from the headers alone
``loaders.py``           :func:`load_pretrained`, :func:`load_timm`, :func:`load_transformers`
=======================  =========================================================================

The errors (:class:`CheckpointError`, :class:`CheckpointMismatchError`) live in
:mod:`keras_vit.errors`, which :mod:`keras_vit.sources` imports too.
"""
from keras_vit.checkpoints.checks import (ARCHITECTURE_BOUNDS, check_bounds, check_dtypes,
                                          check_finite, check_position_grid)
from keras_vit.checkpoints.key_map import Entry, KeyMap
from keras_vit.checkpoints.loaders import load_pretrained, load_timm, load_transformers
from keras_vit.checkpoints.original_keys import ORIGINAL, POS_EMBEDDING_KEY, checkpoint_entries
from keras_vit.checkpoints.readers import (ArrayInfo, read_npz_arrays, read_npz_index,
                                           read_safetensors_arrays, read_safetensors_index)
from keras_vit.checkpoints.timm_keys import TIMM, timm_entries
from keras_vit.checkpoints.transformers_keys import (transformers_entries, transformers_key_map,
                                                     transformers_prefix,
                                                     transformers_weights_file)
from keras_vit.errors import CheckpointError, CheckpointMismatchError

__all__ = [
    "ARCHITECTURE_BOUNDS", "ArrayInfo", "CheckpointError", "CheckpointMismatchError", "Entry",
    "KeyMap", "ORIGINAL", "POS_EMBEDDING_KEY", "TIMM", "check_bounds", "check_dtypes",
    "check_finite", "check_position_grid", "checkpoint_entries", "load_pretrained",
    "load_timm", "load_transformers", "read_npz_arrays", "read_npz_index",
    "read_safetensors_arrays", "read_safetensors_index", "timm_entries",
    "transformers_entries", "transformers_key_map", "transformers_prefix",
    "transformers_weights_file",
]
