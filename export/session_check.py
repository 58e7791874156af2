"""Loads a SavedModel version the way TF Serving does (C++ loader into a TF1 session) and
reports what it finds as JSON. Run as a script, never imported by the package, so that the
check runs in a fresh process that imports TensorFlow only (not keras_vit or Keras).

    python export/session_check.py VERSION_DIR [IMAGE_FILE ...]
"""
import json
import os
import sys

FORBIDDEN_OPS = {"PyFunc", "PyFuncStateless", "EagerPyFunc"}


def describe_signatures(meta):
    import tensorflow as tf

    def describe(tensors):
        return {k: {"dtype": tf.dtypes.as_dtype(t.dtype).name if t.dtype else "invalid",
                    "shape": [d.size for d in t.tensor_shape.dim]
                    if not t.tensor_shape.unknown_rank else None}
                for k, t in tensors.items()}
    return {key: {"method": sig.method_name, "inputs": describe(sig.inputs),
                  "outputs": describe(sig.outputs)}
            for key, sig in meta.signature_def.items()
            if not key.startswith("__")}  # __saved_model_init_op


def check_ops(meta):
    """Every node of the graph and its function library against the stock op registry."""
    from tensorflow.python.framework import op_def_registry

    library = meta.graph_def.library
    function_names = {f.signature.name for f in library.function}
    nodes = list(meta.graph_def.node)
    unregistered, forbidden, xla = set(), set(), []
    for function in library.function:
        nodes += list(function.node_def)
        attr = function.attr.get("_XlaMustCompile")
        if attr is not None and attr.b:
            xla.append(function.signature.name)
    for node in nodes:
        if node.op in function_names:
            continue
        if node.op in FORBIDDEN_OPS:
            forbidden.add(node.op)
        elif op_def_registry.get(node.op) is None:
            unregistered.add(node.op)
        attr = node.attr.get("_XlaMustCompile")
        if attr is not None and attr.b:
            xla.append(node.name)
    return {"unregistered_ops": sorted(unregistered), "forbidden_ops": sorted(forbidden),
            "xla_functions": xla}


def _first_line(error):
    return f"{type(error).__name__}: {str(error).splitlines()[0][:300]}"


def replay_warmup(run, version_dir):
    """Runs every warm-up record as TF Serving does on load; reports failing ones."""
    import tensorflow as tf

    result = {"records": 0, "errors": []}
    warmup = os.path.join(version_dir, "assets.extra", "tf_serving_warmup_requests")
    if not os.path.exists(warmup):
        return result
    try:
        from tensorflow_serving.apis import prediction_log_pb2
    except ImportError:
        result["errors"].append("tensorflow-serving-api is not installed: cannot parse the "
                                "warm-up records")
        return result
    for record in tf.compat.v1.io.tf_record_iterator(warmup):
        result["records"] += 1
        try:
            log = prediction_log_pb2.PredictionLog.FromString(record)
            request = log.predict_log.request
            name = request.model_spec.signature_name or "serving_default"
            run(name, {k: tf.make_ndarray(v) for k, v in request.inputs.items()})
        except Exception as error:  # report every failing record
            result["errors"].append(f"record {result['records']}: {_first_line(error)}")
    return result


def predict_files(run, meta, image_files):
    """serving_default on the bytes of ``image_files`` (None without files or signature)."""
    if not image_files or "serving_default" not in meta.signature_def:
        return None
    images = [open(f, "rb").read() for f in image_files]
    sig = meta.signature_def["serving_default"]
    try:
        outputs = run("serving_default", {next(iter(sig.inputs)): images})
    except Exception as error:
        return {"error": _first_line(error)}
    return {k: v.tolist() if v.dtype.kind != "O" else [[s.decode() for s in row] for row in v]
            for k, v in outputs.items()}


def main(version_dir, image_files):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    graph = tf.Graph()
    with tf.compat.v1.Session(graph=graph) as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], version_dir)

        def run(signature_name, feeds):
            sig = meta.signature_def[signature_name]
            feed = {sig.inputs[k].name: v for k, v in feeds.items()}
            names = sorted(sig.outputs)
            values = sess.run([sig.outputs[n].name for n in names], feed_dict=feed)
            return dict(zip(names, values))

        report = {"signatures": describe_signatures(meta), **check_ops(meta),
                  "warmup": replay_warmup(run, version_dir),
                  "predict": predict_files(run, meta, image_files)}
    report["loaded_modules"] = sorted(m for m in ("keras_vit", "training", "export")
                                      if m in sys.modules)
    print(json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
