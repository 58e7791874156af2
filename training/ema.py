"""An exponential moving average of the model's weights (``--ema-decay``).

After every optimizer step each weight's average moves towards it, ``average = decay *
average + (1 - decay) * weight``, starting from the weights the run starts with (a constant
decay, as timm's ``ModelEmaV2`` that DeiT trains with). The averages are saved in the run's
checkpoints beside the raw weights, so a resume continues them bit for bit; at the end of the
run they are evaluated and become the model that is saved and exported
(:func:`training.trainer._finish`).
"""
from __future__ import annotations

import keras
import tensorflow as tf


class WeightAverage(tf.Module):
    """The moving averages of ``model.weights``. Create it in the strategy's scope (the
    averages are then mirrored like the weights) and checkpoint it with the model."""

    def __init__(self, model, decay: float):
        super().__init__(name="weight_average")
        if not 0 < decay < 1:
            raise ValueError(f"ema-decay must be in (0, 1) (got {decay!r})")
        self.decay = float(decay)
        self._weights = list(model.weights)
        self.averages = [tf.Variable(_variable(w).read_value(), trainable=False,
                                     name=f"average_{i}")
                         for i, w in enumerate(self._weights)]

    def update(self) -> None:
        """One step of every average, in a cross-replica context (after ``strategy.run``):
        each device moves its copy of the average towards its own copy of the weight."""
        strategy = tf.distribute.get_strategy()
        for average, weight in zip(self.averages, self._weights):
            for copy, weight_copy in zip(strategy.experimental_local_results(average),
                                         strategy.experimental_local_results(
                                             _variable(weight))):
                with tf.device(copy.device):
                    copy.assign(self.decay * copy + (1.0 - self.decay) * weight_copy)

    def copy_to_model(self) -> None:
        """Puts the averages into the model's weights (the raw weights stay in the
        checkpoints: call this after the run's last save)."""
        for weight, average in zip(self._weights, self.averages):
            weight.assign(average.read_value())


def _variable(weight):
    """The TensorFlow variable behind a Keras weight (read without autocasting)."""
    return weight.value if isinstance(weight, keras.Variable) else weight
