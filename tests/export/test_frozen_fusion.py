"""The frozen serving graph keeps its oneDNN fusions, whatever the weights' values.

A fresh subprocess turns oneDNN on (TF_ENABLE_ONEDNN_OPTS=1) before TensorFlow loads,
exports a tiny model frozen, loads it the way TF Serving does (TF1 session from the
SavedModel loader), runs the ``serving_images`` signature once and reads back the graph that
actually ran (``RunMetadata.partition_graphs``: after grappler and the oneDNN rewrite).
Every dense matmul must be fused with its bias add, the MLP's first one also with GELU, and
the patch-embedding convolution with its bias: in float32 and bfloat16, with random biases
and with all-zero ones (a fresh model), where grappler's constant folding used to remove the
zero bias adds and with them every fusion. In bfloat16 the blocks cast only around the
softmax. Exact (erf) GELU, the numerics of timm and transformers checkpoints, fuses too
(``GeluExact``).

What oneDNN does with bfloat16 depends on the CPU: TensorFlow routes bfloat16 through oneDNN
only on CPUs with AVX-512F or AVX-NE-CONVERT (``keras_vit.runtime.onednn_bfloat16_native``,
TensorFlow's own rule; the suite's first line names the CPU and the answer). Elsewhere (AVX2
CPUs such as AMD Zen 1-3) bfloat16 matmuls and convolutions stay TensorFlow's Eigen kernels,
and the tests assert the structure those should have instead: each a plain op feeding its
own bias add (never folded away, zero biases included) and one GELU per block, while the
float32 head stays fused.
"""
import json

import pytest

from keras_vit.runtime import onednn_bfloat16_native
from tests.conftest import TINY, run_python

BFLOAT16_NATIVE = onednn_bfloat16_native()

_TRACE = r"""
import json, os, sys, tempfile
import numpy as np
import tensorflow as tf
import keras_vit
from export import export_saved_model
from tests.conftest import TINY, perturb

def trace(version_dir):
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    with tf.compat.v1.Session(graph=tf.Graph()) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], version_dir)
        sig = meta.signature_def["serving_images"]
        metadata = tf.compat.v1.RunMetadata()
        sess.run(sig.outputs["probabilities"].name, {sig.inputs["images"].name: images},
                 options=tf.compat.v1.RunOptions(output_partition_graphs=True),
                 run_metadata=metadata)
    return [{"op": n.op, "name": n.name,
             "fused_ops": [s.decode() for s in n.attr["fused_ops"].list.s],
             "dtype": tf.dtypes.as_dtype(n.attr["T"].type).name if n.attr["T"].type else None,
             "inputs": [i.lstrip("^").split(":")[0] for i in n.input]}
            for graph in metadata.partition_graphs for n in graph.node
            if n.op not in ("Const", "Identity", "NoOp", "_Arg", "_Retval")]

report = {}
base = tempfile.mkdtemp()
for case, gelu in (("random biases", "tanh"), ("zero biases", "tanh"), ("erf gelu", "erf")):
    model = perturb(keras_vit.ViT(image_size=32, num_classes=5, name="tiny", gelu=gelu, **TINY),
                    scale=0.1)
    if case == "zero biases":  # what a fresh model has: zero biases and LayerNorm offsets
        for variable in model.weights:
            if variable.path.endswith(("bias", "beta")):
                variable.assign(np.zeros(variable.shape, variable.dtype))
    for precision in ("float32", "bfloat16"):
        path = export_saved_model(model, base, name=f"{precision}_{case.replace(' ', '_')}",
                                  frozen=True, precision=precision, warmup=False)
        report[f"{precision}/{case}"] = trace(path)
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def traced():
    out = run_python(_TRACE, env={"TF_ENABLE_ONEDNN_OPTS": "1"})
    return json.loads(out.strip().splitlines()[-1])


CASES = ["float32/random biases", "float32/zero biases", "bfloat16/random biases",
         "bfloat16/zero biases", "float32/erf gelu", "bfloat16/erf gelu"]


def _describe(nodes):
    return "\n".join(f"  {n['op']} {n['fused_ops']} ({n['name']})" for n in nodes)


def _fused_on_this_cpu(case):
    return case.startswith("float32") or BFLOAT16_NATIVE


def _gelu_op(case, fused):
    if fused:
        return "GeluExact" if "erf" in case else "GeluApproximate"
    return "Erfc" if "erf" in case else "Tanh"  # Keras's exact GELU computes erfc


def _consumers(nodes, node):
    return [n for n in nodes if node["name"] in n["inputs"]]


def _dense(nodes):
    return [n for n in nodes if "MatMul" in n["op"] and "BatchMatMul" not in n["op"]]


@pytest.mark.parametrize("case", CASES)
def test_every_dense_matmul_is_fused_with_its_bias(traced, case):
    nodes = traced[case]
    dense = _dense(nodes)
    # Per block: qkv, attention output, MLP 1, MLP 2; then the classification head.
    assert len(dense) == 4 * TINY["num_layers"] + 1, _describe(nodes)
    if not _fused_on_this_cpu(case):
        _assert_unfused_bfloat16_dense(nodes, dense, case)
        return
    unfused = [n for n in dense if "FusedMatMul" not in n["op"]
               or n["fused_ops"][:1] != ["BiasAdd"]]
    assert not unfused, f"{case}: dense matmuls without a fused bias:\n{_describe(unfused)}"
    gelu = [n for n in dense if n["fused_ops"] == ["BiasAdd", _gelu_op(case, fused=True)]]
    assert len(gelu) == TINY["num_layers"], \
        f"{case}: expected one matmul + bias + GELU per block (the MLP's first dense):\n" \
        f"{_describe(dense)}"


def _assert_unfused_bfloat16_dense(nodes, dense, case):
    """Without native bfloat16 each block matmul is Eigen's bfloat16 MatMul feeding its own
    BiasAdd (kept even when the bias is zero), one GELU per block, and the float32 head is
    still fused with its bias."""
    blocks = [n for n in dense if "encoderblock" in n["name"]]
    head = [n for n in dense if "/head" in n["name"]]
    assert len(head) == 1, _describe(dense)
    head = head[0]
    assert [(n["op"], n["dtype"]) for n in blocks] == \
        [("MatMul", "bfloat16")] * (4 * TINY["num_layers"]), _describe(dense)
    without_bias = [n for n in blocks
                    if [c["op"] for c in _consumers(nodes, n)] != ["BiasAdd"]]
    assert not without_bias, \
        f"{case}: block matmuls not followed by their own bias add:\n{_describe(without_bias)}"
    gelu = [n for n in nodes if n["op"] == _gelu_op(case, fused=False) and "Gelu" in n["name"]]
    assert len(gelu) == TINY["num_layers"], _describe(nodes)
    assert (head["op"], head["dtype"], head["fused_ops"]) == \
        ("_MklNativeFusedMatMul", "float32", ["BiasAdd"]), _describe([head])


@pytest.mark.parametrize("case", CASES)
def test_patch_embedding_convolution_is_fused_with_its_bias(traced, case):
    nodes = traced[case]
    convolutions = [n for n in nodes if "Conv2D" in n["op"]]
    if _fused_on_this_cpu(case):
        assert [(n["op"], n["fused_ops"]) for n in convolutions] == \
            [("_MklNativeFusedConv2D", ["BiasAdd"])], _describe(convolutions)
    else:  # Eigen's bfloat16 convolution, its bias add kept as the next op
        assert [(n["op"], n["dtype"]) for n in convolutions] == [("Conv2D", "bfloat16")], \
            _describe(convolutions)
        assert [c["op"] for c in _consumers(nodes, convolutions[0])] == ["BiasAdd"], \
            _describe(nodes)


@pytest.mark.parametrize("case", ["bfloat16/random biases", "bfloat16/zero biases"])
def test_bfloat16_blocks_cast_only_around_the_softmax(traced, case):
    """Folded bfloat16 blocks compute LayerNorm statistics in bfloat16: no casts of the token
    stream; the softmax keeps its float32 round trip (2 casts per block)."""
    casts = [n for n in traced[case] if n["op"] == "Cast" and "encoderblock" in n["name"]]
    assert len(casts) == 2 * TINY["num_layers"], _describe(casts)
