"""The frozen inference graph: a keras_vit model's forward pass with its weights as graph
constants, for the fast CPU serving export.

oneDNN prepares (reorders) constant weights once for its fastest matmul kernels, and
grappler can fold constant subgraphs, neither of which happens for weights read from
variables, unless the server runs with ``TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1``
(:data:`keras_vit.runtime.FROZEN_WEIGHTS_VARIABLE`), which gives the variables export the same
kernels at about a quarter of this graph's memory: TensorFlow copies a graph's constants
several times while loading it (docs/serving.md). The graph is made from
:func:`keras_vit.inference_model` (weights stored in the serving precision, LayerNorm and
attention scale folded), so it holds one implementation of the model, not a second one.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
from tensorflow.python.framework.convert_to_constants import (
    convert_variables_to_constants_v2_as_graph)

from keras_vit import inference_model
from keras_vit.inference import FLOAT32_LAYERS

PRECISIONS = ("float32", "bfloat16")
# A SavedModel's graph is one protocol buffer, which cannot exceed 2 GiB; leave room for
# the serving functions and the warm-up file's metadata.
MAX_FROZEN_BYTES = 1_900_000_000


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


def frozen_bytes(model, precision: str) -> int:
    """Bytes of constants the frozen graph of ``model`` holds in ``precision``."""
    itemsize = 4 if precision == "float32" else 2
    return sum(int(np.prod(w.shape)) * (4 if w.path.split("/")[0] in FLOAT32_LAYERS
                                        else itemsize) for w in model.weights)


def frozen_logits_function(model, image_size, precision: str = "float32"):
    """A function images -> float32 logits with every weight a constant of the graph.

    ``image_size`` fixes the spatial size (the serving functions resize to it), so the
    position-embedding interpolation is not in the graph at all.
    """
    check_precision(precision)
    size = frozen_bytes(model, precision)
    if size > MAX_FROZEN_BYTES:
        raise ValueError(f"{model.name}: a frozen {precision} graph would hold {size / 2**30:.2f}"
                         " GiB of constants, over the 2 GiB limit of a SavedModel graph; "
                         "export it with frozen=False (weights as variables)")
    copy = inference_model(model, precision, name=f"{model.name}_inference")
    height, width = image_size
    channels = model.input_shape[-1]

    @tf.function
    def logits(images):
        return tf.cast(copy(images, training=False), tf.float32)

    spec = tf.TensorSpec((None, height, width, channels), tf.float32, name="images")
    frozen, graph_def = convert_variables_to_constants_v2_as_graph(
        logits.get_concrete_function(spec))
    graph_def = keep_bias_adds(graph_def)
    return graph_function(graph_def, frozen.inputs[0].name, frozen.outputs[0].name, spec)


def keep_bias_adds(graph_def):
    """Makes every ``BiasAdd``'s bias a ``PlaceholderWithDefault`` of its constant.

    In a TF1 session (TF Serving), grappler's constant folding removes an add of an all-zero
    constant (the biases of a fresh model, or of any layer trained without them moving), and
    with it the matmul + bias (+ GELU) and convolution + bias fusions of the oneDNN
    remapper: the frozen graph of a fresh model ran its dense layers as separate matmul,
    Mul, AddV2 and Tanh ops. A ``PlaceholderWithDefault`` computes the same value but is
    never folded (it could be fed), so the fused ops no longer depend on the weights' values.
    """
    graph_def = type(graph_def).FromString(graph_def.SerializeToString())
    nodes = {node.name: node for node in graph_def.node}
    for node in list(graph_def.node):
        if node.op != "BiasAdd":
            continue
        constant = _constant_source(nodes, node.input[1])
        if constant is None:
            continue
        keep = graph_def.node.add(name=f"{node.name}/kept_bias", op="PlaceholderWithDefault",
                                  input=[node.input[1]])
        keep.attr["dtype"].type = node.attr["T"].type
        keep.attr["shape"].shape.CopyFrom(constant.attr["value"].tensor.tensor_shape)
        node.input[1] = keep.name
    return graph_def


def _constant_source(nodes, tensor_name):
    """The ``Const`` node behind ``tensor_name`` through ``Identity`` nodes, or None."""
    node = nodes.get(tensor_name.split(":")[0])
    while node is not None and node.op == "Identity":
        node = nodes.get(node.input[0].split(":")[0])
    return node if node is not None and node.op == "Const" else None


def graph_function(graph_def, input_name: str, output_name: str, spec):
    """A callable running ``graph_def`` (a frozen graph) from one input to one output."""
    def run(images):
        return tf.graph_util.import_graph_def(graph_def, input_map={input_name: images},
                                              return_elements=[output_name], name="")[0]

    function = tf.compat.v1.wrap_function(run, [spec])
    return lambda images: function(images)
