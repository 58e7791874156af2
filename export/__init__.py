"""Export of keras_vit models: the TF Serving SavedModel (signatures, atomic writer, warm-up,
verification through the session loader, clients) and single LiteRT / ONNX files.

Importing the package loads no TensorFlow: the names below are imported on first use, so
``python -m export`` and ``keras-vit`` answer ``--help`` and argument errors at once and
set their TensorFlow defaults before it loads (``export/startup.py``).
"""
import importlib

_EXPORTS = {"ExportError": "export.saved_model", "export_saved_model": "export.saved_model",
            "export_litert": "export.portable", "export_onnx": "export.portable",
            "verify_export": "export.verify"}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'export' has no attribute {name!r}")
