"""The errors of reading weights files: raised by :mod:`keras_vit.checkpoints` and
:mod:`keras_vit.sources` (a module of their own, so that neither imports the other for them)."""


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read, or whose arrays cannot be weights."""


class CheckpointMismatchError(ValueError):
    """A checkpoint that does not fit the model; the message lists every offending key."""
