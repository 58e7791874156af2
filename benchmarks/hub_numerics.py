"""Prints how far keras_vit's logits are from timm's and transformers' own, on the hub
fixtures (tests/fixtures/hub, written by benchmarks/make_hub_fixtures.py), with the source's
numerics and with each one replaced by the original release's: the table in docs/models.md.

    python benchmarks/hub_numerics.py

Relative error: max |keras_vit - source| / max |source| over the fixture's 3 images x 5
logits, float32, eager call.
"""
from __future__ import annotations

import os
import sys

import numpy as np

import keras_vit

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# The fixtures' architectures are defined once, beside the tests that check them.
from tests.keras_vit.test_hub_checkpoints import CASES, FIXTURES, TINY_HUB  # noqa: E402

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
