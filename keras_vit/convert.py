"""Converting an original ``.npz`` checkpoint to a ``.keras`` or ``.weights.h5`` file (the
``keras-vit convert`` command calls :func:`convert_checkpoint`)."""
from __future__ import annotations

import os
from typing import Optional

import keras

OUTPUT_SUFFIXES = (".keras", ".weights.h5")


def _checkpoint_defaults(path: str, num_classes, representation_size, include_top: bool):
    """Class count and pre-logits width of an ``.npz`` file's released head (from headers)."""
    from keras_vit.checkpoints import read_npz_index
    index = read_npz_index(path)
    if num_classes is None:
        if "head/bias" not in index:
            raise ValueError(f"{path} has no head/bias; pass num_classes")
        num_classes = int(index["head/bias"].shape[0])
    released = "head/bias" in index and index["head/bias"].shape == (num_classes,)
    if representation_size is None and include_top and released and "pre_logits/bias" in index:
        representation_size = int(index["pre_logits/bias"].shape[0])
    return num_classes, representation_size


def convert_checkpoint(checkpoint: str, variant: str, output: str, image_size=None,
                       num_classes: Optional[int] = None,
                       representation_size: Optional[int] = None,
                       classifier: Optional[str] = None) -> keras.Model:
    """Builds ``variant``, loads ``checkpoint`` into it and saves it as ``output``.

    Arguments not passed default to the checkpoint's: a published name's metadata (see
    :mod:`keras_vit.pretrained`), or for a file its head's class count and, when that head
    is kept, its pre-logits width; the image size to the published one, else 224. Another
    ``image_size`` resizes the position embeddings, another ``num_classes`` gives a
    zero-initialised head for fine-tuning (see :func:`keras_vit.load_pretrained`).

    Args:
        checkpoint: an original ``.npz`` path or a published name (downloaded once).
        variant: the builder's name, e.g. ``"ViT_B16"``.
        output: a ``.keras`` or ``.weights.h5`` path that does not exist yet.
        image_size: int or (height, width).
        num_classes: the head's class count.
        representation_size: width of the pre-logits layer to keep (0: none).
        classifier: ``"token"`` or ``"gap"``.

    Returns:
        The converted model.
    """
    from keras_vit import models
    from keras_vit.variants import VARIANTS
    from keras_vit.pretrained import is_published_name

    if variant not in VARIANTS:
        raise ValueError(f"unknown model {variant!r}: expected one of "
                         f"{', '.join(sorted(VARIANTS))}")
    if not output.endswith(OUTPUT_SUFFIXES):
        raise ValueError(f"output must end in .keras or .weights.h5, got {output!r}")
    if os.path.exists(output):
        raise ValueError(f"{output} already exists; remove it or choose another output")
    if not is_published_name(checkpoint):
        num_classes, representation_size = _checkpoint_defaults(
            checkpoint, num_classes, representation_size, include_top=True)
    model = getattr(models, variant)(
        image_size=image_size, num_classes=num_classes, classifier=classifier,
        representation_size=representation_size, weights=checkpoint)
    if output.endswith(".keras"):
        model.save(output)
    else:
        model.save_weights(output)
    return model
