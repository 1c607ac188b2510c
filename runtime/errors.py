"""One error hierarchy for user-facing failures.

The CLI maps every ``CbnetError`` to exit code 1 and a one-line message; anything else is a bug and
keeps its traceback.
"""


class CbnetError(Exception):
    """Base class of every failure a user can cause or fix."""


class DataError(CbnetError):
    """A dataset is missing, malformed or does not match what was asked for."""


class ImageError(CbnetError):
    """An input image cannot be read or has the wrong size or mode."""


class ModelError(CbnetError):
    """A ``.tflite`` file cannot be loaded or does not have the expected inputs and outputs."""


class BundleError(CbnetError):
    """A bundle or build directory is incomplete or its manifest is invalid."""


class ChecksumError(BundleError):
    """A file's sha256 differs from the one recorded in the manifest."""


class InterpreterNotFoundError(CbnetError, ImportError):
    """No TFLite interpreter package is installed."""


class DvfsError(CbnetError):
    """CPU frequency control is unavailable, incomplete or not permitted."""


class CompileError(CbnetError):
    """edgetpu_compiler failed."""


class DeployError(CbnetError):
    """A deployment step failed; the device keeps the version it was running."""


class OutputExistsError(CbnetError):
    """The output directory exists and --force was not given."""


class ConversionError(CbnetError):
    """A model could not be converted, or the converted file does not reproduce the Keras model."""


class QuantizationCheckError(CbnetError):
    """An int8 pipeline lost more accuracy than allowed against its float32 model."""


class MeterError(CbnetError):
    """A power or energy meter cannot be read."""


class ConfigError(CbnetError, ValueError):
    """An option or configuration value is out of its range."""
