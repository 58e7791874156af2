"""The commands of ``keras-vit`` that :mod:`training` holds, one module each: its arguments,
its TensorFlow-free checks and its run (see :mod:`export.command_line`)."""
