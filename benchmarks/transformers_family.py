"""Parity of the ViT family loaded from transformers model directories (DeiT, DINOv2 with and
without registers, CLIP and SigLIP image towers): keras_vit's outputs against transformers',
in separate processes. The sibling of ``family_parity.py`` (the same family from timm files).

Each case is a transformers model class built from its config (no download) with perturbed
random weights (``family_parity._randomise``: no zero bias, no unit LayerNorm scale,
LayerScale O(0.2)), written with ``save_pretrained`` beside a ``preprocessor_config.json``
(the model type's image processor with its defaults), and loaded here with
``keras_vit.from_preset(directory)``: the images go in as [0, 255] pixels on the keras_vit
side and as transformers' own normalisation ``(x / 255 - mean) / std`` (the processor's mean
and std) on the torch side, so the preprocessing read from the directory is compared too.

Three commands::

    # torch side (needs torch, transformers, safetensors: a separate environment)
    /work/venv-ref/bin/python benchmarks/transformers_family.py fixtures
    # real size: the torch side runs in --torch-python, keras_vit here, one case at a time
    python benchmarks/transformers_family.py real --torch-python /work/venv-ref/bin/python \\
        --output benchmarks/results/DATE-transformers-family-parity.md

``fixtures`` writes the tiny versions (width 16, 2 layers, 32x32 images, float16 weights)
into ``tests/fixtures/transformers_family/`` (one model directory per case, the reference
outputs in ``reference.npz``) for tests/keras_vit/test_transformers_family.py; ``real``
builds each at its real size (DeiT-B/16 at 224, DINOv2 ViT-S/14 at 518, ...) in a temporary
directory and reports the relative difference ``max|keras - transformers| /
max|transformers|`` (float32) of each.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(HERE, "..", "tests", "fixtures", "transformers_family")
TINY = dict(hidden_size=16, num_hidden_layers=2, num_attention_heads=2, image_size=32,
            patch_size=8)
TEXT = dict(vocab_size=20, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
            num_attention_heads=2, max_position_embeddings=8)
LABELS = {"id2label": {0: "cat", 1: "dog", 2: "fish"}, "label2id": {"cat": 0, "dog": 1,
                                                                    "fish": 2}}
# case: (model class, config class, tiny config, real-size config, output, processor,
#        example hub id)
CASES = {
    "deit": ("DeiTForImageClassification", "DeiTConfig", dict(intermediate_size=32, **LABELS),
             dict(num_labels=1000), "logits", "DeiTImageProcessorPil",
             "facebook/deit-base-patch16-224 (its distillation token without a head)"),
    "deit_distilled": ("DeiTForImageClassificationWithTeacher", "DeiTConfig",
                       dict(intermediate_size=32, **LABELS), dict(num_labels=1000), "logits",
                       "DeiTImageProcessorPil", "facebook/deit-base-distilled-patch16-224"),
    "deit_model": ("DeiTModel", "DeiTConfig", dict(intermediate_size=32), {}, "pooler_output",
                   "DeiTImageProcessorPil", "a DeiTModel (pooler: dense + tanh)"),
    "dinov2": ("Dinov2Model", "Dinov2Config", dict(mlp_ratio=2), dict(
        hidden_size=384, num_attention_heads=6, image_size=518, patch_size=14),
        "pooler_output", "BitImageProcessorPil", "facebook/dinov2-small"),
    "dinov2_classifier": ("Dinov2ForImageClassification", "Dinov2Config",
                          dict(mlp_ratio=2, **LABELS), dict(
                              hidden_size=384, num_attention_heads=6, image_size=518,
                              patch_size=14, num_labels=1000), "logits",
                          "BitImageProcessorPil", "facebook/dinov2-small-imagenet1k-1-layer"),
    "dinov2_reg": ("Dinov2WithRegistersModel", "Dinov2WithRegistersConfig",
                   dict(mlp_ratio=2, num_register_tokens=4), dict(
                       hidden_size=384, num_attention_heads=6, image_size=518, patch_size=14,
                       num_register_tokens=4), "pooler_output", "BitImageProcessorPil",
                   "facebook/dinov2-with-registers-small"),
    "dinov2_reg_classifier": ("Dinov2WithRegistersForImageClassification",
                              "Dinov2WithRegistersConfig",
                              dict(mlp_ratio=2, num_register_tokens=4, **LABELS), None,
                              "logits", "BitImageProcessorPil",
                              "a Dinov2WithRegistersForImageClassification"),
    "clip_vision": ("CLIPVisionModel", "CLIPVisionConfig", dict(intermediate_size=32), dict(
        patch_size=16), "pooler_output", "CLIPImageProcessorPil",
        "openai/clip-vit-base-patch16 (CLIPVisionModel, QuickGELU)"),
    "clip_projection": ("CLIPVisionModelWithProjection", "CLIPVisionConfig", dict(
        intermediate_size=32, projection_dim=8, hidden_act="gelu"), dict(
        patch_size=16, projection_dim=512), "image_embeds", "CLIPImageProcessorPil",
        "laion/CLIP-ViT-B-16-laion2B-s34B-b88K (image embedding; GELU)"),
    "clip": ("CLIPModel", "CLIPConfig", dict(
        text_config=TEXT, projection_dim=8,
        vision_config=dict(intermediate_size=32, **TINY)), None, "image_embeds",
        "CLIPImageProcessorPil", "openai/clip-vit-base-patch32 (a CLIPModel's image tower)"),
    "siglip_vision": ("SiglipVisionModel", "SiglipVisionConfig", dict(intermediate_size=32),
                      {}, "pooler_output", "SiglipImageProcessorPil",
                      "google/siglip-base-patch16-224 (SiglipVisionModel)"),
    "siglip": ("SiglipModel", "SiglipConfig", dict(
        text_config=TEXT, vision_config=dict(intermediate_size=32, **TINY)), None,
        "pooler_output", "SiglipImageProcessorPil", "google/siglip-base-patch16-224"),
}
# DINOv2's processors crop to 224 where its config says 518: the real-size case at 224
# (keras_vit built with image_size=224, its position embeddings resized when loading).
CASES["dinov2_at_224"] = CASES["dinov2"][:6] + ("facebook/dinov2-small at 224 px (its "
                                                 "processor's crop)",)
REAL_CASES = [case for case in CASES if CASES[case][3] is not None]
TINY_CASES = [case for case in CASES if case != "dinov2_at_224"]
# Each case's seed: its place in the first cases' order (cases added later come after them,
# so that the committed fixtures and results stay what the script writes).
SEEDS = sorted(set(TINY_CASES) - {"dinov2_reg_classifier"}) + ["dinov2_reg_classifier"]
# Other image sizes of tiny cases (transformers' interpolate_pos_encoding: PyTorch bicubic,
# antialiased for DINOv2 with registers): 24 px (3 x 3 patches) and 48 px (6 x 6).
RESIZED = {"deit": (48,), "dinov2": (24, 48), "dinov2_reg": (24, 48)}
EVAL_SIZE = {"dinov2_at_224": 224}


# ---- torch side ----

def _import():
    sys.path.insert(0, HERE)
    import family_parity
    import make_hub_fixtures  # noqa: F401  (its torchvision stand-in)
    import transformers
    return transformers, family_parity


def _outputs(model, output: str, pixels, resized: bool = False):
    """The output the case compares: logits, the pooled features, or CLIP's image
    embedding (the projected pooled features); ``resized``: at another image size than the
    config's (DINOv2 interpolates by itself, DeiT when asked)."""
    import torch
    with torch.no_grad():
        if type(model).__name__ in ("CLIPModel", "SiglipModel"):
            pooled = model.vision_model(pixel_values=pixels).pooler_output
            return model.visual_projection(pooled) if output == "image_embeds" else pooled
        asked = {"interpolate_pos_encoding": True} if resized and "DeiT" in type(
            model).__name__ else {}
        return getattr(model(pixel_values=pixels, **asked), output)


def _run(model, output, image_processor, size, resized=False):
    """(images, float32 outputs) of two random images of ``size`` pixels, normalised by
    the processor's mean and std."""
    import torch
    from family_parity import _images
    mean = np.asarray(image_processor.image_mean, np.float32)
    std = np.asarray(image_processor.image_std, np.float32)
    batch = _images(size)
    pixels = torch.from_numpy((batch / np.float32(255) - mean) / std).permute(0, 3, 1, 2)
    return batch, _outputs(model, output, pixels.float(), resized).numpy().astype(np.float32)


def write_case(case: str, directory: str, tiny: bool, seed: int) -> dict:
    """Builds ``case`` in transformers, randomised; ``save_pretrained`` (float16 when tiny)
    and the image processor's ``preprocessor_config.json`` into ``directory``; returns the
    images, the float32 outputs and the config values keras_vit must read."""
    import torch
    transformers, family_parity = _import()
    model_class, config_class, tiny_args, real_args, output, processor, _ = CASES[case]
    args = dict(tiny_args)
    if tiny and "vision_config" not in args:
        args.update(TINY)
    config = getattr(transformers, config_class)(**(args if tiny else real_args))
    model = getattr(transformers, model_class)(config).eval()
    family_parity._randomise(model, seed)
    if tiny:  # stored as float16; transformers computes in float32 with those values
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.half().float())
    # DeiT's hub repositories normalise with ImageNet's mean / std (its class default: 0.5).
    image_processor = getattr(transformers, processor)(**(
        dict(image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])
        if processor.startswith("DeiT") else {}))
    image_processor.save_pretrained(directory)
    vision = getattr(config, "vision_config", config)
    size = EVAL_SIZE.get(case, vision.image_size)
    batch, out = _run(model, output, image_processor, size, size != vision.image_size)
    resized = {other: _run(model, output, image_processor, other, True)
               for other in (RESIZED.get(case, ()) if tiny else ())}
    (model.half() if tiny else model).save_pretrained(directory)
    return {"images": batch, "outputs": out, "resized": resized, "facts": {
        "model_class": model_class, "model_type": config.model_type,
        "layer_norm_eps": vision.layer_norm_eps, "hidden_act": vision.hidden_act,
        "image_size": size, "params": int(sum(p.numel()
                                                           for p in model.parameters()))}}


def fixtures() -> None:
    import torch
    import transformers
    shutil.rmtree(FIXTURES, ignore_errors=True)
    os.makedirs(FIXTURES)
    arrays, facts = {}, {}
    for case in sorted(TINY_CASES):
        found = write_case(case, os.path.join(FIXTURES, case), tiny=True,
                           seed=SEEDS.index(case))
        arrays[case], facts[case] = found["outputs"], found["facts"]
        arrays["images"] = found["images"]
        for size, (images, outputs) in found["resized"].items():
            arrays[f"{case}@{size}"], arrays[f"images@{size}"] = outputs, images
    np.savez(os.path.join(FIXTURES, "reference.npz"), **arrays)
    with open(os.path.join(FIXTURES, "metadata.json"), "w") as f:
        json.dump({"written_by": "benchmarks/transformers_family.py fixtures",
                   "versions": {"torch": torch.__version__,
                                "transformers": transformers.__version__},
                   "cases": facts}, f, indent=2)
        f.write("\n")
    print(f"wrote {FIXTURES}: {', '.join(sorted(TINY_CASES))}")


def torch_case(case: str, directory: str) -> None:
    """The torch half of one real-size case (run in the torch environment)."""
    found = write_case(case, os.path.join(directory, "model"), tiny=False,
                       seed=SEEDS.index(case if case in TINY_CASES else "dinov2"))
    np.savez(os.path.join(directory, "reference.npz"), images=found["images"],
             outputs=found["outputs"])
    with open(os.path.join(directory, "facts.json"), "w") as f:
        json.dump(found["facts"], f)


# ---- keras_vit side ----

def keras_case(case: str, directory: str) -> dict:
    import keras_vit
    with open(os.path.join(directory, "facts.json")) as f:
        facts = json.load(f)
    reference = np.load(os.path.join(directory, "reference.npz"))
    start = time.perf_counter()
    model = keras_vit.from_preset(os.path.join(directory, "model"),
                                  image_size=EVAL_SIZE.get(case))
    out = model(reference["images"].astype(np.float32), training=False).numpy()
    ref = reference["outputs"]
    return {"case": case, "model_class": facts["model_class"], "example": CASES[case][6],
            "params": facts["params"], "image_size": facts["image_size"],
            "output_shape": list(ref.shape),
            "relative_difference": float(np.abs(out - ref).max() / np.abs(ref).max()),
            "seconds": round(time.perf_counter() - start, 1)}


def real(torch_python: str, output: str, cases) -> None:
    from family_parity import cpu_name, run_cases
    results = run_cases(__file__, torch_python, cases)
    write_note({"cpu": cpu_name(), "cores": os.cpu_count(), "threshold": 1e-4,
                "results": results}, output)


def write_note(data: dict, path: str) -> None:
    """The Markdown results note of a ``real`` run (``data``: what it measured)."""
    lines = [
        "# The ViT family from transformers directories at real size (float32)", "",
        f"Machine: {data['cpu']}, {data['cores']} cores shared with other agents (the seconds "
        "are not benchmarks), CPU only; TensorFlow 2.21, Keras 3; torch and transformers in a "
        "separate process. Written by `benchmarks/transformers_family.py real`: each model "
        "class built from its config at real size, every parameter perturbed (no zero bias, "
        "no unit LayerNorm scale), written with `save_pretrained` beside its image "
        "processor's `preprocessor_config.json`, loaded with `keras_vit.from_preset(directory)`"
        " in another process; two random images at the config's size (`dinov2_at_224`: at 224, "
        "keras_vit built with `image_size=224`, transformers interpolating its position "
        "embeddings), [0, 255] pixels into keras_vit, `(x / 255 - mean) / std` (the "
        "processor's) into transformers.", "",
        f"Relative difference = max|keras_vit - transformers| / max|transformers| over the "
        f"outputs; threshold {data['threshold']:g}.", "",
        "| case | transformers class | example hub id | parameters | image size | outputs | "
        "relative difference | keras_vit build + load + run (s) |",
        "|---|---|---|---|---|---|---|---|"]
    for r in data["results"]:
        lines.append(f"| {r['case']} | `{r['model_class']}` | {r['example']} | "
                     f"{r['params']:,} | {r['image_size']} | {tuple(r['output_shape'])} | "
                     f"{r['relative_difference']:.1e} | {r['seconds']} |")
    from family_parity import finish_note
    finish_note(lines, data, path)


def main(argv=None) -> None:
    sys.path.insert(0, HERE)
    from family_parity import command_line
    command_line(argv, __doc__.split("\n")[0], sys.modules[__name__], REAL_CASES)


if __name__ == "__main__":
    main()
