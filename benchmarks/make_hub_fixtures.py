"""Writes the hub parity fixtures of tests/keras_vit/test_hub_checkpoints.py.

Tiny random timm and transformers ViTs, saved the way the Hugging Face hub holds them
(``.safetensors``; ``config.json`` + ``model.safetensors`` for transformers), and the float32
logits their own library computes for a few fixed images. The tests compare keras_vit's
logits with these without torch, timm or transformers installed.

Needs torch, timm, transformers, safetensors and numpy, in a separate environment (keras_vit
does not need them). To regenerate, e.g. with newer versions of those libraries::

    python3 -m venv /tmp/venv-ref
    /tmp/venv-ref/bin/pip install torch timm transformers safetensors numpy
    /tmp/venv-ref/bin/python benchmarks/make_hub_fixtures.py   # writes tests/fixtures/hub/

then run ``pytest tests/keras_vit/test_hub_checkpoints.py``. The versions used are recorded in
``tests/fixtures/hub/metadata.json``. Everything is seeded: the same versions write the same
files.

The weights are random (every parameter, including LayerNorm / GroupNorm scales and the
head, so that no part of the model is an identity), with two deliberate choices that make
the source numerics visible in the logits (each is what a real input or checkpoint can do):

* the transformers model's embeddings are scaled by 1e-3, so the first LayerNorm sees a
  variance near 1e-6 and its epsilon (1e-12 in transformers, 1e-6 in the original) matters;
* the hybrid's conv kernels have per-output-channel scales between 1e-5 and 1e-3, so the
  weight-standardisation epsilon matters, and image 1 is nearly flat (pixels 127 or 128), so
  the stem GroupNorm's epsilon (timm 1e-5, original 1e-6) matters.

The hybrid's weights are stored as float16 (half the bytes; the reference model computes in
float32 with exactly those values), which also covers reading float16 safetensors.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import json
import os
import sys
from functools import partial

import numpy as np
import safetensors
import safetensors.torch
import torch


def _stand_in_for_broken_torchvision() -> None:
    """timm imports torchvision at import time (FrozenBatchNorm2d, data transforms) but its
    ViTs do not use it. Where the installed torchvision's C extension cannot load (a wheel
    built for another torch: "operator torchvision::nms does not exist"), stand-in modules
    let timm import; any use of them would fail loudly."""
    try:
        importlib.import_module("torchvision")
        return
    except (RuntimeError, OSError, ImportError):
        pass
    import types

    class AnyAttribute(type):
        def __getattr__(cls, name):  # a distinct stand-in per name (enum members as keys)
            if name.startswith("__"):
                raise AttributeError(name)
            member = AnyAttribute(name, (cls,), {})
            setattr(cls, name, member)
            return member

    class Missing(metaclass=AnyAttribute):
        def __init__(self, *args, **kwargs):
            raise RuntimeError("torchvision stand-in: not usable here")

    class StandIn(types.ModuleType):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return Missing

    class Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
        def find_spec(self, name, path=None, target=None):
            if name == "torchvision" or name.startswith("torchvision."):
                return importlib.machinery.ModuleSpec(name, self, is_package=True)
            return None

        def create_module(self, spec):
            module = StandIn(spec.name)
            module.__path__ = []
            return module

        def exec_module(self, module):
            pass

    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]
    sys.meta_path.insert(0, Finder())


_stand_in_for_broken_torchvision()
import timm  # noqa: E402
import transformers  # noqa: E402
from timm.layers import HybridEmbed, StdConv2dSame  # noqa: E402
from timm.models.resnetv2 import ResNetV2  # noqa: E402
from timm.models.vision_transformer import VisionTransformer  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "hub")
IMAGE_SIZE = 32
NUM_CLASSES = 5
VIT = dict(embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)


def images() -> np.ndarray:
    """Three 32x32 RGB images, uint8: noise, a nearly flat image, a smooth gradient."""
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3))
    flat = 127 + rng.integers(0, 2, (IMAGE_SIZE, IMAGE_SIZE, 3))
    ramp = np.linspace(0, 255, IMAGE_SIZE)
    gradient = np.stack([ramp[None, :].repeat(IMAGE_SIZE, 0), ramp[:, None].repeat(IMAGE_SIZE, 1),
                         255 - ramp[None, :].repeat(IMAGE_SIZE, 0)], axis=-1)
    return np.stack([noise, flat, gradient]).astype(np.uint8)


def randomise(model: torch.nn.Module, seed: int, conv_scales=False) -> None:
    """Every parameter random: norms' scales near 1, biases and tokens O(0.1 - 1), weights
    ~ 1/sqrt(fan_in) (conv kernels of ``conv_scales`` models: per-channel scales 1e-5..1e-3)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g, dtype=torch.float64)
            if p.ndim == 1 and name.endswith("weight"):  # LayerNorm / GroupNorm scale
                value = 1.0 + 0.2 * r
            elif p.ndim == 1:
                value = 0.2 * r
            elif name in ("cls_token", "pos_embed"):
                value = 0.5 * r
            elif conv_scales and p.ndim == 4 and "backbone" in name:
                scale = 10 ** torch.empty(p.shape[0], dtype=torch.float64).uniform_(
                    -5, -3, generator=g)
                value = r * scale.view(-1, 1, 1, 1)
            else:
                value = r / np.sqrt(np.prod(p.shape[1:]))
            p.copy_(value.to(p.dtype))


def logits(model, batch: np.ndarray) -> np.ndarray:
    # timm and transformers ViTs with mean = std = 0.5: x / 127.5 - 1, as keras_vit.
    x = torch.from_numpy(batch.astype(np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2)
    with torch.no_grad():
        out = model(x)
    out = out.logits if hasattr(out, "logits") else out
    return out.numpy().astype(np.float32)


def timm_vit(**kwargs):
    return VisionTransformer(img_size=IMAGE_SIZE, patch_size=8, num_classes=NUM_CLASSES,
                             **VIT, **kwargs)


def timm_hybrid():
    # vit_small_r26_s32_224's structure (timm's vision_transformer_hybrid._resnetv2: TF-SAME
    # StdConv2dSame with eps 1e-8, GroupNorm eps 1e-5, no pre-activation), one stage.
    backbone = ResNetV2(layers=(1,), channels=(256,), stem_chs=64, num_classes=0,
                        global_pool="", preact=False, stem_type="same",
                        conv_layer=partial(StdConv2dSame, eps=1e-8))
    return VisionTransformer(img_size=IMAGE_SIZE, patch_size=1, num_classes=NUM_CLASSES,
                             embed_layer=partial(HybridEmbed, backbone=backbone), **VIT)


def transformers_vit():
    config = transformers.ViTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        image_size=IMAGE_SIZE, patch_size=8, num_labels=NUM_CLASSES,
        id2label={i: name for i, name in enumerate(["cat", "dog", "fish", "bird", "frog"])},
        label2id={name: i for i, name in enumerate(["cat", "dog", "fish", "bird", "frog"])})
    model = transformers.ViTForImageClassification(config)
    return model


def main() -> None:
    torch.manual_seed(0)
    os.makedirs(OUT, exist_ok=True)
    batch = images()
    cases = {}
    for case, build, seed, kwargs in (
            ("timm_vit_token", timm_vit, 1, {}),
            ("timm_vit_avg", partial(timm_vit, class_token=False, global_pool="avg",
                                     fc_norm=False), 2, {}),
            ("timm_hybrid", timm_hybrid, 3, {"conv_scales": True})):
        model = build().eval()
        randomise(model, seed, **kwargs)
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        if case == "timm_hybrid":
            state = {k: v.half() for k, v in state.items()}
            model.load_state_dict({k: v.float() for k, v in state.items()})
        safetensors.torch.save_file(state, os.path.join(OUT, f"{case}.safetensors"))
        cases[case] = logits(model, batch)

    model = transformers_vit().eval()
    randomise(model, 4)
    with torch.no_grad():
        for p in model.vit.embeddings.parameters():
            p.mul_(1e-3)
    model.save_pretrained(os.path.join(OUT, "transformers_vit"), safe_serialization=True)
    cases["transformers_vit"] = logits(model, batch)

    np.savez(os.path.join(OUT, "reference.npz"), images=batch, **cases)
    versions = {name: module.__version__ for name, module in (
        ("torch", torch), ("timm", timm), ("transformers", transformers),
        ("safetensors", safetensors), ("numpy", np))}
    versions["python"] = sys.version.split()[0]
    with open(os.path.join(OUT, "metadata.json"), "w") as f:
        json.dump({"written_by": "benchmarks/make_hub_fixtures.py", "versions": versions,
                   "image_size": IMAGE_SIZE, "num_classes": NUM_CLASSES,
                   "cases": sorted(cases)}, f, indent=2)
        f.write("\n")
    print(f"wrote {OUT}: " + ", ".join(sorted(cases)) + f" ({versions})")


if __name__ == "__main__":
    main()
