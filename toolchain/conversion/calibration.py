"""How many calibration samples int8 needs: convert one model at a few calibration sizes and score each.

Each size converts the Keras model with the build's own converter (``convert.to_tflite``) on the
first N calibration samples, and scores the int8 file through our runtime (``runtime.interpreter.Model``),
so the figures are what a user would ship.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from cbnet_tl.runtime.errors import ConfigError

DEFAULT_SIZES = (10, 50, 100, 500)


def _as_inputs(images: np.ndarray, raw_pixels: bool) -> np.ndarray:
    """uint8 (N, H, W, C) images as the float inputs the model takes (pixel values for a raw-pixel model,
    [0, 1] otherwise); float inputs pass through."""
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images.astype(np.float32) if raw_pixels else images.astype(np.float32) / np.float32(255.0)
    return images.astype(np.float32)


def calibration_sweep(spec_or_model, images: np.ndarray, labels: np.ndarray,
                      sizes: Sequence[int] = DEFAULT_SIZES, calibration: Optional[np.ndarray] = None,
                      output_name: Optional[str] = None, batch_size: int = 250) -> list:
    """Top-1 int8 accuracy of one classifier at each calibration size: ``[{samples, int8_accuracy}, ...]``.

    ``spec_or_model``: a ``convert.ModelSpec`` (its ``representative`` is the calibration pool) or a Keras
    model (then pass ``calibration``). ``images``/``labels``: the evaluation set (uint8 images or model
    inputs). ``output_name``: which output holds the logits (default: the spec's ``"logits"`` or the
    only output). Sizes larger than the pool are clipped to the pool and reported as used.
    """
    from cbnet_tl.runtime.files import write_bytes_atomic
    from cbnet_tl.runtime.interpreter import Model
    from cbnet_tl.toolchain.conversion.convert import ModelSpec, Precision, to_tflite

    input_type = "int8"
    if isinstance(spec_or_model, ModelSpec):
        model, pool = spec_or_model.model, spec_or_model.representative if calibration is None else calibration
        names, input_type = spec_or_model.output_names, spec_or_model.input_type
    else:
        model, pool, names = spec_or_model, calibration, tuple(o.name for o in spec_or_model.outputs)
    if pool is None or len(pool) == 0:
        raise ConfigError("Expected calibration samples for a bare Keras model. Received: none")
    if not sizes or min(sizes) <= 0:
        raise ConfigError(f"Expected num_calibration_samples > 0. Received: {list(sizes)}")
    wanted = output_name or ("logits" if "logits" in names else names[0])
    shapes = [tuple(int(d) for d in o.shape) for o in model.outputs]
    shape = shapes[list(names).index(wanted)] if wanted in names else shapes[0]
    inputs, labels = _as_inputs(images, input_type == "uint8"), np.asarray(labels)
    results = []
    with tempfile.TemporaryDirectory(prefix="cbnet-calibration-") as folder:
        for size in sorted({min(int(s), len(pool)) for s in sizes}):
            path = Path(folder) / f"{model.name}_{size}.tflite"
            write_bytes_atomic(path, to_tflite(model, Precision.INT8, np.asarray(pool[:size], dtype=np.float32),
                                                 input_type))
            runner = Model(path, output_indices=[shape])
            correct = 0
            for start in range(0, len(inputs), batch_size):
                logits = runner(inputs[start:start + batch_size])[0]
                correct += int(np.sum(np.argmax(logits, axis=-1) == labels[start:start + batch_size]))
            results.append({"samples": size, "int8_accuracy": correct / max(len(labels), 1)})
    return results
