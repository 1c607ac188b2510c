#!/usr/bin/env python3
"""Run this cbnet-tl bundle (mnist, target rpi4, version 20261130T222354-0735f741).

    python3 run.py selftest
    python3 run.py classify IMAGE_OR_DIR... [--pipeline cbnet|cbnet-fallback|branchynet|lenet] [--json]
    python3 run.py watch --inbox DIR --outbox DIR       (the service; see README.md)
    python3 run.py status --inbox DIR

Needs only numpy, Pillow and a TFLite interpreter (see requirements.txt).
"""
import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REQUIRED = (("numpy", "numpy"), ("PIL", "Pillow"))
INTERPRETERS = (("ai_edge_litert", "ai-edge-litert"), ("tflite_runtime", "tflite-runtime"), ("tensorflow", "tensorflow"))


def _missing() -> list:
    missing = [name for module, name in REQUIRED if importlib.util.find_spec(module) is None]
    if all(importlib.util.find_spec(module) is None for module, _ in INTERPRETERS):
        missing.append(" or ".join(name for _, name in INTERPRETERS[:2]))
    return missing


if __name__ == "__main__":
    missing = _missing()
    if missing:
        print(f"error: {sys.executable} lacks {', '.join(missing)}; install them with: "
              f"{sys.executable} -m pip install -r {HERE / 'requirements.txt'}", file=sys.stderr)
        sys.exit(1)
    sys.path.insert(0, str(HERE / "lib"))
    from cbnet_tl.runtime.cli import main

    sys.exit(main(default_bundle=HERE))
