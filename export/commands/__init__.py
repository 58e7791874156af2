"""The commands of :mod:`export` (``keras-vit export`` / ``predict``), one module each:
its arguments, its TensorFlow-free checks and its run (see :mod:`export.command_line`)."""
