"""Reduce the encoded sequence to one vector: the class token or the mean of the tokens."""
from __future__ import annotations

import keras
import tensorflow as tf

CLASSIFIERS = ("token", "gap")


@keras.saving.register_keras_serializable(package="keras_vit")
class TokenPooling(keras.layers.Layer):
    """``"token"``: the class token's output (token 0); ``"gap"``: the mean of all tokens.

    Args:
        classifier: ``"token"`` or ``"gap"``.
        **kwargs: ``keras.layers.Layer`` arguments (name, dtype).
    """

    def __init__(self, classifier: str = "token", **kwargs):
        super().__init__(**kwargs)
        if classifier not in CLASSIFIERS:
            raise ValueError(f"classifier must be one of {CLASSIFIERS}, got {classifier!r}")
        self.classifier = classifier

    def call(self, tokens):
        if self.classifier == "token":
            return tokens[:, 0]
        return tf.reduce_mean(tokens, axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[2])

    def get_config(self):
        config = super().get_config()
        config.update(classifier=self.classifier)
        return config
