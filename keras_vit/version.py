"""The one version string of keras-vit (setup.py reads it from this file)."""
__version__ = "0.2.0"
