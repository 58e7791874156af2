"""Named checkpoints of the original release and what each one is (its metadata).

Public bucket of the original JAX release (google-research/vision_transformer):

* ``"imagenet21k"``: pre-trained on ImageNet-21k (paper section 4.1), 224 px, with the
  21,843-class head on a pre-logits layer of the model's width.
* ``"imagenet21k+imagenet2012"``: the same, fine-tuned on ImageNet-1k at 384 px (no
  pre-logits, 1000 classes).
* ``"augreg-imagenet21k"`` / ``"augreg-imagenet21k+imagenet2012"``: the recommended AugReg
  checkpoints ("How to train your ViT", Steiner et al. 2021, Table 3 ``i21k_300``), no
  pre-logits; the fine-tuned ones at 384 px.

Each name carries its image size, class count, representation size and classifier
(:func:`available_weights`); a named builder such as ``keras_vit.ViT_B16(weights=...)`` uses
them for the arguments the caller did not pass (:func:`builder_arguments`). ImageNet-1k heads
come with their class names (:func:`class_names`). The release publishes no file hashes, so
downloads are not hash-checked; ``.npz`` files are read without pickles.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Dict, List, Optional

import keras

BASE_URL = "https://storage.googleapis.com/vit_models"
IMAGENET21K_CLASSES = 21843
IMAGENET2012 = "imagenet2012"

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


@dataclasses.dataclass(frozen=True)
class PublishedWeights:
    """One published checkpoint: where it is and the model that reproduces its outputs.

    Args:
        name: the weights name (``"imagenet21k"``, ...).
        variant: the builder it is for (``"ViT_B16"``, ...).
        url: download address in the public bucket.
        image_size: resolution it was trained (or fine-tuned) at.
        num_classes: size of its head.
        representation_size: width of its pre-logits layer, None when it has none.
        classifier: ``"token"`` (every published checkpoint uses the class token).
        labels: the dataset whose class names go with the head (``"imagenet2012"``), or None.
    """

    name: str
    variant: str
    url: str
    image_size: int
    num_classes: int
    representation_size: Optional[int]
    classifier: str = "token"
    labels: Optional[str] = None

    def class_names(self) -> Optional[List[str]]:
        """The head's class names in class-index order, or None when none are known."""
        return class_names(self.labels) if self.labels else None


def _variant(variant: str):
    from keras_vit.variants import VARIANTS
    return VARIANTS[variant]


def available_weights() -> Dict[str, Dict[str, PublishedWeights]]:
    """``{weights name: {variant: PublishedWeights}}`` for every published checkpoint."""
    def original(v, name, folder, **meta):
        url = f"{BASE_URL}/{folder}/{_variant(v).checkpoint_name}.npz"
        return PublishedWeights(name, v, url, **meta)

    def augreg(v, name, suffix="", **meta):
        return PublishedWeights(name, v, f"{BASE_URL}/augreg/{_AUGREG[v]}{suffix}.npz", **meta)

    i21k, ft = "imagenet21k", "imagenet21k+imagenet2012"
    ft_meta = dict(image_size=384, num_classes=1000, representation_size=None,
                   labels=IMAGENET2012)
    return {
        i21k: {v: original(v, i21k, i21k, image_size=224, num_classes=IMAGENET21K_CLASSES,
                           representation_size=_variant(v).hidden_size)
               for v in _ORIGINAL_21K},
        ft: {v: original(v, ft, ft, **ft_meta) for v in _ORIGINAL_FT},
        "augreg-" + i21k: {
            v: augreg(v, "augreg-" + i21k, image_size=224, num_classes=IMAGENET21K_CLASSES,
                      representation_size=None)
            for v in _AUGREG},
        "augreg-" + ft: {
            v: augreg(v, "augreg-" + ft,
                      f"--imagenet2012-steps_20k-lr_{_AUGREG_FT_LR[v]}-res_384", **ft_meta)
            for v in _AUGREG},
    }


def is_published_name(weights) -> bool:
    """Whether ``weights`` is meant as a published name rather than a file path or a hub
    handle (:func:`keras_vit.weights_kind.weights_kind`)."""
    from keras_vit.weights_kind import PUBLISHED, weights_kind
    return isinstance(weights, str) and weights_kind(weights) == PUBLISHED


def published(variant: str, name: str) -> PublishedWeights:
    """The metadata of checkpoint ``name`` for ``variant``, or a ValueError saying why not."""
    table = available_weights()
    if name not in table:
        raise ValueError(f"unknown weights {name!r}: expected None, an existing file (.npz, "
                         ".safetensors, .keras, .weights.h5) or transformers model directory, "
                         f"or one of {sorted(table)}")
    if variant not in table[name]:
        raise ValueError(f"weights {name!r} were not published for {variant}; available for: "
                         f"{', '.join(sorted(table[name]))}")
    return table[name][variant]


def weights_url(variant: str, name: str) -> str:
    """The download URL of checkpoint ``name`` for ``variant``."""
    return published(variant, name).url


def resolve_weights(variant: str, weights: str) -> str:
    """A local path for ``weights``: an existing file as is, a published name downloaded once."""
    if not is_published_name(weights):
        return weights
    url = weights_url(variant, weights)
    subdir = os.path.join("keras_vit", weights.replace("+", "_"))
    return keras.utils.get_file(fname=os.path.basename(url), origin=url, cache_subdir=subdir)


def builder_arguments(variant: str, weights, *, image_size=None, num_classes=None,
                      include_top: bool = True, classifier=None,
                      representation_size=None) -> dict:
    """The builder arguments, with a published checkpoint's metadata where none was passed.

    ``image_size``, ``num_classes`` and ``classifier`` default to the checkpoint's (else 224,
    1000, ``"token"``). ``representation_size`` defaults to the checkpoint's only when the
    model reproduces the released classifier (``include_top`` and the checkpoint's class
    count); a new head or a feature extractor gets no pre-logits layer, as when fine-tuning
    in the paper. Pass ``representation_size=0`` to refuse the pre-logits explicitly.
    """
    meta = published(variant, weights) if is_published_name(weights) else None
    if meta is None:
        return dict(image_size=224 if image_size is None else image_size,
                    num_classes=1000 if num_classes is None else num_classes,
                    classifier=classifier or "token", representation_size=representation_size)
    num_classes = meta.num_classes if num_classes is None else num_classes
    if representation_size is None and include_top and num_classes == meta.num_classes:
        representation_size = meta.representation_size
    return dict(image_size=meta.image_size if image_size is None else image_size,
                num_classes=num_classes, classifier=classifier or meta.classifier,
                representation_size=representation_size or None)


def class_names(dataset: str = IMAGENET2012) -> List[str]:
    """Class names of ``dataset`` in class-index order, from tensorflow-datasets' package data.

    Only ``"imagenet2012"`` is known: its 1000 WordNet IDs (``"n01440764"``, ...), in the
    order of the TFDS ``imagenet2012`` labels that the released ImageNet-1k heads were
    trained with. tensorflow-datasets ships no human-readable names and no ImageNet-21k list.
    The file is read, without importing tensorflow_datasets.
    """
    if dataset != IMAGENET2012:
        raise ValueError(f"no class names known for {dataset!r}; known: {IMAGENET2012!r}")
    spec = importlib.util.find_spec("tensorflow_datasets")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("the ImageNet class names come from tensorflow-datasets' package "
                         "data; pip install tensorflow-datasets")
    path = os.path.join(list(spec.submodule_search_locations)[0], "datasets", "imagenet2012",
                        "labels.txt")
    if not os.path.exists(path):
        raise ValueError(f"this tensorflow-datasets has no ImageNet label list ({path})")
    with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    if len(names) != 1000:
        raise ValueError(f"{path}: expected 1000 ImageNet class names, found {len(names)}")
    return names
