"""Named checkpoints of the original release, fetched once into the Keras cache.

Public bucket of the original JAX release (google-research/vision_transformer):

* ``"imagenet21k"``: pre-trained on ImageNet-21k (paper section 4.1), 224 px, with the
  21,843-class head and a pre-logits layer.
* ``"imagenet21k+imagenet2012"``: the same, fine-tuned on ImageNet at 384 px.
* ``"augreg-imagenet21k"`` / ``"augreg-imagenet21k+imagenet2012"``: the recommended AugReg
  checkpoints ("How to train your ViT", Steiner et al. 2021, Table 3 ``i21k_300``),
  fine-tuned ones at 384 px.

Loading a checkpoint into a model of another resolution or class count follows the paper's
fine-tuning recipe (see :func:`keras_vit.load_pretrained`). The release publishes no file
hashes, so downloads are not hash-checked; ``.npz`` files are read without pickles.
"""
from __future__ import annotations

import os
from typing import Dict

import keras

BASE_URL = "https://storage.googleapis.com/vit_models"

_ORIGINAL_21K = ("ViT_B16", "ViT_B32", "ViT_L16", "ViT_L32", "ViT_H14", "R50_ViT_B16")
_ORIGINAL_FT = ("ViT_B16", "ViT_B32", "ViT_L16", "ViT_L32", "R50_ViT_B16")
_AUGREG = {
    "ViT_Ti16": "Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0",
    "ViT_S32": "S_32-i21k-300ep-lr_0.001-aug_none-wd_0.1-do_0.0-sd_0.0",
    "ViT_S16": "S_16-i21k-300ep-lr_0.001-aug_light1-wd_0.03-do_0.0-sd_0.0",
    "ViT_B32": "B_32-i21k-300ep-lr_0.001-aug_light1-wd_0.1-do_0.0-sd_0.0",
    "ViT_B16": "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0",
    "ViT_L16": "L_16-i21k-300ep-lr_0.001-aug_strong1-wd_0.1-do_0.0-sd_0.0",
    "R26_ViT_S32": "R26_S_32-i21k-300ep-lr_0.001-aug_light1-wd_0.1-do_0.0-sd_0.0",
    "R50_ViT_L32": "R50_L_32-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.1-sd_0.1",
}
# Fine-tuning learning rate of the recommended ImageNet fine-tune of each AugReg run.
_AUGREG_FT_LR = {"ViT_Ti16": "0.03", "ViT_S32": "0.01", "ViT_S16": "0.03", "ViT_B32": "0.01",
                 "ViT_B16": "0.03", "ViT_L16": "0.01", "R26_ViT_S32": "0.01",
                 "R50_ViT_L32": "0.01"}


def _checkpoint_name(variant: str) -> str:
    from keras_vit.variants import VARIANTS
    return VARIANTS[variant].checkpoint_name


def available_weights() -> Dict[str, Dict[str, str]]:
    """``{weights name: {variant: URL}}`` for every published checkpoint known here."""
    table: Dict[str, Dict[str, str]] = {
        "imagenet21k": {v: f"{BASE_URL}/imagenet21k/{_checkpoint_name(v)}.npz"
                        for v in _ORIGINAL_21K},
        "imagenet21k+imagenet2012": {
            v: f"{BASE_URL}/imagenet21k+imagenet2012/{_checkpoint_name(v)}.npz"
            for v in _ORIGINAL_FT},
        "augreg-imagenet21k": {v: f"{BASE_URL}/augreg/{run}.npz" for v, run in _AUGREG.items()},
        "augreg-imagenet21k+imagenet2012": {
            v: f"{BASE_URL}/augreg/{run}--imagenet2012-steps_20k-lr_{_AUGREG_FT_LR[v]}-res_384.npz"
            for v, run in _AUGREG.items()},
    }
    return table


def weights_url(variant: str, name: str) -> str:
    """The download URL of checkpoint ``name`` for ``variant``, or a ValueError saying why."""
    table = available_weights()
    if name not in table:
        raise ValueError(f"unknown weights {name!r}: expected None, a file path (.npz, .keras, "
                         f".weights.h5) or one of {sorted(table)}")
    if variant not in table[name]:
        raise ValueError(f"weights {name!r} were not published for {variant}; available for: "
                         f"{', '.join(sorted(table[name]))}")
    return table[name][variant]


def resolve_weights(variant: str, weights: str) -> str:
    """A local path for ``weights``: an existing file as is, a published name downloaded once."""
    if os.path.exists(weights) or weights.endswith((".npz", ".keras", ".h5")):
        return weights
    url = weights_url(variant, weights)
    subdir = os.path.join("keras_vit", weights.replace("+", "_"))
    return keras.utils.get_file(fname=os.path.basename(url), origin=url, cache_subdir=subdir)
