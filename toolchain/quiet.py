"""Library logs kept off the terminal: TensorFlow's, absl's, CUDA's and the TFLite converter's.

``cbnet-tl`` calls :func:`configure` once, in its entry point and before anything imports TensorFlow, so a
build prints only our own lines and progress bars; ``cbnet-tl --verbose`` shows the library logs.
:func:`captured_stderr` keeps what C++ code writes to file descriptor 2 (the converter's
``fully_quantize: 0, inference_type: 6, ...`` lines) and shows it only when the code inside fails, or when
verbose. Nothing here runs at import time.
"""

from __future__ import annotations

import contextlib
import importlib.abc
import logging
import os
import sys
import tempfile
import warnings
from typing import Iterator

VERBOSE_ENV = "CBNET_TL_VERBOSE"  # "1": show library logs; set by --verbose, read by captured_stderr
LIBRARY_LOGGERS = ("tensorflow", "absl", "keras", "h5py")  # Python loggers shown from ERROR up when quiet
LIBRARY_MODULES = r"(tensorflow|tf_keras|keras|absl|h5py|google\.protobuf|ml_dtypes)(\.|$)"  # their warnings
QUIET_IMPORTS = ("tensorflow",)  # packages whose import writes absl/CUDA lines to fd 2 (before any log level applies)


def is_verbose() -> bool:
    return os.environ.get(VERBOSE_ENV) == "1"


class Captured:
    """What a :func:`captured_stderr` block wrote to file descriptor 2 (filled in when the block ends)."""

    text: str = ""


@contextlib.contextmanager
def captured_stderr() -> Iterator[Captured]:
    """Send file descriptor 2 to a temporary file for the block; on an exception, write what was kept to stderr.

    C++ libraries write to fd 2 directly, so ``contextlib.redirect_stderr`` cannot catch them. When verbose,
    nothing is captured.
    """
    captured = Captured()
    if is_verbose():
        yield captured
        return
    sys.stderr.flush()
    with tempfile.TemporaryFile() as sink:
        saved = os.dup(2)
        os.dup2(sink.fileno(), 2)
        failed = True
        try:
            yield captured
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            captured.text = sink.read().decode("utf-8", errors="replace")
            if failed and captured.text.strip():
                sys.stderr.write(captured.text if captured.text.endswith("\n") else captured.text + "\n")
                sys.stderr.flush()


class _QuietLoader(importlib.abc.Loader):
    """Runs another loader's ``exec_module`` inside :func:`captured_stderr`."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = module.__spec__.loader = self._loader  # the module sees its own loader
        with captured_stderr():
            self._loader.exec_module(module)


class _QuietImports(importlib.abc.MetaPathFinder):
    """Finds the named packages through the other finders and captures fd 2 while each is first imported."""

    def __init__(self, names):
        self.names = set(names)

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in self.names:
            return None
        self.names.discard(fullname)
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _QuietLoader(spec.loader)
                return spec
        return None


ONEDNN_ENV = "TF_ENABLE_ONEDNN_OPTS"


def prefer_onednn() -> None:
    """Let TensorFlow use its oneDNN kernels on every x86 CPU, unless the user chose otherwise.

    TensorFlow's x86 wheels turn oneDNN on by themselves only on CPUs with AVX-512 VNNI or newer. On an
    AVX2-only AMD EPYC, B-LeNet's training steps took 2.9x more CPU time without it (the weight gradients
    of its 1- and 5-channel convolutions: 25.8 ms against 2.2 ms per step); the same seed still gives the
    same weights run after run. Read once, when TensorFlow is imported: call this before.
    """
    os.environ.setdefault(ONEDNN_ENV, "1")


def configure(verbose: bool) -> None:
    """Quiet the libraries for this process (and its children), or, when ``verbose``, let them speak.

    Must run before TensorFlow is first imported: its C++ log level is read then, and the absl and CUDA
    lines it writes while loading come before any level applies (so that import runs with fd 2 captured).
    """
    if verbose:
        os.environ[VERBOSE_ENV] = "1"
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
        return
    os.environ[VERBOSE_ENV] = "0"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # 3: also the cuInit error of a machine without a GPU
    from cbnet_tl.runtime.interpreter import set_load_context

    set_load_context(captured_stderr)  # the interpreter's "Created ... XNNPACK delegate" INFO line
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)  # tf.function retracing warnings, absl, Keras
    warnings.filterwarnings("ignore", module=LIBRARY_MODULES)
    if "tensorflow" not in sys.modules and not any(isinstance(f, _QuietImports) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietImports(QUIET_IMPORTS))
