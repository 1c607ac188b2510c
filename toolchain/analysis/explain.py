"""Which layer lost the accuracy: per-layer error of the int8 model against the float one.

Uses ``tf.lite.experimental.QuantizationDebugger``. It converts the Keras model with the same
``TFLiteConverter`` post-training quantization the build uses, then runs a debug model in which
every quantized op is followed by a check against the float op fed the *same* (dequantized)
inputs, so each layer's error is its own and does not pile up from the layers before it.
It is chosen over ai-edge-quantizer's per-tensor validation because it ships with TensorFlow
(no new dependency), and it explains the very converter path and calibration that produced the
shipped ``*_int8.tflite``; ai-edge-quantizer quantizes with its own recipes, so it would explain a
different model. The debugger changes the converter it is given, so it always gets its own.

Per layer: RMSE of int8 vs float, that RMSE over the layer's quantization scale (≈0.29 is pure
rounding; much more means the int8 arithmetic itself loses precision), and that RMSE over the
spread of the layer's float output (noise-to-signal; high with a normal RMSE/scale means the int8
range set by calibration is far wider than the usual values, as one outlier makes it). Layers are
ranked by noise-to-signal, worst first.
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import re
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

ROUNDING_RMSE_OVER_SCALE = 1 / np.sqrt(12)  # uniform rounding noise, in units of the scale
NOISE_TO_SIGNAL_LIMIT = 0.1


@dataclass(frozen=True)
class LayerError:
    layer: str  # Keras layer name when the tensor name shows it, else the TFLite tensor name
    op_name: str
    tensor_name: str
    rmse: float
    scale: float
    rmse_over_scale: float
    noise_to_signal: float
    suggestion: str


def _suggestion(rmse_over_scale: float, noise_to_signal: float) -> str:
    if rmse_over_scale > 2 * ROUNDING_RMSE_OVER_SCALE:
        return "its int8 arithmetic loses precision: keep this layer in float (or bound its activation)"
    if noise_to_signal > NOISE_TO_SIGNAL_LIMIT:
        return ("its int8 range from calibration is much wider than its usual values (outliers in the calibration "
                "data?): use more, representative calibration samples or clip the activation (e.g. ReLU6); "
                "else keep this layer in float")
    return "ok"


def _layer_name(tensor_name: str, layer_names: Sequence[str], output_layer: Optional[str]) -> str:
    if output_layer and tensor_name.startswith("StatefulPartitionedCall"):
        return output_layer  # the model's output tensor keeps the signature's name, not the layer's
    parts = [p for chunk in tensor_name.split(";") for p in chunk.split("/")]
    for part in parts:
        for name in sorted(layer_names, key=len, reverse=True):
            if part == name or re.fullmatch(re.escape(name) + r"_\d+", part):
                return name
    return tensor_name


def _signal_std(float_values, quant_values, scale, zero_point) -> float:
    """Spread of the layer's int8 output in real units (what the error is compared with)."""
    values = np.concatenate([np.ravel(v).astype(np.float64) for v in quant_values])
    return float(np.std((values - zero_point) * scale))


def _float_std(float_values, quant_values, scale, zero_point) -> float:
    return float(np.std(np.concatenate([np.ravel(v).astype(np.float64) for v in float_values])))


def _debugger_converter(model, representative: np.ndarray):
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([s[None].astype(np.float32)] for s in representative)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter


def explain_model(model, representative: np.ndarray, samples: Optional[np.ndarray] = None,
                  num_samples: int = 64) -> list:
    """Per-layer int8 error of a Keras model, worst first (a list of LayerError).

    ``representative`` calibrates, as in the build; ``samples`` (default: the representative data)
    are the inputs the errors are measured on; at most ``num_samples`` of them are used.
    """
    import tensorflow as tf

    representative = np.asarray(representative, dtype=np.float32)
    if len(representative) == 0:
        from cbnet_tl.runtime.errors import ConfigError

        raise ConfigError("Expected num_calibration_samples > 0. Received: 0")
    measured = np.asarray(representative if samples is None else samples, dtype=np.float32)[:num_samples]
    options = tf.lite.experimental.QuantizationDebugOptions(
        layer_direct_compare_metrics={"signal_std": _signal_std, "float_std": _float_std})
    chatter = io.StringIO()
    with contextlib.redirect_stdout(chatter), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=_debugger_converter(model, representative), debug_options=options,
            debug_dataset=lambda: ([s[None]] for s in measured))
        debugger.run()
    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)
    layer_names = [layer.name for layer in model.layers]
    output_layer = model.layers[-1].name if len(model.outputs) == 1 else None
    rows = []
    for row in csv.DictReader(io.StringIO(dump.getvalue())):
        rmse, scale = float(np.sqrt(float(row["mean_squared_error"]))), float(row["scale"])
        over_scale = rmse / scale if scale > 0 else float("inf")
        signal = max(float(row["signal_std"]), float(row["float_std"]))
        noise_to_signal = rmse / signal if signal > 0 else (0.0 if rmse == 0 else float("inf"))
        rows.append(LayerError(_layer_name(row["tensor_name"], layer_names, output_layer), row["op_name"], row["tensor_name"],
                               rmse, scale, over_scale, noise_to_signal, _suggestion(over_scale, noise_to_signal)))
    return sorted(rows, key=lambda r: (r.noise_to_signal, r.rmse_over_scale), reverse=True)


def build_training_images(build_dir: Path, data_dir: Optional[Path] = None) -> np.ndarray:
    """The training images the build calibrated from (the same seeded subset for a --max-train-images build)."""
    from cbnet_tl.toolchain.analysis.evaluation import load_train_split

    return load_train_split(Path(build_dir), data_dir)[0].images


def explain_build(build_dir: Path, train_images: np.ndarray, test_images: np.ndarray,
                  models: Optional[Sequence[str]] = None, num_samples: int = 64) -> dict:
    """Per-layer error of each of the build's int8 models (the specs ``export_specs`` converts)."""
    from cbnet_tl.runtime.errors import BundleError
    from cbnet_tl.toolchain.training.export import export_specs

    keras_dir = Path(build_dir) / "keras"
    if not any(keras_dir.glob("*.keras")):
        raise BundleError(f"{build_dir} has no Keras models in keras/; --explain compares them with the int8 models. "
                          "Run it on the build directory `cbnet-tl build` wrote, not a bundle or a stripped copy")
    specs = [s for s in export_specs(Path(build_dir), train_images) if models is None or s.name in models]
    samples = np.asarray(test_images[:num_samples], dtype=np.float32) / np.float32(255.0)
    result = {}
    for spec in specs:
        if spec.name == "main_tail":  # its inputs are trunk features, not images: measure on calibration data
            measured = spec.representative
        elif spec.input_type == "uint8":  # raw-pixel models take pixel values 0..255
            measured = samples * np.float32(255.0)
        else:
            measured = samples
        result[spec.name] = [_record(e) for e in explain_model(spec.model, spec.representative, measured, num_samples)]
    return result


def _record(error: LayerError) -> dict:
    """One layer's figures as standard JSON: an unbounded ratio (no scale, or no signal) is None."""
    return {key: (None if isinstance(value, float) and not math.isfinite(value) else value)
            for key, value in asdict(error).items()}


def _ratio(value) -> str:
    return "inf" if value is None else f"{value:.3f}"


def format_explanation(result: dict, top: int = 5) -> str:
    lines = [f"{'model':<14}{'layer':<26}{'op':<18}{'rmse/scale':>11}{'noise/signal':>13}  suggestion"]
    for name, layers in result.items():
        for entry in layers[:top]:
            lines.append(f"{name:<14}{entry['layer'][:25]:<26}{entry['op_name'][:17]:<18}"
                         f"{_ratio(entry['rmse_over_scale']):>11}{_ratio(entry['noise_to_signal']):>13}  {entry['suggestion']}")
    return "\n".join(lines)
