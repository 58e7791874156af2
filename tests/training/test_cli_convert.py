"""`keras-vit convert`: the subcommand next to the others, exit 2 with a one-line error."""
import numpy as np

from tests import reference_vit
from training.cli import main


def test_convert_subcommand(tmp_path, capsys):
    params = reference_vit.make_checkpoint(np.random.default_rng(0), dim=192, heads=3, mlp=768,
                                           layers=12, patch=16, grid=(2, 2), num_classes=4)
    src = str(tmp_path / "ckpt.npz")
    np.savez(src, **params)
    out = str(tmp_path / "ti.keras")
    assert main(["convert", src, "--model", "ViT_Ti16", "--image-size", "48",
                 "--output", out]) == 0
    assert "ViT_Ti16 at (48, 48), 4 outputs" in capsys.readouterr().out
    assert main(["convert", src, "--model", "ViT_Ti16", "--output", out]) == 2
    assert capsys.readouterr().err.strip() == \
        f"keras-vit convert: error: {out} already exists; remove it or choose another output"
