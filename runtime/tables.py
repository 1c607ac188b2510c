"""256-entry lookup tables for one-byte tensors: pixels to a model's input, one model's output to the next
model's input, and outputs to real values. Each table holds exactly the numbers the float path gives
(``quantize``/``dequantize``), so a lookup replaces per-element arithmetic without changing a result.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from cbnet_tl.runtime.interpreter import dequantize, quantize


def _byte_codes(dtype: np.dtype) -> Optional[np.ndarray]:
    """Every value of a one-byte storage type, indexed by its byte (``raw.view(np.uint8)``)."""
    dtype = np.dtype(dtype)
    return np.arange(256, dtype=np.uint8).view(dtype) if dtype in (np.dtype(np.int8), np.dtype(np.uint8)) else None


def input_table(spec, input_range: float = 1.0) -> Optional[np.ndarray]:
    """pixel (0..255) → the model input's storage value, the same numbers ``quantize(preprocess(·) · range)``
    gives, as one table lookup. None for float inputs."""
    if not spec.is_quantized or _byte_codes(spec.dtype) is None:
        return None
    pixels = np.arange(256, dtype=np.float32)[:, None, None]
    real = pixels if input_range == 255.0 else pixels / np.float32(255.0) * np.float32(input_range)
    return quantize(real, spec).reshape(256)


def requantize_table(out_spec, in_spec) -> Optional[np.ndarray]:
    """One model's output byte → the next model's input value (dequantize, then quantize), as a table.
    None when the output is not a one-byte quantized type or the input is not quantized."""
    codes = _byte_codes(out_spec.dtype)
    if codes is None or not (out_spec.is_quantized and in_spec.is_quantized):
        return None
    return quantize(dequantize(codes, out_spec), in_spec)


def is_identity(table: np.ndarray, out_spec, in_spec) -> bool:
    """Whether a requantize table maps every byte to itself (scales a rounding apart): the raw output is then the
    next model's input as it is."""
    codes = _byte_codes(out_spec.dtype)
    return codes is not None and np.dtype(out_spec.dtype) == np.dtype(in_spec.dtype) and np.array_equal(table, codes)


def dequantize_table(spec) -> Optional[np.ndarray]:
    """Output byte → real value (float32), the numbers ``dequantize`` gives, as a table. None for float outputs."""
    codes = _byte_codes(spec.dtype)
    return dequantize(codes, spec) if spec.is_quantized and codes is not None else None


def exp_difference_table(spec) -> Optional[np.ndarray]:
    """[top byte, byte] → e^(z − top) in float32, z and top the dequantized values of the two bytes: the terms of
    ``gate.decide``'s sum, made by the same float32 subtraction and exp, so ``gate.top_probability_bytes`` sums
    the same numbers. 256 × 256 entries; None for float outputs."""
    real = dequantize_table(spec)
    if real is None:
        return None
    with np.errstate(over="ignore"):  # bytes above the top one overflow: never read, the top is the largest
        return np.exp(real[None, :] - real[:, None])


def lookup(table: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """Apply a 256-entry table to a one-byte tensor."""
    return table.take(raw.view(np.uint8))  # take: the same values as indexing, without its general machinery

