"""Export of keras_vit models: the TF Serving SavedModel (signatures, atomic writer, warm-up,
verification through the session loader, clients) and single LiteRT / ONNX files."""
from export.portable import export_litert, export_onnx
from export.saved_model import ExportError, export_saved_model
from export.verify import verify_export

__all__ = ["ExportError", "export_litert", "export_onnx", "export_saved_model",
           "verify_export"]
