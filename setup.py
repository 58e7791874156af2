"""keras-vit: the Vision Transformer as a Keras 3 / TensorFlow package."""
import re

from setuptools import find_packages, setup

# The one version string lives in keras_vit/version.py (read, not imported: no TensorFlow).
VERSION = re.search(r'__version__ = "([^"]+)"',
                    open("keras_vit/version.py", encoding="utf-8").read()).group(1)

SERVING = ["tensorflow-serving-api>=2.16", "grpcio"]
# timm and transformers checkpoints from the Hugging Face hub (read with numpy, no torch;
# huggingface_hub downloads hf:// handles: keras_vit.from_preset).
HUB = ["safetensors>=0.4", "huggingface_hub>=0.23"]
# keras-vit export --format litert / onnx: the runtimes that check each file, and tf2onnx
# (1.17: numpy 2, with Keras's patch) for the ONNX converter Keras calls.
LITERT = ["ai-edge-litert>=2.3"]
ONNX = ["tf2onnx>=1.17", "onnx", "onnxruntime"]
# The documentation site (mkdocs.yml): File.generated needs MkDocs 1.6; mkdocstrings 1 with
# its Python handler 2 reads the docstrings without importing TensorFlow.
DOCS = ["mkdocs>=1.6", "mkdocs-material>=9.5", "mkdocstrings[python]>=1.0",
        "mkdocstrings-python>=2.0"]

setup(
    name="keras-vit",
    version=VERSION,
    description="Vision Transformer (ViT, ResNet+ViT hybrids) for Keras 3 / TensorFlow: "
                "original checkpoints, tf.distribute training, TF Serving export",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["keras_vit", "keras_vit.*", "training", "training.*",
                                    "export", "export.*"]),
    install_requires=[
        "tensorflow>=2.16",
        "keras>=3.0",
        "numpy",
        "scikit-learn",        # the built-in offline dataset (handwritten digits)
        "tensorflow-datasets",
        "pillow",
        "tensorboard",         # tf.summary (TensorBoard logs of training runs)
        "matplotlib",          # figures of explain, inspect, evaluate --confusion, curves.png
    ],
    extras_require={
        # Protos for the TF Serving warm-up file and the gRPC client.
        "serving": SERVING,
        "hub": HUB,
        "litert": LITERT,
        "onnx": ONNX,
        "docs": DOCS,
        # ruff: the lint of .ci/run (ruff.toml); pytest-xdist: the suite on both cores.
        "test": SERVING + HUB + LITERT + ONNX + ["pytest>=7", "pytest-xdist>=3", "scipy",
                                                "ruff>=0.4"],
        # benchmarks/compare.py: the peers it measures keras-vit against;
        # benchmarks/make_hub_fixtures.py: the libraries whose logits the hub tests check.
        "benchmark": SERVING + HUB + ["torch", "torchvision", "timm", "keras-hub",
                                      "transformers"],
    },
    entry_points={"console_scripts": ["keras-vit=training.cli:main"]},
    license="Apache-2.0",
)
