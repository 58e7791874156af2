"""Parity of the ViT family (DeiT, DeiT III, CLIP, DINOv2, SigLIP image towers, timm's
average-pooled ViTs) with timm: keras_vit's outputs against timm's, in separate processes.

Each case is a timm architecture (built with ``timm.create_model(name, pretrained=False)``,
no download) with perturbed random weights (every parameter random: no zero bias, no unit
LayerNorm scale, LayerScale gammas O(0.2)), saved as the hub holds it (``.safetensors``) with
the hub-style ``config.json`` content (``architecture``, ``num_classes``, ``global_pool``).

Three commands::

    # torch side (needs torch, timm, safetensors: a separate environment)
    /work/venv-ref/bin/python benchmarks/family_parity.py fixtures   # tests/fixtures/family/
    # real size: the torch side runs in --torch-python, keras_vit here, one case at a time
    python benchmarks/family_parity.py real --torch-python /work/venv-ref/bin/python \\
        --output benchmarks/results/DATE-family-parity.md

``fixtures`` writes the tiny versions (width 16, 2 blocks, 32x32 images, float16 files)
the test suite compares with (tests/keras_vit/test_family.py); ``real`` builds each
architecture at its real size (e.g. ViT-B/16 at 224, DINOv2 ViT-S/14 at 518), saves it
to a temporary directory, loads it with ``keras_vit.from_timm(path, config=config)`` and reports the
relative difference ``max|keras - timm| / max|timm|`` (float32) of each.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "tests", "fixtures", "family")
TINY = dict(img_size=32, patch_size=8, embed_dim=16, depth=2, num_heads=2, mlp_ratio=2.0,
            num_classes=5)

# case: (timm architecture, architecture overrides, example hub id of the family member)
CASES = {
    "deit": ("deit_base_patch16_224", {}, "timm/deit_base_patch16_224.fb_in1k"),
    "deit_distilled": ("deit_base_distilled_patch16_224", {},
                       "timm/deit_base_distilled_patch16_224.fb_in1k"),
    "deit3": ("deit3_base_patch16_224", {}, "timm/deit3_base_patch16_224.fb_in1k"),
    "clip": ("vit_base_patch16_clip_224", {"num_classes": 512},
             "timm/vit_base_patch16_clip_224.laion2b"),
    "clip_quickgelu": ("vit_base_patch16_clip_quickgelu_224", {"num_classes": 512},
                       "timm/vit_base_patch16_clip_224.openai (QuickGELU: its notes)"),
    "dinov2": ("vit_small_patch14_dinov2", {"num_classes": 0},
               "timm/vit_small_patch14_dinov2.lvd142m"),
    "dinov2_reg": ("vit_small_patch14_reg4_dinov2", {"num_classes": 0},
                   "timm/vit_small_patch14_reg4_dinov2.lvd142m"),
    "siglip": ("vit_base_patch16_siglip_224", {"num_classes": 0},
               "timm/vit_base_patch16_siglip_224.webli"),
    "siglip_gelu_tanh": ("vit_base_patch32_siglip_256", {"num_classes": 0},
                         "timm/vit_base_patch32_siglip_256.v2_webli"),
    # timm ViTs trained with global_pool="avg" (fc_norm on by default), and with
    # fc_norm=False beside a class token (without one: e.g. the *_siglip_gap_* towers).
    "avg_fc_norm": ("vit_base_patch16_224", {"global_pool": "avg"},
                    "a timm ViT trained with `--gp avg`"),
    "avg_class_token": ("vit_base_patch16_224", {"global_pool": "avg", "fc_norm": False},
                        "a timm ViT with `global_pool='avg', fc_norm=False`"),
}


# ---- torch side ----

def _import_timm():
    sys.path.insert(0, HERE)
    import make_hub_fixtures  # noqa: F401  (its torchvision stand-in, then timm)
    import timm
    return timm


def _randomise(model, seed: int) -> None:
    """Every parameter random: norm scales 1 + 0.2 N, biases and LayerScale 0.2 N, tokens
    and position embeddings 0.5 N, weights N / sqrt(fan_in)."""
    import torch
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g, dtype=torch.float64)
            if p.ndim == 1 and name.endswith("weight"):
                value = 1.0 + 0.2 * r
            elif p.ndim == 1:
                value = 0.2 * r
            elif name.endswith(("_token", "pos_embed", "latent", "_tokens", "position_embeddings",
                                "position_embedding.weight", "probe")):  # (transformers' names)
                value = 0.5 * r
            else:
                value = r / np.sqrt(np.prod(p.shape[1:]))
            p.copy_(value.to(p.dtype))


def _images(size: int, count: int = 2) -> np.ndarray:
    rng = np.random.default_rng(size)
    return rng.integers(0, 256, (count, size, size, 3)).astype(np.uint8)


def write_case(case: str, directory: str, tiny: bool, seed: int) -> dict:
    """Builds ``case`` in timm, randomised; writes ``{case}.safetensors`` to ``directory``;
    returns its hub config, images and float32 outputs (x / 127.5 - 1 inputs)."""
    import safetensors.torch
    import torch
    timm = _import_timm()
    name, overrides, _ = CASES[case]
    model = timm.create_model(name, pretrained=False,
                              **dict(overrides, **(TINY if tiny else {}))).eval()
    _randomise(model, seed)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if tiny:  # stored as float16 (half the bytes); timm computes in float32 with those values
        state = {k: v.half() for k, v in state.items()}
        model.load_state_dict({k: v.float() for k, v in state.items()})
    safetensors.torch.save_file(state, os.path.join(directory, f"{case}.safetensors"))
    size = model.patch_embed.img_size[0]
    batch = _images(size)
    x = torch.from_numpy(batch.astype(np.float32) / 127.5 - 1.0).permute(0, 3, 1, 2)
    with torch.no_grad():
        out = model(x).numpy().astype(np.float32)
    config = {"architecture": name, "num_classes": model.num_classes,
              "global_pool": getattr(model, "global_pool", "token")}
    return {"config": config, "images": batch, "outputs": out}


def fixtures() -> None:
    import timm
    import torch
    os.makedirs(FIXTURES, exist_ok=True)
    arrays, configs = {}, {}
    for seed, case in enumerate(sorted(CASES)):
        found = write_case(case, FIXTURES, tiny=True, seed=seed)
        configs[case] = found["config"]
        arrays[case] = found["outputs"]
        arrays["images"] = found["images"]
    np.savez(os.path.join(FIXTURES, "reference.npz"), **arrays)
    with open(os.path.join(FIXTURES, "metadata.json"), "w") as f:
        json.dump({"written_by": "benchmarks/family_parity.py fixtures",
                   "versions": {"torch": torch.__version__, "timm": timm.__version__},
                   "architecture": TINY, "configs": configs}, f, indent=2)
        f.write("\n")
    print(f"wrote {FIXTURES}: {', '.join(sorted(CASES))}")


def torch_case(case: str, directory: str) -> None:
    """The torch half of one real-size case (run in the torch environment)."""
    found = write_case(case, directory, tiny=False, seed=sorted(CASES).index(case))
    np.savez(os.path.join(directory, f"{case}.npz"), images=found["images"],
             outputs=found["outputs"])
    with open(os.path.join(directory, f"{case}.json"), "w") as f:
        json.dump(found["config"], f)


# ---- keras_vit side ----

def keras_case(case: str, directory: str) -> dict:
    import keras_vit
    with open(os.path.join(directory, f"{case}.json")) as f:
        config = json.load(f)
    reference = np.load(os.path.join(directory, f"{case}.npz"))
    start = time.perf_counter()
    model = keras_vit.from_timm(os.path.join(directory, f"{case}.safetensors"), config=config)
    out = model(reference["images"].astype(np.float32), training=False).numpy()
    ref = reference["outputs"]
    return {"case": case, "architecture": config["architecture"], "example": CASES[case][2],
            "params": int(model.count_params()), "output_shape": list(ref.shape),
            "relative_difference": float(np.abs(out - ref).max() / np.abs(ref).max()),
            "seconds": round(time.perf_counter() - start, 1)}


def cpu_name() -> str:
    """The CPU's model name, its family / model numbers and vector extensions."""
    try:
        with open("/proc/cpuinfo") as f:
            info = dict(line.split(":", 1) for line in f.read().split("\n\n")[0].splitlines()
                        if ":" in line)
    except OSError:
        return platform.processor()
    info = {k.strip(): v.strip() for k, v in info.items()}
    flags = set(info.get("flags", "").split())
    vector = "AVX-512" if "avx512f" in flags else "AVX2, no AVX-512" if "avx2" in flags else ""
    return (f"{info.get('model name', platform.processor())} (family {info.get('cpu family')}, "
            f"model {info.get('model')}; {vector})")


def run_cases(script: str, torch_python: str, cases) -> list:
    """Each case of ``script`` (this file or ``transformers_family.py``): ``torch-case`` in
    ``torch_python`` writes it into a scratch directory, ``keras-case`` here loads and
    compares it; the cases' JSON results."""
    results = []
    for case in cases:
        directory = tempfile.mkdtemp(prefix=f"family-{case}-")
        try:
            subprocess.run([torch_python, script, "torch-case", case, directory], check=True)
            result = subprocess.run([sys.executable, script, "keras-case", case, directory],
                                    check=True, capture_output=True, text=True)
            results.append(json.loads(result.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), flush=True)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
    return results


def real(torch_python: str, output: str, cases) -> None:
    results = run_cases(__file__, torch_python, cases)
    data = {"written_by": "benchmarks/family_parity.py real", "cpu": cpu_name(),
            "cores": os.cpu_count(), "dtype": "float32", "threshold": 1e-4, "results": results}
    if output.endswith(".md"):  # (a results note: benchmarks/results holds compare.py's JSON)
        write_note(data, output)
        return
    with open(output, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")


def write_note(data: dict, path: str) -> None:
    """The Markdown results note of a ``real`` run (``data``: what it measured)."""
    lines = [
        "# The ViT family against timm at real size (float32)", "",
        f"Machine: {data['cpu']}, {data['cores']} cores (shared), CPU only; TensorFlow 2.21, "
        "Keras 3, timm and torch in a separate process. Written by "
        "`benchmarks/family_parity.py real`: each architecture built with "
        "`timm.create_model(name, pretrained=False)`, every parameter perturbed (no zero bias, "
        "no unit LayerNorm scale), saved as `.safetensors`, loaded with "
        "`keras_vit.from_timm(path, config=config)` (config: the hub config.json's "
        "`architecture`, `num_classes`, `global_pool`), two random images at the "
        "architecture's size, inputs `x / 127.5 - 1` on both sides.", "",
        f"Relative difference = max|keras_vit - timm| / max|timm| over the outputs; "
        f"threshold {data['threshold']:g}.", "",
        "| case | timm architecture | example hub id | parameters | outputs | relative "
        "difference | keras_vit build + load + run (s) |",
        "|---|---|---|---|---|---|---|"]
    for r in data["results"]:
        lines.append(f"| {r['case']} | `{r['architecture']}` | {CASES[r['case']][2]} | "
                     f"{r['params']:,} | {tuple(r['output_shape'])} | "
                     f"{r['relative_difference']:.1e} | {r['seconds']} |")
    finish_note(lines, data, path)


def finish_note(lines, data: dict, path: str) -> None:
    """Writes a parity note: ``lines`` and the largest relative difference against the
    threshold (also for ``transformers_family.py``)."""
    worst = max(r["relative_difference"] for r in data["results"])
    lines += ["", f"Largest relative difference: {worst:.1e} "
                  f"({'under' if worst < data['threshold'] else 'OVER'} "
                  f"{data['threshold']:g})."]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def command_line(argv, description: str, script, cases, write_note=None) -> None:
    """The command line of a parity script (this one, ``transformers_family.py``):
    ``fixtures``, ``real``, ``torch-case`` / ``keras-case`` (one case, run by ``real`` in
    each environment) and, with ``write_note``, ``note`` (a JSON of ``real`` -> a note);
    ``script`` is the module holding the commands' functions."""
    parser = argparse.ArgumentParser(description=description)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("fixtures")
    run = sub.add_parser("real")
    run.add_argument("--torch-python", default="/work/venv-ref/bin/python")
    run.add_argument("--output", required=True)
    run.add_argument("--cases", nargs="*", default=list(cases))
    if write_note is not None:
        note = sub.add_parser("note")  # a JSON written by `real --output X.json` -> a note
        note.add_argument("json")
        note.add_argument("output")
    for name in ("torch-case", "keras-case"):
        one = sub.add_parser(name)
        one.add_argument("case")
        one.add_argument("directory")
    args = parser.parse_args(argv)
    if args.command == "fixtures":
        script.fixtures()
    elif args.command == "real":
        script.real(args.torch_python, args.output, args.cases)
    elif args.command == "note":
        with open(args.json) as f:
            write_note(json.load(f), args.output)
    elif args.command == "torch-case":
        script.torch_case(args.case, args.directory)
    else:
        print(json.dumps(script.keras_case(args.case, args.directory)))


def main(argv=None) -> None:
    command_line(argv, __doc__.split("\n")[0], sys.modules[__name__], sorted(CASES),
                 write_note)


if __name__ == "__main__":
    main()
