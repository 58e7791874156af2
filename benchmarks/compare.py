"""keras-vit against its peers on this machine, in one run: inference, training, ceilings.

    pip install ".[benchmark]"
    python benchmarks/compare.py                      # the full run (about 40 min, 2 cores)
    python benchmarks/compare.py --models ViT_Ti16 --batches 1 16 --no-training   # minutes

Inference (images/s; latency at batch 1), ViT-Ti/16, S/16, B/16 at 224, float32 and
bfloat16, per setting:
- keras_vit: the Keras model called in a ``tf.function``, ``model.predict``, and the folded
  copy ``keras_vit.inference_model(model, dtype)``; the model is built under the dtype policy
  (``"bfloat16"``: weights stored in bfloat16);
- the exported SavedModel loaded through the TF1-session loader (what TF Serving runs):
  weights as variables (the default export), and frozen (``export_saved_model(...,
  frozen=True, precision=dtype)``) fed float pixels and JPEG bytes (the difference is the
  in-graph decoding's cost);
- "weight cache": the same process with ``TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1`` (oneDNN keeps
  its reordered weights as it does for a frozen graph's constants; docs/serving.md);
- keras-hub's ``ViTBackbone`` with the same config and dtype (TF backend, no head);
- timm's ViT on PyTorch CPU, eager under ``inference_mode``, bfloat16 by autocast.
Training, ViT-S/16 batch 32 (images/s): the keras-vit trainer's step
(``training.trainer.make_train_step``), ``model.fit``, and a plain PyTorch loop (timm, AdamW,
clipping), float32 and bfloat16 (Keras ``mixed_bfloat16``, torch autocast). Ceilings: each
framework's fused matmul + bias + GELU on ViT-B/16's MLP shapes (GFLOP/s).

Every setting runs in its own process (its peak resident memory is reported, and "start s":
how long it took to import its framework and build the model or load the SavedModel); the settings
of one model and dtype are interleaved call by call after a warm-up, and the median is
reported, so that drift of the shared machine hits them alike. A setting whose call would
take longer than ``--max-call-seconds`` is measured once (marked ``~``) or skipped. Prints
markdown tables and writes JSON (``--json``). Compare ratios within one run only.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "workers.py")
MODELS = ("ViT_Ti16", "ViT_S16", "ViT_B16")
ONEDNN_OFF = {"TF_ENABLE_ONEDNN_OPTS": "0"}
# oneDNN's weight cache (keras_vit.runtime.FROZEN_WEIGHTS_VARIABLE): the serving setting
# of docs/serving.md.
WEIGHT_CACHE = {"TF_ONEDNN_ASSUME_FROZEN_WEIGHTS": "1"}
INFERENCE = [  # label, worker kind, export (for sessions), mode[, extra environment]
    ("keras_vit, Keras call", "keras_vit", None, "call"),
    ("keras_vit, Keras call, oneDNN off", "keras_vit", None, "call", ONEDNN_OFF),
    ("keras_vit, model.predict", "keras_vit", None, "predict"),
    ("keras_vit, inference_model", "keras_vit", None, "inference_model"),
    ("keras_vit, inference_model, weight cache", "keras_vit", None, "inference_model",
     WEIGHT_CACHE),
    ("SavedModel, variables (session)", "savedmodel", "variables", "images"),
    ("SavedModel, variables, weight cache", "savedmodel", "variables", "images", WEIGHT_CACHE),
    ("SavedModel, frozen (session)", "savedmodel", "frozen", "images"),
    ("SavedModel, frozen, JPEG bytes", "savedmodel", "frozen", "bytes"),
    ("keras-hub ViTBackbone", "keras_hub", None, "call"),
    ("timm (PyTorch eager)", "timm", None, "eager"),
]
TORCH = "timm (PyTorch eager)"
HUB = "keras-hub ViTBackbone"
TRAINING = [("keras_vit trainer step", "train_keras_vit"), ("keras_vit model.fit", "train_fit"),
            ("PyTorch loop (timm)", "train_torch")]


class Worker:
    """One benchmark process (see workers.py)."""

    def __init__(self, spec, log, env=None):
        self.spec, self.error, self.peak_rss_mb, self.versions = spec, None, None, {}
        self.start_s = None
        self.proc = subprocess.Popen([sys.executable, WORKER, json.dumps(spec)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=log, text=True, bufsize=1,
                                     env=dict(os.environ, **(env or {})))
        ready = self._read()
        self.onednn = ready.get("onednn") if ready else None
        self.start_s = ready.get("start_s") if ready else None
        if ready is None:
            self.error = f"{spec['kind']} failed to start (see the log)"

    def _read(self):
        for line in self.proc.stdout:
            if line.startswith("@@"):
                return json.loads(line[2:])
        return None

    def call(self, mode, batch, calls=1):
        if self.error:
            return None
        self.proc.stdin.write(json.dumps({"op": "run", "mode": mode, "batch": batch,
                                          "calls": calls}) + "\n")
        answer = self._read()
        if answer is None:
            self.error = f"{self.spec['kind']} died at {mode} batch {batch} (see the log)"
            return None
        return answer["times"]

    def close(self):
        if not self.error:
            self.proc.stdin.write(json.dumps({"op": "exit"}) + "\n")
            answer = self._read() or {}
            self.peak_rss_mb = answer.get("peak_rss_mb")
            self.versions = answer.get("versions", {})
        self.proc.stdin.close()
        self.proc.wait(timeout=120)


def interleaved(settings, batches, repeats, cap, warmup_calls):
    """settings: {label: (worker, mode)} -> {label: {batch: result}}, interleaved per call."""
    results = {label: {} for label in settings}
    last = {}
    for batch in batches:
        active = []
        for label, (worker, mode) in settings.items():
            if worker.error:
                results[label][batch] = {"error": worker.error}
                continue
            if label in last:  # extrapolate from the previous batch size
                estimate = last[label][1] * batch / last[label][0]
                if estimate > cap:
                    results[label][batch] = {"skipped": f"estimated {estimate:.0f} s a call"}
                    continue
            times = worker.call(mode, batch, warmup_calls if batch == 1 else 1)
            if times is None:
                results[label][batch] = {"error": worker.error}
                continue
            last[label] = (batch, times[-1])
            if times[-1] > cap:  # too slow to repeat: one measurement
                results[label][batch] = {"times": times[-1:], "single": True}
            else:
                active.append(label)
                results[label][batch] = {"times": []}
        for _ in range(repeats):
            for label in active:
                worker, mode = settings[label]
                times = worker.call(mode, batch)
                if times is not None:
                    results[label][batch]["times"] += times
        for label in active:
            if not results[label][batch]["times"]:
                results[label][batch] = {"error": settings[label][0].error}
        for label in settings:
            r = results[label][batch]
            if r.get("times"):
                r["median_s"] = statistics.median(r["times"])
                r["images_per_s"] = batch / r["median_s"]
    return results


def run_inference(args, export_dir, log):
    rows = []
    for model in args.models:
        exports = [(f"{dtype}-variables", False, dtype) for dtype in args.dtypes] + \
                  [(f"{dtype}-frozen", True, dtype) for dtype in args.dtypes]
        print(f"[{model}] exporting {len(exports)} SavedModels", flush=True)
        exporter = subprocess.run(
            [sys.executable, WORKER, json.dumps({"kind": "export", "model": model,
                                                 "path": os.path.join(export_dir, model),
                                                 "exports": exports})],
            stdout=subprocess.PIPE, stderr=log, text=True)
        answer = [json.loads(line[2:]) for line in exporter.stdout.splitlines()
                  if line.startswith("@@")]
        paths = answer[0]["paths"] if answer else {}
        for dtype in args.dtypes:
            print(f"[{model} {dtype}] starting workers", flush=True)
            workers, settings = {}, {}
            for label, kind, export, mode, *env in INFERENCE:
                env = env[0] if env else {}
                key = (kind, export, tuple(env.items()))
                if key not in workers:
                    spec = {"kind": kind, "model": model, "dtype": dtype}
                    if export:
                        spec["path"] = paths.get(f"{dtype}-{export}", "missing export")
                    workers[key] = Worker(spec, log, env)
                settings[label] = (workers[key], mode)
            t0 = time.time()
            results = interleaved(settings, args.batches, args.repeats, args.max_call_seconds,
                                  warmup_calls=2)
            for worker in workers.values():
                worker.close()
            print(f"[{model} {dtype}] measured in {time.time() - t0:.0f} s", flush=True)
            for label, (worker, _mode) in settings.items():
                rows.append({"model": model, "dtype": dtype, "setting": label,
                             "results": results[label], "peak_rss_mb": worker.peak_rss_mb,
                             "start_s": worker.start_s, "onednn": worker.onednn,
                             "versions": worker.versions})
    return rows


def run_training(args, log):
    rows = []
    for dtype in args.dtypes:
        print(f"[training {args.train_model} {dtype}] starting workers", flush=True)
        settings = {label: (Worker({"kind": kind, "model": args.train_model, "dtype": dtype},
                                   log), "step") for label, kind in TRAINING}
        results = interleaved(settings, [32], args.train_steps, args.max_call_seconds,
                              warmup_calls=2)
        for label, (worker, _) in settings.items():
            worker.close()
            rows.append({"model": args.train_model, "dtype": dtype, "setting": label,
                         "results": results[label], "peak_rss_mb": worker.peak_rss_mb})
    return rows


def run_ceilings(args, log):
    from workers import MATMUL
    m, k, n = MATMUL
    rows = []
    for dtype in args.dtypes:
        settings = {label: (Worker({"kind": kind, "dtype": dtype}, log), "matmul")
                    for label, kind in (("TensorFlow", "matmul_tf"),
                                        ("PyTorch", "matmul_torch"))}
        results = interleaved(settings, [1], 5, args.max_call_seconds, warmup_calls=2)
        for label, (worker, _) in settings.items():
            worker.close()
            r = results[label][1]
            rows.append({"framework": label, "dtype": dtype, "shape": [m, k, n],
                         "gflops": 2 * m * k * n / r["median_s"] / 1e9 if "median_s" in r
                         else None, "results": r})
    return rows


def _cell(result, batch, reference=None):
    if "images_per_s" not in result:
        return "skipped" if "skipped" in result else "failed"
    text = ("~" if result.get("single") else "") + f"{result['images_per_s']:.2f}"
    if batch == 1:
        text += f" ({result['median_s'] * 1000:.0f} ms)"
    if reference and "images_per_s" in reference:
        text += f" {result['images_per_s'] / reference['images_per_s']:.2f}x"
    return text


def _ratio(rows, num, den, model, dtype, batch):
    pick = {r["setting"]: r["results"].get(batch, {}) for r in rows
            if r["model"] == model and r["dtype"] == dtype}
    a, b = pick.get(num, {}), pick.get(den, {})
    if "images_per_s" in a and "images_per_s" in b:
        return a["images_per_s"] / b["images_per_s"]
    return None


def report(args, inference, training, ceilings):
    out = []
    if inference:
        head = " | ".join(f"batch {b}" for b in args.batches)
        out += [f"### Inference at 224, images/s (batch 1: latency), x = ratio to {TORCH} "
                "in the same dtype", "",
                f"| model | dtype | setting | {head} | peak RSS MiB | start s |",
                "|---|---|---|" + "---|" * len(args.batches) + "---|---|"]
        for r in inference:
            ref = next((x for x in inference if x["model"] == r["model"]
                        and x["dtype"] == r["dtype"] and x["setting"] == TORCH), None)
            cells = " | ".join(_cell(r["results"].get(b, {}), b,
                                     ref["results"].get(b) if ref and ref is not r else None)
                               for b in args.batches)
            rss = f"{r['peak_rss_mb']:.0f}" if r["peak_rss_mb"] else "-"
            start = f"{r['start_s']:.1f}" if r.get("start_s") is not None else "-"
            out.append(f"| {r['model']} | {r['dtype']} | {r['setting']} | {cells} | {rss} "
                       f"| {start} |")
        out.append("")
    if training:
        out += [f"### Training {args.train_model}, batch 32, images/s (median step)", "",
                "| dtype | setting | images/s | x PyTorch loop | peak RSS MiB |",
                "|---|---|---|---|---|"]
        for r in training:
            ref = next(x for x in training if x["dtype"] == r["dtype"]
                       and x["setting"] == TRAINING[-1][0])
            res, ref_res = r["results"][32], ref["results"][32]
            rate = _cell(res, 32)
            ratio = (f"{res['images_per_s'] / ref_res['images_per_s']:.2f}x"
                     if "images_per_s" in res and "images_per_s" in ref_res else "-")
            rss = f"{r['peak_rss_mb']:.0f}" if r["peak_rss_mb"] else "-"
            out.append(f"| {r['dtype']} | {r['setting']} | {rate} | {ratio} | {rss} |")
        out.append("")
    if ceilings:
        out += ["### Matmul + bias + GELU ceiling, (3152 x 768) @ (768 x 3072), GFLOP/s", "",
                "| dtype | TensorFlow | PyTorch |", "|---|---|---|"]
        for dtype in args.dtypes:
            g = {r["framework"]: r["gflops"] for r in ceilings if r["dtype"] == dtype}
            out.append(f"| {dtype} | " + " | ".join(
                f"{g[f]:.0f}" if g.get(f) else "failed" for f in ("TensorFlow", "PyTorch"))
                + " |")
        out.append("")
    if inference:
        out += ["### Ratios", ""]
        for model in args.models:
            for dtype in args.dtypes:
                for batch in args.batches:
                    parts = []
                    for label, num, den in (
                            ("frozen SavedModel / PyTorch", "SavedModel, frozen (session)", TORCH),
                            ("keras_vit call / PyTorch", "keras_vit, Keras call", TORCH),
                            ("keras_vit call / keras-hub", "keras_vit, Keras call", HUB),
                            ("oneDNN on / off", "keras_vit, Keras call",
                             "keras_vit, Keras call, oneDNN off"),
                            ("frozen / variables SavedModel", "SavedModel, frozen (session)",
                             "SavedModel, variables (session)"),
                            ("variables + weight cache / PyTorch",
                             "SavedModel, variables, weight cache", TORCH),
                            ("variables + weight cache / frozen",
                             "SavedModel, variables, weight cache",
                             "SavedModel, frozen (session)"),
                            ("inference_model + weight cache / PyTorch",
                             "keras_vit, inference_model, weight cache", TORCH),
                            ("JPEG-bytes / float signature speed",
                             "SavedModel, frozen, JPEG bytes",
                             "SavedModel, frozen (session)")):
                        value = _ratio(inference, num, den, model, dtype, batch)
                        if value is not None:
                            parts.append(f"{label} {value:.2f}x")
                    out.append(f"- {model} {dtype} batch {batch}: " + "; ".join(parts))
        out.append("")
    return "\n".join(out)


def machine():
    from keras_vit.runtime import cpu_description  # the one reader of /proc/cpuinfo
    info = cpu_description()
    name = info["name"]
    if info["family"] is not None:  # "AMD EPYC" alone does not say which generation
        name += f" (family {info['family']}, model {info['model']})"
    wanted = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile")
    return {"cpu": name, "cores": os.cpu_count(),
            "isa": [f for f in wanted if f in info["flags"]],
            "python": platform.python_version()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS),
                        choices=list(MODELS))
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"],
                        choices=["float32", "bfloat16"])
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 16, 64])
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per setting")
    parser.add_argument("--max-call-seconds", type=float, default=45.0)
    parser.add_argument("--train-model", default="ViT_S16", choices=list(MODELS))
    parser.add_argument("--train-steps", type=int, default=4, help="timed steps per setting")
    parser.add_argument("--no-inference", action="store_true")
    parser.add_argument("--no-training", action="store_true")
    parser.add_argument("--no-ceilings", action="store_true")
    parser.add_argument("--json", default="benchmark_results.json")
    parser.add_argument("--log", default="benchmark.log", help="the workers' stderr")
    args = parser.parse_args()
    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores, ISA {' '.join(info['isa'])}",
          flush=True)
    # Every TensorFlow process with oneDNN on (what `import keras_vit` sets by default), so
    # that keras-hub gets the same runtime; one extra setting shows keras_vit without it.
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    start = time.time()
    with open(args.log, "w") as log, tempfile.TemporaryDirectory() as export_dir:
        ceilings = [] if args.no_ceilings else run_ceilings(args, log)
        inference = [] if args.no_inference else run_inference(args, export_dir, log)
        training = [] if args.no_training else run_training(args, log)
    versions = {}
    for row in inference:
        versions.update(row.get("versions") or {})
    text = report(args, inference, training, ceilings)
    print(f"\n## keras-vit benchmark: {info['cpu']}, {info['cores']} cores "
          f"({', '.join(info['isa'])}); "
          + ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))
          + f"; {(time.time() - start) / 60:.0f} min\n")
    print(text)
    with open(args.json, "w") as f:
        json.dump({"machine": info, "versions": versions, "args": vars(args),
                   "inference": inference, "training": training, "ceilings": ceilings}, f,
                  indent=1)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    main()
