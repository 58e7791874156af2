"""TF Serving export of keras_vit models: signatures, atomic SavedModel writer, warm-up,
verification through the session loader, and clients."""
import keras_vit  # noqa: F401  (first: its TensorFlow runtime defaults, keras_vit/runtime.py)
from export.saved_model import ExportError, export_saved_model, model_at_resolution
from export.verify import verify_export

__all__ = ["ExportError", "export_saved_model", "model_at_resolution", "verify_export"]
