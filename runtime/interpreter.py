"""Find a TFLite interpreter, load models, and quantize at the boundary.

One place decides which interpreter package is used: ``ai_edge_litert`` first, then
``tflite_runtime``, then ``tensorflow.lite`` (build hosts only).
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from cbnet_tl.runtime.errors import InterpreterNotFoundError, ModelError

_INTERPRETER_MODULES = (
    ("ai_edge_litert.interpreter", "ai-edge-litert"),
    ("tflite_runtime.interpreter", "tflite-runtime"),
    ("tensorflow.lite", "tensorflow"),
)


@dataclass(frozen=True)
class InterpreterBackend:
    """The interpreter class and delegate loader of one installed package."""

    package: str
    interpreter_class: Any
    load_delegate: Callable[..., Any]
    op_resolver_types: Any = None  # the package's OpResolverType enum (None if it has none)


_backend_cache: Optional[InterpreterBackend] = None


def _opening_first(load_delegate: Callable[..., Any]) -> Callable[..., Any]:
    """``load_delegate`` that opens the library itself first, so a missing library raises OSError cleanly:
    inside these packages the failure leaves a half-built ``Delegate`` whose ``__del__`` prints a traceback."""

    def load(library: str, options: Optional[dict] = None) -> Any:
        ctypes.CDLL(library)
        return load_delegate(library, options)

    return load


DEFAULT_RESOLVER = "default"
RESOLVERS = {DEFAULT_RESOLVER: None, "builtin": "BUILTIN_WITHOUT_DEFAULT_DELEGATES"}


def resolver_arguments(backend: InterpreterBackend, resolver: str) -> dict:
    """Interpreter keyword arguments for an op resolver, or a clear error when the package lacks it."""
    if resolver not in RESOLVERS:
        raise ModelError(f"Expected an op resolver in {sorted(RESOLVERS)}. Received: {resolver!r}")
    member = RESOLVERS[resolver]
    if member is None:
        return {}
    kind = getattr(backend.op_resolver_types, member, None)
    if kind is None:
        raise ModelError(f"{backend.package} offers no op resolver {member}; use the default resolver")
    return {"experimental_op_resolver_type": kind}


def find_interpreter() -> InterpreterBackend:
    """Return the first interpreter package that imports, in the order of preference above."""
    global _backend_cache
    if _backend_cache is not None:
        return _backend_cache
    for module_name, package in _INTERPRETER_MODULES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        if module_name == "tensorflow.lite":
            backend = InterpreterBackend(package, module.Interpreter, _opening_first(module.experimental.load_delegate),
                                         getattr(module.experimental, "OpResolverType", None))
        else:
            backend = InterpreterBackend(package, module.Interpreter, _opening_first(module.load_delegate),
                                         getattr(module, "OpResolverType", None))
        _backend_cache = backend
        return backend
    raise InterpreterNotFoundError(
        "No TFLite interpreter found. Expected one of ai-edge-litert, tflite-runtime or tensorflow. "
        "Install one with: pip install ai-edge-litert"
    )


@dataclass(frozen=True)
class TensorSpec:
    """One input or output tensor: its index, shape (batch 1) and affine int8 quantization."""

    name: str
    index: int
    shape: tuple
    dtype: np.dtype
    scale: float
    zero_point: int

    @property
    def is_quantized(self) -> bool:
        return self.scale != 0.0


def quantize(values: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Real values to the tensor's storage type (identity for float tensors)."""
    if not spec.is_quantized:
        return np.asarray(values, dtype=spec.dtype)
    info = np.iinfo(spec.dtype)
    q = np.round(np.asarray(values, dtype=np.float64) / spec.scale) + spec.zero_point
    return np.clip(q, info.min, info.max).astype(spec.dtype)


def dequantize(values: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Storage type to real values, in int64 so that subtracting the zero point cannot overflow."""
    if not spec.is_quantized:
        return np.asarray(values, dtype=np.float32)
    return ((values.astype(np.int64) - spec.zero_point) * spec.scale).astype(np.float32)


def _spec(detail: dict) -> TensorSpec:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return TensorSpec(
        name=detail["name"],
        index=int(detail["index"]),
        shape=tuple(int(d) for d in detail["shape"]),
        dtype=np.dtype(detail["dtype"]),
        scale=float(scale),
        zero_point=int(zero_point),
    )


_load_context: Callable[[], Any] = contextlib.nullcontext


def set_load_context(factory: Callable[[], Any]) -> None:
    """What loading a model runs inside. The host CLI passes one that keeps the interpreter's C++ INFO line
    ("Created TensorFlow Lite XNNPACK delegate") off the terminal; the device keeps the default (nothing)."""
    global _load_context
    _load_context = factory


class Model:
    """A loaded ``.tflite`` model with one input, fed and read in real units.

    Outputs are returned in the order of ``output_indices`` (the manifest records which tensor index
    is which output, because the order in a ``.tflite`` need not follow Keras's).
    """

    def __init__(
        self,
        path: Path,
        *,
        num_threads: int = 1,
        delegates: Sequence[Any] = (),
        output_indices: Optional[Sequence[int]] = None,
        device: str = "cpu",
        resolver: str = DEFAULT_RESOLVER,
    ):
        """``resolver``: "default" (the built-in kernels with the default delegate, XNNPACK) or "builtin"
        (the built-in kernels without default delegates)."""
        self.path = Path(path)
        self.device = device
        self.resolver = resolver
        backend = find_interpreter()
        extra = resolver_arguments(backend, resolver)
        if not self.path.is_file():
            raise ModelError(f"Model file not found: {self.path}")
        try:
            with _load_context():
                self._interpreter = backend.interpreter_class(
                    model_path=str(self.path),
                    num_threads=num_threads,
                    experimental_delegates=list(delegates) or None,
                    **extra,
                )
                self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ModelError(f"Cannot load {self.path.name} as a TFLite model: {first_line}") from None
        inputs = self._interpreter.get_input_details()
        if len(inputs) != 1:
            raise ModelError(f"Expected a model with 1 input. Received {len(inputs)} in {self.path.name}")
        self.input = _spec(inputs[0])
        outputs = {int(d["index"]): _spec(d) for d in self._interpreter.get_output_details()}
        order = list(output_indices) if output_indices is not None else sorted(outputs)
        if order and isinstance(order[0], tuple):  # outputs named by shape instead of tensor index
            by_shape = {spec.shape: index for index, spec in outputs.items()}
            order = [by_shape.get(tuple(shape), -1) for shape in order]
        missing = [i for i in order if i not in outputs]
        if missing:
            raise ModelError(
                f"{self.path.name} has no output tensor {missing}; its outputs are {sorted(outputs)}. "
                "The manifest does not match the model; rebuild the bundle."
            )
        self.outputs = [outputs[i] for i in order]
        self._batch = self.input.shape[0]
        # tflite-runtime 2.14 (its last release) segfaults on aarch64 when a per-channel int8
        # FULLY_CONNECTED without a bias tensor runs at batch > 1 (our autoencoder's linear code layer,
        # whose bias the converter folds into the next layer). Batch 1 is safe, so that package runs
        # larger batches as a loop of batch-1 invokes; other interpreters resize as before.
        self._one_row_at_a_time = backend.package == "tflite-runtime"
        self.num_invokes = 0  # calls of invoke_quantized (bind's path counts nothing)

    def _ensure_batch(self, batch: int) -> None:
        if batch != self._batch:
            self._resize(batch)

    def _resize(self, batch: int) -> None:
        self._interpreter.resize_tensor_input(self.input.index, [batch, *self.input.shape[1:]])
        self._interpreter.allocate_tensors()
        self._batch = batch

    def invoke_quantized(self, values: np.ndarray) -> list:
        """Run on values already in the input's storage type; return raw output tensors."""
        expected = tuple(self.input.shape[1:])
        if tuple(values.shape[1:]) != expected:
            raise ModelError(
                f"{self.path.name} expects inputs of shape (N, {', '.join(map(str, expected))}). "
                f"Received {tuple(values.shape)}"
            )
        if self._one_row_at_a_time and values.shape[0] > 1:
            rows = [self.invoke_quantized(values[i : i + 1]) for i in range(values.shape[0])]
            return [np.concatenate(parts) for parts in zip(*rows)]
        self._ensure_batch(values.shape[0])
        self._interpreter.set_tensor(self.input.index, values)
        self._interpreter.invoke()
        self.num_invokes += 1
        return [self._interpreter.get_tensor(spec.index) for spec in self.outputs]

    def bind(self) -> tuple:
        """This model's per-call path, built once: ``(run, reads)``. ``run(values)`` sets the input and invokes,
        for values the caller has already checked (the input's storage type, shape (N, *input shape[1:])); it
        resizes only when N differs from the last call's. ``reads[i]()`` returns a copy of output ``i``, read
        only by who needs it. Per call there is nothing else: no check, no count, no list."""
        if self._one_row_at_a_time:
            outputs: list = []

            def run_rows(values: np.ndarray) -> None:
                outputs[:] = self.invoke_quantized(values)

            return run_rows, tuple(functools.partial(outputs.__getitem__, i) for i in range(len(self.outputs)))
        index, interpreter = self.input.index, self._interpreter
        set_tensor, invoke = interpreter.set_tensor, interpreter.invoke

        def run(values: np.ndarray) -> None:
            try:
                set_tensor(index, values)
            except ValueError:  # another batch size than the tensor's (anything else fails again below)
                self._resize(values.shape[0])
                set_tensor(index, values)
            invoke()

        return run, tuple(functools.partial(interpreter.get_tensor, spec.index) for spec in self.outputs)

    def __call__(self, values: np.ndarray) -> list:
        """Run on real-valued inputs; return real-valued outputs."""
        raw = self.invoke_quantized(quantize(values, self.input))
        return [dequantize(r, spec) for r, spec in zip(raw, self.outputs)]
