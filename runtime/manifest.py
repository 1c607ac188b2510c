"""The manifest schema: the one place that reads and writes ``manifest.json``.

A build directory and a bundle each hold one manifest: the dataset and class names, the entropy
threshold, every model file per precision with its tensors' quantization, the pipelines (with their
checked accuracy and options), and the sha256 of every file. The toolchain writes it through
``Manifest.write``; the device reads it through ``read_manifest`` with the stdlib only.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from cbnet_tl.runtime.errors import BundleError, ConfigError
from cbnet_tl.runtime.files import read_json, write_json_atomic
from cbnet_tl.runtime.preprocess import InputSpec

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 2  # 2: the input object is the build's InputSpec (size, channels, resize, background, resample)
PRECISIONS = ("int8", "float32")
REQUIRED_FIELDS = ("format_version", "dataset", "class_names", "input", "entropy_threshold", "models", "pipelines", "files")


@dataclass(frozen=True)
class TensorInfo:
    """One input or output tensor of a ``.tflite``: where it is and how it is quantized (scale 0: float)."""

    index: int
    scale: float
    zero_point: int
    dtype: str
    shape: tuple

    @classmethod
    def from_dict(cls, data: dict) -> "TensorInfo":
        return cls(int(data["index"]), float(data["scale"]), int(data["zero_point"]), str(data["dtype"]),
                   tuple(int(d) for d in data["shape"]))

    def to_dict(self) -> dict:
        return {"index": self.index, "scale": self.scale, "zero_point": self.zero_point, "dtype": self.dtype,
                "shape": list(self.shape)}


@dataclass(frozen=True)
class ModelFile:
    """One precision of one model: its file (relative to the manifest) and its tensors."""

    file: str
    input: TensorInfo
    outputs: dict  # output name -> TensorInfo
    bytes: int = 0
    edgetpu_file: Optional[str] = None  # compiled by edgetpu_compiler (Coral bundles)
    max_relative_error_vs_keras: Optional[float] = None  # float32 files: checked at conversion

    @classmethod
    def from_dict(cls, data: dict) -> "ModelFile":
        return cls(str(data["file"]), TensorInfo.from_dict(data["input"]),
                   {name: TensorInfo.from_dict(t) for name, t in data["outputs"].items()}, int(data.get("bytes", 0)),
                   data.get("edgetpu_file"), data.get("max_relative_error_vs_keras"))

    def to_dict(self) -> dict:
        out = {"input": self.input.to_dict(), "outputs": {n: t.to_dict() for n, t in self.outputs.items()},
               "file": self.file, "bytes": self.bytes}
        if self.max_relative_error_vs_keras is not None:
            out["max_relative_error_vs_keras"] = self.max_relative_error_vs_keras
        if self.edgetpu_file is not None:
            out["edgetpu_file"] = self.edgetpu_file
        return out


@dataclass(frozen=True)
class ModelEntry:
    """One model of the pipelines, in each precision the directory carries."""

    output_names: tuple
    files: dict  # precision -> ModelFile
    macs: Optional[int] = None
    params: Optional[int] = None
    input_range: float = 1.0  # the input's real value for pixel 255: 1.0 (pixels / 255) or 255.0 (raw pixels)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelEntry":
        return cls(tuple(data["output_names"]), {p: ModelFile.from_dict(data[p]) for p in PRECISIONS if p in data},
                   data.get("macs"), data.get("params"), float(data.get("input_range", 1.0)))

    def to_dict(self) -> dict:
        out: dict = {"output_names": list(self.output_names), "input_range": self.input_range}
        if self.macs is not None:
            out["macs"], out["params"] = self.macs, self.params
        out.update({p: f.to_dict() for p, f in self.files.items()})
        return out

    def only(self, *precisions: str) -> "ModelEntry":
        return dataclasses.replace(self, files={p: f for p, f in self.files.items() if p in precisions})


@dataclass(frozen=True)
class PipelineEntry:
    """What the manifest records of one pipeline: its models, the accuracy the build checked, its options."""

    models: tuple = ()
    checked_accuracy: Optional[dict] = None
    options: dict = field(default_factory=dict)  # e.g. {"confidence_threshold": 0.8} for cbnet-fallback

    @classmethod
    def from_dict(cls, data: dict) -> "PipelineEntry":
        return cls(tuple(data.get("models", ())), data.get("checked_accuracy"), dict(data.get("options", {})))

    def to_dict(self) -> dict:
        out: dict = {}
        if self.models:
            out["models"] = list(self.models)
        if self.checked_accuracy is not None:
            out["checked_accuracy"] = self.checked_accuracy
        if self.options:
            out["options"] = self.options
        return out


@dataclass(frozen=True)
class Manifest:
    dataset: str
    class_names: tuple
    entropy_threshold: float
    models: dict  # name -> ModelEntry
    pipelines: dict  # name -> PipelineEntry
    files: dict  # relative path -> sha256
    kind: str = "build"  # "build" or "bundle"
    version: str = ""
    built_at: str = ""
    tools: dict = field(default_factory=dict)
    input: dict = field(default_factory=dict)  # InputSpec.to_dict(): what every model of the build takes
    format_version: int = FORMAT_VERSION
    data: Optional[dict] = None  # build directories: where the data came from
    target: Optional[str] = None  # bundles
    accelerator: Optional[str] = None  # bundles: "edgetpu" for Coral targets
    selftest: Optional[dict] = None  # bundles: {"files": [...], "expected": {pipeline: [labels]}}
    # what a command runs when no pipeline is named (``specs.default_pipeline``): the build's recommendation or its
    # --default-pipeline; and the recommendation ({"pipeline": name or None, "reason": ...}). Older builds: neither
    default_pipeline: Optional[str] = None
    recommendation: Optional[dict] = None

    @classmethod
    def from_dict(cls, data: dict) -> "Manifest":
        return cls(
            dataset=str(data["dataset"]), class_names=tuple(data["class_names"]),
            entropy_threshold=float(data["entropy_threshold"]),
            models={n: ModelEntry.from_dict(m) for n, m in data["models"].items()},
            pipelines={n: PipelineEntry.from_dict(p or {}) for n, p in data["pipelines"].items()},
            files=dict(data["files"]), kind=data.get("kind", "build"), version=str(data.get("version", "")),
            built_at=str(data.get("built_at", "")), tools=dict(data.get("tools", {})), input=dict(data["input"]),
            format_version=int(data["format_version"]), data=data.get("data"), target=data.get("target"),
            accelerator=data.get("accelerator"), selftest=data.get("selftest"),
            default_pipeline=data.get("default_pipeline"), recommendation=data.get("recommendation"),
        )

    def to_dict(self) -> dict:
        out = {
            "format_version": self.format_version, "kind": self.kind, "dataset": self.dataset,
            "class_names": list(self.class_names), "input": self.input, "entropy_threshold": self.entropy_threshold,
            "version": self.version, "built_at": self.built_at, "tools": self.tools,
        }
        for key in ("target", "accelerator", "default_pipeline", "recommendation"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out["models"] = {n: m.to_dict() for n, m in self.models.items()}
        out["pipelines"] = {n: p.to_dict() for n, p in self.pipelines.items()}
        for key in ("selftest", "data"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        out["files"] = self.files
        return out

    def replace(self, **changes) -> "Manifest":
        return dataclasses.replace(self, **changes)

    def write(self, directory: Path) -> Path:
        path = Path(directory) / MANIFEST_NAME
        write_json_atomic(path, self.to_dict())
        return path

    @property
    def input_spec(self) -> InputSpec:
        """The input spec the build decided: the one source of image geometry for the runtime."""
        try:
            return InputSpec.from_dict(self.input)
        except ConfigError as error:
            raise BundleError(f"manifest.json's input object is invalid ({error}); rebuild the bundle") from None


def read_manifest(directory: Path) -> Manifest:
    """Read and validate ``directory/manifest.json``; every problem is one ``BundleError`` line."""
    path = Path(directory) / MANIFEST_NAME
    raw = read_json(path, "rebuild the bundle")
    if not isinstance(raw, dict):
        raise BundleError(f"{path}: expected a JSON object")
    missing = [f for f in REQUIRED_FIELDS if f not in raw]
    if missing:
        raise BundleError(f"{path} lacks required field(s) {', '.join(missing)}; rebuild the bundle")
    if raw["format_version"] != FORMAT_VERSION:
        raise BundleError(f"{path} has format_version {raw['format_version']!r}; this runtime reads "
                          f"{FORMAT_VERSION}. Rebuild the bundle with this cbnet-tl")
    try:
        manifest = Manifest.from_dict(raw)
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise BundleError(f"{path}: malformed manifest ({type(error).__name__}: {error}); rebuild the bundle") from None
    manifest.input_spec  # noqa: B018 - validates the input object now, with the manifest's path in the error
    return manifest
