"""Converter: Keras views → float32 and full-integer int8 ``.tflite``, with input/output quantization.

Uses ``tf.lite.TFLiteConverter.from_keras_model`` (cleanest graphs, DESIGN §5). Every model is
checked after conversion: the float32 file, run by our runtime, must reproduce Keras's outputs.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from cbnet_tl.runtime.bundle import sha256_of
from cbnet_tl.runtime.errors import ConversionError
from cbnet_tl.runtime.files import write_bytes_atomic
from cbnet_tl.runtime.interpreter import Model
from cbnet_tl.runtime.manifest import ModelEntry, ModelFile
from cbnet_tl.toolchain.quiet import captured_stderr


class Precision(str, Enum):
    FLOAT32 = "float32"
    INT8 = "int8"


@dataclass(frozen=True)
class ModelSpec:
    """One model to convert: a batch-1 Keras view, its output names and its calibration inputs."""

    name: str
    model: object
    output_names: tuple
    representative: np.ndarray  # float32, (N, *input_shape), from training data
    input_type: str = "int8"  # "uint8": the model takes raw pixels, quantized with scale 1 and zero point 0


def to_tflite(model, precision: Precision, representative: Optional[np.ndarray] = None,
              input_type: str = "int8") -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if precision is Precision.INT8:
        if representative is None or len(representative) == 0:
            raise ConversionError("Expected num_calibration_samples > 0 for int8. Received: 0")

        def samples():
            for sample in representative:
                yield [sample[None].astype(np.float32)]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = samples
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8 if input_type == "uint8" else tf.int8
        converter.inference_output_type = tf.int8
    chatter = io.StringIO()  # Keras's export prints every saved signature to stdout
    try:
        with contextlib.redirect_stdout(chatter), warnings.catch_warnings(), captured_stderr():
            # int8 I/O takes its scale from the representative data; TF warns that none was given by hand
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs were expected")
            return converter.convert()
    except Exception as error:  # the converter raises many unrelated types
        detail = chatter.getvalue().strip().splitlines()[-3:]
        raise ConversionError(f"Conversion of {model.name} to {precision.value} failed: {error}"
                              + (f" (converter output: {' | '.join(detail)})" if detail else "")) from None


def map_outputs(path: Path, keras_shapes: list, names: tuple) -> dict:
    """Which ``.tflite`` output tensor is which named Keras output, matched by shape.

    The order in the ``.tflite`` need not follow Keras's, so outputs are matched by shape and the
    match must be unambiguous.
    """
    from cbnet_tl.runtime.interpreter import find_interpreter

    interpreter = find_interpreter().interpreter_class(model_path=str(path))
    details = interpreter.get_output_details()
    mapping = {}
    for name, shape in zip(names, keras_shapes):
        hits = [d for d in details if tuple(d["shape"]) == tuple(shape)]
        if len(hits) != 1:
            raise ConversionError(
                f"{path.name}: cannot map output {name!r} of shape {shape} unambiguously; "
                f"tflite outputs have shapes {[tuple(d['shape']) for d in details]}"
            )
        scale, zero_point = hits[0]["quantization"]
        mapping[name] = {"index": int(hits[0]["index"]), "scale": float(scale), "zero_point": int(zero_point),
                         "dtype": np.dtype(hits[0]["dtype"]).name, "shape": [int(s) for s in shape]}
    input_detail = interpreter.get_input_details()[0]
    scale, zero_point = input_detail["quantization"]
    inputs = {"index": int(input_detail["index"]), "scale": float(scale), "zero_point": int(zero_point),
              "dtype": np.dtype(input_detail["dtype"]).name, "shape": [int(s) for s in input_detail["shape"]]}
    return {"input": inputs, "outputs": mapping}


def check_float_matches_keras(path: Path, spec: ModelSpec, description: dict, tolerance: float = 1e-3) -> float:
    """Run the float32 ``.tflite`` through our runtime and compare with Keras on real samples."""
    order = [description["outputs"][n]["index"] for n in spec.output_names]
    model = Model(path, output_indices=order)
    samples = spec.representative[:16]
    worst = 0.0
    for i in range(len(samples)):
        got = model(samples[i : i + 1])
        want = spec.model(samples[i : i + 1], training=False)
        want = want if isinstance(want, (list, tuple)) else [want]
        for g, w in zip(got, want):
            w = np.asarray(w)
            worst = max(worst, float(np.max(np.abs(g - w)) / (np.max(np.abs(w)) + 1e-6)))
    if worst > tolerance:
        raise ConversionError(
            f"{spec.name}: float32 .tflite differs from the Keras model by {worst:.2e} (relative); "
            f"expected <= {tolerance:.0e}"
        )
    return worst


def check_raw_pixel_input(path: Path, tensor: dict) -> None:
    """A uint8-input model must read image bytes as they are: scale 1, zero point 0."""
    if tensor["dtype"] != "uint8" or abs(tensor["scale"] - 1.0) > 1e-6 or tensor["zero_point"] != 0:
        raise ConversionError(f"{path.name}: expected a uint8 input with scale 1 and zero point 0 (raw pixels). "
                              f"Received {tensor['dtype']} scale {tensor['scale']} zero point {tensor['zero_point']}; "
                              "the calibration data must span pixel values 0..255")


def convert_all(specs: list, models_dir: Path, progress: Callable = lambda iterable, **_: iterable) -> dict:
    """Convert every spec to both precisions; return the manifest's ``models`` section (name -> ModelEntry)."""
    from cbnet_tl.toolchain.conversion.modelstats import count_macs_and_params

    entries = {}
    for spec in progress(specs, desc="convert", unit="model"):
        files, macs, params = {}, None, None
        keras_shapes = [tuple(int(d) for d in o.shape) for o in spec.model.outputs]
        for precision in Precision:
            path = Path(models_dir) / f"{spec.name}_{precision.value}.tflite"
            write_bytes_atomic(path, to_tflite(spec.model, precision, spec.representative, spec.input_type))
            description = map_outputs(path, keras_shapes, spec.output_names)
            if precision is Precision.INT8 and spec.input_type == "uint8":
                check_raw_pixel_input(path, description["input"])
            description["file"] = f"models/{path.name}"
            description["bytes"] = path.stat().st_size
            if precision is Precision.FLOAT32:
                description["max_relative_error_vs_keras"] = check_float_matches_keras(path, spec, description)
                macs, params = count_macs_and_params(path)
            files[precision.value] = ModelFile.from_dict(description)
        entries[spec.name] = ModelEntry(tuple(spec.output_names), files, macs, params,
                                        input_range=255.0 if spec.input_type == "uint8" else 1.0)
    return entries


def file_hashes(directory: Path, relatives: list) -> dict:
    return {r: sha256_of(Path(directory) / r) for r in relatives}
