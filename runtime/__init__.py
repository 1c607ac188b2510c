"""On-device runtime of cbnet-tl: numpy, Pillow, the stdlib and a TFLite interpreter, nothing else.

Importing this package must never load TensorFlow, Keras, jinja2 or typer (tests/test_runtime_light.py).
"""

from cbnet_tl.runtime.errors import (
    BundleError,
    CbnetError,
    ChecksumError,
    DataError,
    DvfsError,
    ImageError,
    InterpreterNotFoundError,
    ModelError,
)

__all__ = [
    "BundleError",
    "CbnetError",
    "ChecksumError",
    "DataError",
    "DvfsError",
    "ImageError",
    "InterpreterNotFoundError",
    "ModelError",
]
