"""One benchmark setting per process, driven by ``compare.py`` over stdin/stdout.

    python benchmarks/workers.py '{"kind": "keras_vit", "model": "ViT_B16", "dtype": "float32"}'

The worker builds its model, prints ``@@{"ready": ...}``, then answers JSON commands read
from stdin, one a line: ``{"op": "run", "mode": M, "batch": B, "calls": N}`` ->
``@@{"times": [seconds per call]}`` and ``{"op": "exit"}`` -> ``@@{"peak_rss_mb": ...}``.
Each setting runs in its own process so that its peak resident memory is its own and no
framework's thread pools or allocator state leak into another's figures.
"""
import json
import os
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

IMAGE_SIZE = 224
NUM_CLASSES = 1000
# ViT config of each benchmarked variant: patch, width, depth, MLP, heads, timm name.
TIMM_NAMES = {"ViT_Ti16": "vit_tiny_patch16_224", "ViT_S16": "vit_small_patch16_224",
              "ViT_B16": "vit_base_patch16_224"}


def reply(obj):
    print("@@" + json.dumps(obj), flush=True)


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def random_pixels(batch, seed=0):
    import numpy as np
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 255, (batch, IMAGE_SIZE, IMAGE_SIZE, 3)).astype("float32")


def _vit_config(model):
    import keras_vit
    return keras_vit.VARIANTS[model]


def _seed_weights(model):
    """Random weights everywhere (a zero head could let constant folding cheat)."""
    import numpy as np
    rng = np.random.default_rng(0)
    for variable in model.weights:
        variable.assign(rng.normal(0, 0.02, variable.shape).astype("float32"))


# ----------------------------------------------------------------------------- inference

class KerasViT:
    """keras_vit built under the dtype; modes: the model called in a tf.function,
    ``model.predict``, and the folded inference copy (``keras_vit.inference_model``)."""
    modes = ("call", "predict", "inference_model")

    def __init__(self, spec):
        import keras
        import tensorflow as tf

        import keras_vit
        keras.config.set_dtype_policy(spec["dtype"])
        self.model = getattr(keras_vit, spec["model"])(num_classes=NUM_CLASSES)
        _seed_weights(self.model)
        fast = keras_vit.inference_model(self.model, spec["dtype"])
        self.fns = {"call": tf.function(lambda x: self.model(x, training=False)),
                    "inference_model": tf.function(lambda x: fast(x, training=False))}
        self.inputs = {}

    def run(self, mode, batch):
        import tensorflow as tf
        if batch not in self.inputs:
            self.inputs[batch] = tf.constant(random_pixels(batch))
        x = self.inputs[batch]
        if mode == "predict":
            return lambda: self.model.predict(x, batch_size=batch, verbose=0)
        return lambda: self.fns[mode](x).numpy()


class KerasHub:
    """keras-hub's ViTBackbone with the same config, in the same dtype (no head)."""
    modes = ("call",)

    def __init__(self, spec):
        import keras
        import keras_hub
        import tensorflow as tf
        keras.config.set_dtype_policy(spec["dtype"])
        c = _vit_config(spec["model"])
        self.model = keras_hub.models.ViTBackbone(
            image_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), patch_size=c.patch_size,
            num_layers=c.num_layers, num_heads=c.num_heads, hidden_dim=c.hidden_size,
            mlp_dim=c.mlp_size)
        _seed_weights(self.model)
        self.fn = tf.function(lambda x: self.model(x, training=False))
        self.inputs = {}

    def run(self, mode, batch):
        import tensorflow as tf
        if batch not in self.inputs:
            self.inputs[batch] = tf.constant(random_pixels(batch) / 255.0)
        x = self.inputs[batch]
        return lambda: self.fn(x).numpy()


class Timm:
    """timm's ViT on PyTorch CPU, eager, ``inference_mode``; bfloat16 by autocast."""
    modes = ("eager",)

    def __init__(self, spec):
        import timm
        import torch
        torch.manual_seed(0)
        self.torch = torch
        self.model = timm.create_model(TIMM_NAMES[spec["model"]], num_classes=NUM_CLASSES).eval()
        self.bf16 = spec["dtype"] == "bfloat16"
        self.inputs = {}

    def run(self, mode, batch):
        torch = self.torch
        if batch not in self.inputs:
            self.inputs[batch] = torch.from_numpy(random_pixels(batch) / 255.0).permute(
                0, 3, 1, 2).contiguous()
        x = self.inputs[batch]

        def call():
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16,
                                                        enabled=self.bf16):
                return self.model(x).float().numpy()
        return call


class SavedModelSession:
    """An exported version in a TF1 session (the loader TF Serving uses); modes: the
    ``serving_images`` float signature and the ``serving_default`` JPEG-bytes signature."""
    modes = ("images", "bytes")

    def __init__(self, spec):
        import tensorflow as tf
        self.tf = tf
        self.graph = tf.Graph()
        self.sess = tf.compat.v1.Session(graph=self.graph)
        meta = tf.compat.v1.saved_model.loader.load(self.sess, ["serve"], spec["path"])
        self.sigs = {m: meta.signature_def[k] for m, k in
                     (("images", "serving_images"), ("bytes", "serving_default"))}
        self.inputs = {}

    def run(self, mode, batch):
        key = (mode, batch)
        if key not in self.inputs:
            pixels = random_pixels(batch)
            if mode == "bytes":
                from export.warmup import sample_image
                pixels = [self.tf.io.encode_jpeg(sample_image(IMAGE_SIZE, IMAGE_SIZE, i),
                                                 quality=90).numpy() for i in range(batch)]
            self.inputs[key] = pixels
        sig = self.sigs[mode]
        feed = {next(iter(sig.inputs.values())).name: self.inputs[key]}
        fetch = sig.outputs["probabilities"].name
        return lambda: self.sess.run(fetch, feed)


# ----------------------------------------------------------------------------- training

TRAIN_BATCH = 32


def _train_data(batch, seed=0):
    import numpy as np
    labels = np.random.default_rng(seed).integers(0, NUM_CLASSES, batch).astype("int32")
    return random_pixels(batch, seed), labels


class KerasViTTrainer:
    """The keras-vit trainer's own distributed step (training.trainer.make_train_step),
    AdamW as in the pre-training recipe, gradient clipping at global norm 1."""
    modes = ("step",)
    policy = {"float32": "float32", "bfloat16": "mixed_bfloat16"}

    def __init__(self, spec):
        import keras
        import tensorflow as tf

        import keras_vit
        from training.optimizers import make_optimizer
        from training.recipes import RECIPES
        from training.trainer import make_train_step
        keras.config.set_dtype_policy(self.policy[spec["dtype"]])
        strategy = tf.distribute.get_strategy()
        self.model = getattr(keras_vit, spec["model"])(num_classes=NUM_CLASSES)
        recipe = RECIPES["pretrain"].replace(batch_size=TRAIN_BATCH, warmup_steps=10)
        optimizer = make_optimizer(recipe, 1000)
        optimizer.build(self.model.trainable_variables)
        self.step = make_train_step(self.model, optimizer, strategy, TRAIN_BATCH,
                                    clip_global_norm=recipe.clip_global_norm)
        x, y = _train_data(TRAIN_BATCH)
        self.x, self.y = tf.constant(x), tf.constant(y)

    def run(self, mode, batch):
        return lambda: float(self.step(self.x, self.y)[0])


class KerasFit(KerasViTTrainer):
    """``model.compile(AdamW) + model.fit`` with Keras's defaults; each call is one fit step,
    timed by a callback (the step, not fit's set-up)."""

    def __init__(self, spec):
        import keras
        import tensorflow as tf

        import keras_vit
        from training.recipes import NO_WEIGHT_DECAY
        keras.config.set_dtype_policy(self.policy[spec["dtype"]])
        self.model = getattr(keras_vit, spec["model"])(num_classes=NUM_CLASSES)
        optimizer = keras.optimizers.AdamW(1e-4, weight_decay=0.1, global_clipnorm=1.0)
        optimizer.exclude_from_weight_decay(var_names=NO_WEIGHT_DECAY)
        self.model.compile(optimizer=optimizer,
                           loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        x, y = _train_data(TRAIN_BATCH)
        self.data = tf.data.Dataset.from_tensors((x, y)).repeat()
        self.times = []
        times = self.times

        class Timer(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                self.t0 = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                times.append(time.perf_counter() - self.t0)
        self.timer = Timer()

    def run(self, mode, batch):
        def call():
            self.model.fit(self.data, epochs=1, steps_per_epoch=1, verbose=0,
                           callbacks=[self.timer])
        return call

    def measured(self, elapsed):
        return self.times.pop() if self.times else elapsed


class TorchLoop:
    """A plain PyTorch loop: timm ViT, AdamW, cross-entropy, clip_grad_norm_(1.0); bfloat16
    by autocast."""
    modes = ("step",)

    def __init__(self, spec):
        import timm
        import torch
        torch.manual_seed(0)
        self.torch = torch
        self.model = timm.create_model(TIMM_NAMES[spec["model"]], num_classes=NUM_CLASSES)
        self.model.train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.1)
        x, y = _train_data(TRAIN_BATCH)
        self.x = torch.from_numpy(x / 255.0).permute(0, 3, 1, 2).contiguous()
        self.y = torch.from_numpy(y).long()
        self.bf16 = spec["dtype"] == "bfloat16"

    def run(self, mode, batch):
        torch = self.torch

        def call():
            self.opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", torch.bfloat16, enabled=self.bf16):
                loss = torch.nn.functional.cross_entropy(self.model(self.x).float(), self.y)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
            self.opt.step()
            return float(loss)
        return call


# ----------------------------------------------------------------------------- ceilings

MATMUL = (16 * 197, 768, 3072)  # ViT-B/16 batch 16: tokens x width -> MLP width


class TFMatmul:
    """TF's fused matmul + bias + GELU on the 2-D token matrix, weights as a constant."""
    modes = ("matmul",)

    def __init__(self, spec):
        import numpy as np
        import tensorflow as tf
        m, k, n = MATMUL
        dtype = tf.as_dtype(spec["dtype"])
        rng = np.random.default_rng(0)
        a = tf.constant(rng.normal(size=(m, k)), dtype)
        w = tf.constant(rng.normal(size=(k, n)), dtype)
        b = tf.constant(rng.normal(size=(n,)), dtype)
        self.fn = tf.function(lambda: tf.nn.gelu(tf.nn.bias_add(tf.matmul(a, w), b),
                                                 approximate=True))

    def run(self, mode, batch):
        return lambda: self.fn().numpy()


class TorchMatmul:
    """PyTorch's ``nn.Linear`` + GELU on the same shapes (bfloat16: weights and input)."""
    modes = ("matmul",)

    def __init__(self, spec):
        import torch
        m, k, n = MATMUL
        self.torch = torch
        dtype = getattr(torch, spec["dtype"])
        self.linear = torch.nn.Linear(k, n).to(dtype)
        self.x = torch.randn(m, k, dtype=dtype)

    def run(self, mode, batch):
        torch = self.torch

        def call():
            with torch.inference_mode():
                return torch.nn.functional.gelu(self.linear(self.x), approximate="tanh")
        return call


# ----------------------------------------------------------------------------- exports

def export_versions(spec):
    """Writes the SavedModels the session settings load; returns their paths."""
    import keras

    import keras_vit
    from export import export_saved_model
    keras.config.set_dtype_policy("float32")
    model = getattr(keras_vit, spec["model"])(num_classes=NUM_CLASSES)
    _seed_weights(model)
    paths = {}
    for name, frozen, precision in spec["exports"]:
        paths[name] = export_saved_model(model, spec["path"], name=name, frozen=frozen,
                                         precision=precision, warmup=False)
    return paths


WORKERS = {"keras_vit": KerasViT, "keras_hub": KerasHub, "timm": Timm,
           "savedmodel": SavedModelSession, "train_keras_vit": KerasViTTrainer,
           "train_fit": KerasFit, "train_torch": TorchLoop, "matmul_tf": TFMatmul,
           "matmul_torch": TorchMatmul}


def versions():
    """Versions of the frameworks this worker imported."""
    return {name: sys.modules[name].__version__
            for name in ("tensorflow", "keras", "torch", "timm", "keras_hub")
            if name in sys.modules and hasattr(sys.modules[name], "__version__")}


def main(spec):
    if spec["kind"] == "export":
        reply({"paths": export_versions(spec)})
        return
    started = time.perf_counter()
    worker = WORKERS[spec["kind"]](spec)  # imports its framework, builds / loads the model
    start_s = time.perf_counter() - started
    measured = getattr(worker, "measured", lambda elapsed: elapsed)
    onednn = None
    if "tensorflow" in sys.modules:
        from tensorflow.python.util import _pywrap_util_port
        onednn = bool(_pywrap_util_port.IsMklEnabled())
    reply({"ready": True, "modes": list(worker.modes), "onednn": onednn, "start_s": start_s})
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "exit":
            reply({"peak_rss_mb": peak_rss_mb(), "versions": versions()})
            return
        call = worker.run(command["mode"], command["batch"])
        times = []
        for _ in range(command.get("calls", 1)):
            t0 = time.perf_counter()
            call()
            times.append(measured(time.perf_counter() - t0))
        reply({"times": times})


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
