"""Running a LiteRT (``.tflite``) or ONNX (``.onnx``) file with its own runtime: the
``ai_edge_litert`` interpreter and ONNX Runtime's CPU provider."""
from __future__ import annotations

import numpy as np


def litert_interpreter(path: str, num_threads: int = 2):
    """A LiteRT interpreter for ``path`` (XNNPACK on CPU), tensors allocated."""
    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_path=path, num_threads=num_threads)
    interpreter.allocate_tensors()
    return interpreter


def run_litert(interpreter, images: np.ndarray) -> np.ndarray:
    """The file's output for a float32 batch (the input is resized to the batch)."""
    inp = interpreter.get_input_details()[0]
    if tuple(inp["shape"]) != images.shape:
        interpreter.resize_tensor_input(inp["index"], images.shape)
        interpreter.allocate_tensors()
        inp = interpreter.get_input_details()[0]
    interpreter.set_tensor(inp["index"], np.ascontiguousarray(images, np.float32))
    interpreter.invoke()
    return interpreter.get_tensor(interpreter.get_output_details()[0]["index"]).copy()


def onnx_session(path: str, num_threads: int = 2):
    """An ONNX Runtime CPU session for ``path``."""
    import onnxruntime
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = num_threads
    options.inter_op_num_threads = 1
    return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def run_onnx(session, images: np.ndarray) -> np.ndarray:
    name = session.get_inputs()[0].name
    return session.run(None, {name: np.ascontiguousarray(images, np.float32)})[0]


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return f"{type(error).__name__}: {text.splitlines()[0] if text else ''}"


def _run_naming(path: str, fmt: str, run):
    """``run`` whose runtime errors (a file that loads but cannot run these images: LiteRT
    raises a bare RuntimeError) are a ValueError naming the file."""
    def run_named(images):
        try:
            return run(images)
        except (ImportError, OSError, MemoryError):
            raise
        except Exception as error:  # each runtime raises its own types
            raise ValueError(f"{path}: the {fmt} runtime loaded it but could not run it on "
                             f"images of shape {tuple(images.shape)}: "
                             f"{_first_line(error)}") from None
    return run_named


def runner(fmt: str, path: str, num_threads: int = 2):
    """``images -> outputs`` for a ``"litert"`` or ``"onnx"`` file; a file the runtime
    cannot load, or cannot run, is a ValueError naming it."""
    try:
        if fmt == "litert":
            interpreter = litert_interpreter(path, num_threads)
            return _run_naming(path, fmt, lambda images: run_litert(interpreter, images))
        session = onnx_session(path, num_threads)
        return _run_naming(path, fmt, lambda images: run_onnx(session, images))
    except (ImportError, OSError):
        raise
    except Exception as error:  # each runtime raises its own types for a bad file
        raise ValueError(f"{path} is not a {fmt} model its runtime can load: "
                         f"{_first_line(error)}") from None
