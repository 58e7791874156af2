"""TF Serving export of keras_vit models: signatures, atomic SavedModel writer, warm-up,
verification through the session loader, and clients."""
from export.saved_model import ExportError, export_saved_model
from export.verify import verify_export

__all__ = ["ExportError", "export_saved_model", "verify_export"]
