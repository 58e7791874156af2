"""The training input pipeline against PyTorch's loader, in one run: images/s and peak memory
of keras-vit's ``make_train_pipeline`` (read, decode the inception crop, flip, resize to 224,
batch 128) against torchvision's ``ImageFolder`` + ``RandomResizedCrop(224, scale=(0.05, 1))``
+ ``RandomHorizontalFlip`` + ``ToTensor`` in a ``DataLoader`` with one worker process per
core, on the same folder of generated 500x375 JPEGs; keras-vit also from the same images
prepared (``keras-vit prepare``); and the time to the first batch on 1k and 100k small files.

    python benchmarks/input_pipeline.py --work /tmp/input-bench \\
        --peer-python /work/venv-ref/bin/python [--images 3200] [--repeats 5]

Every measurement is a fresh process (this script with ``--child``; the torchvision one runs
under ``--peer-python``, default this interpreter), started one after the other, the settings
alternating within each repetition (the order rotates), so that drift of a shared machine hits
them alike. Each child reports the time from the start of listing the folder to its first
batch, then images/s from the end of batch ``--warm-batches`` to the end of batch
``--batches``, and images per CPU-second of its process tree over the same batches (the
figure that other jobs on a shared machine disturb least). The parent samples the child's
process tree (every 0.1 s; workers included) for its peak RSS and PSS (PSS shares a page
between the processes that map it, so forked workers are not counted twice).
``--baseline REPO`` also times the first batch with another checkout's code (e.g. main).
Prints the figures as JSON on its last line (``--json`` also writes them to a file).
"""
import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

BATCH = 128
SIZE = 224
CROP_AREA_MIN = 0.05


# --- the children ---------------------------------------------------------------------------

def child_keras_vit(spec, batches, warm):
    from export.startup import start_tensorflow
    start_tensorflow("input_pipeline")
    from training.data import BadImages, load_source, make_train_pipeline

    start = time.perf_counter()
    source = load_source(spec)
    pipeline = make_train_pipeline(source.train, SIZE, BATCH, seed=0,
                                   crop_area_min=CROP_AREA_MIN, flip=True, read=source.read,
                                   bad_images=BadImages())
    return _time_batches(iter(pipeline), start, batches, warm)


def child_torchvision(folder, batches, warm):
    import torch
    from torchvision import datasets, transforms

    start = time.perf_counter()
    transform = transforms.Compose([
        transforms.RandomResizedCrop(SIZE, scale=(CROP_AREA_MIN, 1.0)),
        transforms.RandomHorizontalFlip(), transforms.ToTensor()])
    dataset = datasets.ImageFolder(folder, transform=transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True,
                                         num_workers=os.cpu_count(), drop_last=True)
    return _time_batches(iter(loader), start, batches, warm)


def _time_batches(iterator, start, batches, warm):
    """Time to the first batch from ``start``; images/s from batch ``warm`` to ``batches``."""
    next(iterator)
    figures = {"first_batch_s": time.perf_counter() - start}
    if batches <= 1:
        return figures
    count, clock, cpu = 1, time.perf_counter(), _cpu_seconds(_tree(os.getpid()))
    while count < batches:
        batch = next(iterator, None)
        if batch is None:
            raise SystemExit(f"only {count} batches; make the folder larger or --batches "
                             "smaller")
        count += 1
        if count == warm:
            clock, cpu = time.perf_counter(), _cpu_seconds(_tree(os.getpid()))
    images_timed = (count - warm) * BATCH
    figures["images_per_s"] = images_timed / (time.perf_counter() - clock)
    figures["images_per_cpu_s"] = images_timed / (_cpu_seconds(_tree(os.getpid())) - cpu)
    figures["batch_shape"] = list(batch[0].shape)
    return figures


# --- the parent: data, processes, memory ----------------------------------------------------

def make_jpegs(root, count, size, classes=10, quality=90, distinct=None):
    """``count`` JPEGs of ``size`` (H, W) in ``classes`` folders: smooth random content plus
    grain (about ImageNet's bytes per image at 500x375). ``distinct``: encode only that many
    and write their bytes over and over (for the many-small-files folder)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    encoded = []
    for index in range(count):
        if distinct is None or len(encoded) < distinct:
            coarse = rng.uniform(0, 255, (size[0] // 25 + 1, size[1] // 25 + 1, 3))
            image = np.asarray(Image.fromarray(coarse.astype(np.uint8)).resize(
                (size[1], size[0]), Image.BILINEAR), np.float32)
            image += rng.normal(0, 12, image.shape)
            from io import BytesIO
            buffer = BytesIO()
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(
                buffer, "JPEG", quality=quality)
            encoded.append(buffer.getvalue())
        folder = os.path.join(root, f"class{index % classes:02d}")
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, f"{index:06d}.jpg"), "wb") as f:
            f.write(encoded[index % len(encoded)])


def _tree(pid):
    """``pid`` and its descendants (from /proc)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo:
        tree.append(todo.pop())
        todo += children.get(tree[-1], [])
    return tree


def _cpu_seconds(pids):
    """User + system CPU seconds used so far by ``pids`` (threads included)."""
    ticks = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


def _memory(pids):
    """(RSS, PSS) in bytes, summed over ``pids``."""
    rss = pss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1]) * 1024
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1]) * 1024
        except OSError:
            pass
    return rss, pss


def run_child(python, setting, target, batches, warm, repo=REPO):
    """One measurement in a fresh process (``repo``'s code): its figures plus its tree's peak
    RSS and PSS."""
    command = [python, os.path.abspath(__file__), "--child", setting, "--target", target,
               "--batches", str(batches), "--warm-batches", str(warm)]
    environ = dict(os.environ, PYTHONPATH=repo)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, env=environ, text=True)
    peak_rss = peak_pss = 0
    while process.poll() is None:
        rss, pss = _memory(_tree(process.pid))
        peak_rss, peak_pss = max(peak_rss, rss), max(peak_pss, pss)
        time.sleep(0.1)
    output = process.stdout.read()
    if process.returncode:
        raise SystemExit(f"{setting} failed ({process.returncode}): {' '.join(command)}")
    figures = json.loads(output.strip().splitlines()[-1])
    figures.update(peak_rss_mib=peak_rss / 2 ** 20, peak_pss_mib=peak_pss / 2 ** 20)
    return figures


def alternate(settings, repeats, batches, warm):
    """{name: [figures of each repeat]}: every setting once per repeat, the order rotating.
    A setting is (name, python, child kind, target, repo)."""
    runs = {setting[0]: [] for setting in settings}
    for repeat in range(repeats):
        shift = repeat % len(settings)
        for name, python, kind, target, repo in settings[shift:] + settings[:shift]:
            runs[name].append(run_child(python, kind, target, batches, warm, repo))
            print(name, json.dumps(runs[name][-1]), file=sys.stderr, flush=True)
    return runs


def make_data(args):
    """(folder of 500x375 JPEGs, its prepared dataset, {count: folder of small JPEGs}),
    made once under ``--work``."""
    folder = os.path.join(args.work, f"jpeg-{args.images}")
    prepared = os.path.join(args.work, f"prepared-{args.images}")
    if not os.path.isdir(folder):
        make_jpegs(folder + ".partial", args.images, (375, 500))
        os.rename(folder + ".partial", folder)
    if not os.path.isdir(prepared):
        from export.startup import start_tensorflow
        start_tensorflow("input_pipeline")
        from training.prepare import prepare_dataset
        shutil.rmtree(prepared + ".partial", ignore_errors=True)
        prepare_dataset(f"folder:{folder}", prepared + ".partial")
        os.rename(prepared + ".partial", prepared)
    small = {}
    for count in args.small_files:
        small[count] = os.path.join(args.work, f"small-{count}")
        if not os.path.isdir(small[count]):
            make_jpegs(small[count] + ".partial", count, (32, 32), classes=100, distinct=100)
            os.rename(small[count] + ".partial", small[count])
    return folder, prepared, small


def machine():
    fields = {}
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    flags = fields.get("Flags", "").split()
    return {"cpu": fields.get("Model name", platform.processor()),
            "family": fields.get("CPU family"), "model": fields.get("Model"),
            "cores": os.cpu_count(), "avx2": "avx2" in flags,
            "avx512f": "avx512f" in flags, "python": platform.python_version(),
            "load_average_at_start": os.getloadavg()}


def summarize(runs):
    out = {}
    for key in ("images_per_s", "images_per_cpu_s", "first_batch_s", "peak_rss_mib",
                "peak_pss_mib"):
        values = [run[key] for run in runs if key in run]
        if values:
            best = max(values) if key.startswith("images") else min(values)
            out[key] = {"median": statistics.median(values), "best": best, "all": values}
    return out


def report(figures) -> str:
    """Markdown tables of a run's figures (what the results note quotes)."""
    lines = ["| setting | images/s median | best | images per CPU-second median | "
             "first batch (s) median | peak RSS tree (MiB) median | "
             "peak PSS tree (MiB) median |", "|---|---|---|---|---|---|---|"]
    for name, result in figures["settings"].items():
        lines.append(f"| {name} | {result['images_per_s']['median']:.0f} | "
                     f"{result['images_per_s']['best']:.0f} | "
                     f"{result['images_per_cpu_s']['median']:.0f} | "
                     f"{result['first_batch_s']['median']:.1f} | "
                     f"{result['peak_rss_mib']['median']:.0f} | "
                     f"{result['peak_pss_mib']['median']:.0f} |")
    lines += ["", f"keras-vit / torchvision images/s (folder, medians): "
              f"{figures['ratio_folder_median']:.2f}x", "",
              "| time to the first batch | s median | best | peak PSS tree (MiB) median |",
              "|---|---|---|---|"]
    for name, result in figures["first_batch"].items():
        lines.append(f"| {name} | {result['first_batch_s']['median']:.1f} | "
                     f"{result['first_batch_s']['best']:.1f} | "
                     f"{result['peak_pss_mib']['median']:.0f} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="/tmp/input-bench", help="scratch directory")
    parser.add_argument("--peer-python", default=sys.executable,
                        help="the interpreter with torch and torchvision")
    parser.add_argument("--images", type=int, default=3200, help="500x375 JPEGs to generate")
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--warm-batches", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--small-files", type=int, nargs="*", default=[1000, 100_000],
                        help="file counts for the time to the first batch (32x32 JPEGs)")
    parser.add_argument("--first-batch-repeats", type=int, default=3)
    parser.add_argument("--baseline", metavar="REPO",
                        help="also time the first batch with this checkout's keras-vit code "
                             "(e.g. main, to see a change's effect in the same run)")
    parser.add_argument("--json", help="also write the figures here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--target", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run = {"keras-vit": lambda: child_keras_vit(args.target, args.batches,
                                                    args.warm_batches),
               "torchvision": lambda: child_torchvision(args.target, args.batches,
                                                        args.warm_batches)}[args.child]
        print(json.dumps(run()))  # the code of the repository on PYTHONPATH (run_child)
        return
    sys.path.insert(0, REPO)

    figures = {"machine": machine(), "args": vars(args), "settings": {}, "first_batch": {}}
    folder, prepared, small = make_data(args)
    ours, peer = (sys.executable, "keras-vit"), (args.peer_python, "torchvision")
    runs = alternate([("keras-vit folder", *ours, f"folder:{folder}", REPO),
                      ("torchvision folder", *peer, folder, REPO),
                      ("keras-vit prepared", *ours, f"tfds:{prepared}", REPO)],
                     args.repeats, args.batches, args.warm_batches)
    for name in runs:
        figures["settings"][name] = dict(summarize(runs[name]), runs=runs[name])
    figures["ratio_folder_median"] = (
        figures["settings"]["keras-vit folder"]["images_per_s"]["median"]
        / figures["settings"]["torchvision folder"]["images_per_s"]["median"])
    for count, path in small.items():
        settings = [(f"keras-vit {count} files", *ours, f"folder:{path}", REPO),
                    (f"torchvision {count} files", *peer, path, REPO)]
        if args.baseline:
            settings.append((f"keras-vit {count} files ({args.baseline})", *ours,
                             f"folder:{path}", args.baseline))
        for name, results in alternate(settings, args.first_batch_repeats, 1, 1).items():
            figures["first_batch"][name] = dict(summarize(results), runs=results)
    figures["machine"]["load_average_at_end"] = os.getloadavg()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)
    print(report(figures), file=sys.stderr)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
