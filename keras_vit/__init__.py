"""keras-vit: the Vision Transformer (Dosovitskiy et al., arXiv 2010.11929) for Keras 3.

Public API, listed once here. Importing keras_vit changes no environment variable (for
TensorFlow's oneDNN setting see :mod:`keras_vit.runtime`).
"""
import keras as _keras

if _keras.backend.backend() != "tensorflow":
    raise ImportError("keras_vit needs Keras's TensorFlow backend; set KERAS_BACKEND=tensorflow "
                      f"(current backend: {_keras.backend.backend()!r})")

from keras_vit import inspection, layers, metrics, pretrained, weights_kind  # noqa: E402
from keras_vit.checkpoint_architecture import from_timm, from_transformers  # noqa: E402
from keras_vit.checkpoints import (CheckpointError, CheckpointMismatchError,  # noqa: E402
                                   load_pretrained, load_timm, load_transformers)
from keras_vit.convert import convert_checkpoint  # noqa: E402
from keras_vit.hub import from_preset  # noqa: E402
from keras_vit.inference import inference_model  # noqa: E402
from keras_vit.inspection import attention_weights, endpoints_model  # noqa: E402
from keras_vit.metrics import top_k_hits  # noqa: E402
from keras_vit.model_ops import (NO_WEIGHT_DECAY, model_at_resolution,  # noqa: E402
                                 no_weight_decay_variables, rebuild, with_new_head)
from keras_vit.models import (R26_ViT_S32, R50_ViT_B16, R50_ViT_L32, ViT, ViT_B16,  # noqa: E402
                              ViT_B32, ViT_H14, ViT_L16, ViT_L32, ViT_S16, ViT_S32, ViT_Ti16,
                              model_image_size)
from keras_vit.position_embeddings import resize_position_embeddings  # noqa: E402
from keras_vit.preprocessing import preprocess_image  # noqa: E402
from keras_vit.runtime import onednn_enabled  # noqa: E402
from keras_vit.variants import VARIANTS, ViTConfig  # noqa: E402
from keras_vit.version import __version__  # noqa: E402

__all__ = [
    "CheckpointError", "CheckpointMismatchError", "NO_WEIGHT_DECAY", "R26_ViT_S32",
    "R50_ViT_B16", "R50_ViT_L32", "VARIANTS", "ViT", "ViTConfig", "ViT_B16", "ViT_B32",
    "ViT_H14", "ViT_L16", "ViT_L32", "ViT_S16", "ViT_S32", "ViT_Ti16", "__version__",
    "attention_weights", "convert_checkpoint", "endpoints_model", "from_preset", "from_timm",
    "from_transformers", "inference_model", "inspection", "layers", "load_pretrained",
    "load_timm", "load_transformers", "metrics",
    "model_at_resolution", "model_image_size", "no_weight_decay_variables", "onednn_enabled",
    "preprocess_image", "pretrained", "rebuild", "resize_position_embeddings", "top_k_hits",
    "weights_kind", "with_new_head",
]
