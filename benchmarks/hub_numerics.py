"""Prints how far keras_vit's logits are from timm's and transformers' own, on the hub
fixtures (tests/fixtures/hub, written by benchmarks/make_hub_fixtures.py), with the source's
numerics and with each one replaced by the original release's: the README's table.

    python benchmarks/hub_numerics.py

Relative error: max |keras_vit - source| / max |source| over the fixture's 3 images x 5
logits, float32, eager call.
"""
from __future__ import annotations

import os

import numpy as np

import keras_vit

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures",
                        "hub")
TINY_HUB = dict(image_size=32, hidden_size=32, mlp_size=64, num_heads=2, num_layers=2,
                num_classes=5)
CASES = {
    "timm_vit_token": dict(patch_size=8, weights="timm_vit_token.safetensors"),
    "timm_vit_avg": dict(patch_size=8, classifier="gap", weights="timm_vit_avg.safetensors"),
    "timm_hybrid": dict(patch_size=1, resnet_stages=(1,), weights="timm_hybrid.safetensors"),
    "transformers_vit": dict(patch_size=8, weights="transformers_vit"),
}
# (column, the option replaced by the other source's / the original's value, which cases)
VARIANTS = [
    ("source numerics", {}, None),
    ("tanh GELU", dict(gelu="tanh"), None),
    ("LayerNorm eps 1e-12 (timm) / 1e-6 (transformers)", None, None),
    ("GroupNorm eps 1e-6", dict(group_norm_epsilon=1e-6), ("timm_hybrid",)),
    ("StdConv (w-m)/(std+1e-5)", dict(std_conv_epsilon=1e-5, std_conv_epsilon_in_sqrt=False),
     ("timm_hybrid",)),
]


def main() -> None:
    reference = np.load(os.path.join(FIXTURES, "reference.npz"))
    images = reference["images"].astype("float32")
    print("| fixture | " + " | ".join(v[0] for v in VARIANTS) + " |")
    print("|---" * (len(VARIANTS) + 1) + "|")
    for case, args in CASES.items():
        row = []
        for _, overrides, only in VARIANTS:
            if only and case not in only:
                row.append("-")
                continue
            if overrides is None:  # the other source's LayerNorm epsilon
                overrides = dict(layer_norm_epsilon=1e-6 if case.startswith("transformers")
                                 else 1e-12)
            model = keras_vit.ViT(**dict(TINY_HUB, **args, **overrides)
                                  | {"weights": os.path.join(FIXTURES, args["weights"])})
            out = model(images).numpy()
            want = reference[case]
            row.append(f"{np.abs(out - want).max() / np.abs(want).max():.1e}")
        print(f"| {case} | " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
