"""Keras layers of keras_vit; each is registered for Keras serialization."""
from keras_vit.layers.patch_encoder import PatchEncoder
from keras_vit.layers.patches import Patches
from keras_vit.layers.pooling import AttentionPooling, TokenPooling
from keras_vit.layers.resnet import ResNetUnit, StdConv2D
from keras_vit.layers.transformer import TransformerBlock, drop_path_seed
from keras_vit.layers.validation import ImageValidation

__all__ = ["AttentionPooling", "ImageValidation", "PatchEncoder", "Patches", "ResNetUnit",
           "StdConv2D", "TokenPooling", "TransformerBlock", "drop_path_seed"]
