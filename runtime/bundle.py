"""Open a bundle or build directory: checksums, and the models of one precision."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from cbnet_tl.runtime.delegates import Device
from cbnet_tl.runtime.errors import BundleError, ChecksumError
from cbnet_tl.runtime.interpreter import Model
from cbnet_tl.runtime.manifest import MANIFEST_NAME, PRECISIONS, Manifest, read_manifest


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_bundle_dir(path: Path) -> Path:
    """A bundle directory, or a build directory (which holds its own manifest of both precisions)."""
    path = Path(path)
    if not path.exists():
        raise BundleError(f"{path}: no such bundle or build directory")
    if path.is_file():
        raise BundleError(f"{path}: expected a bundle or build directory, received a file")
    if not (path / MANIFEST_NAME).is_file():
        raise BundleError(f"{path}: no {MANIFEST_NAME}; expected the output directory of `cbnet-tl build`")
    return path


def open_manifest(path: Path) -> tuple:
    """(directory, manifest) of a bundle or build directory."""
    directory = resolve_bundle_dir(path)
    return directory, read_manifest(directory)


def verify_files(directory: Path, manifest: Manifest, only: Optional[Sequence[str]] = None) -> None:
    """Compare the sha256 of every listed file (or of ``only``) with the manifest; raise on the first mismatch."""
    files = manifest.files
    for relative in only if only is not None else sorted(files):
        if relative not in files:
            raise BundleError(f"{relative} is not listed in the manifest's files")
        path = Path(directory) / relative
        if not path.is_file():
            raise ChecksumError(f"{path}: listed in the manifest but missing")
        actual = sha256_of(path)
        if actual != files[relative]:
            raise ChecksumError(
                f"{path}: sha256 {actual[:16]}… does not match the manifest's {files[relative][:16]}…; "
                "the file is corrupt or was changed. Re-copy the bundle"
            )


@dataclass
class Bundle:
    directory: Path
    manifest: Manifest
    precision: str
    models: dict

    @property
    def class_names(self) -> list:
        return list(self.manifest.class_names)

    @property
    def entropy_threshold(self) -> float:
        return self.manifest.entropy_threshold


def load_bundle(
    path: Path,
    *,
    precision: str = "int8",
    num_threads: int = 1,
    models: Optional[Sequence[str]] = None,
    delegates: Sequence = (),
    device: str = "cpu",
    verify: bool = True,
    configs: Optional[dict] = None,
    manifest: Optional[Manifest] = None,
) -> Bundle:
    """Load the models of one precision, verifying each file's sha256 against the manifest first.

    ``configs`` (model -> ``tuning.ModelConfig``) runs chosen models in another precision or op resolver.
    ``manifest``: use this one instead of ``path/manifest.json`` (a build whose manifest is not written yet)."""
    if precision not in PRECISIONS:
        raise BundleError(f"Expected precision in {PRECISIONS}. Received: {precision!r}")
    if manifest is None:
        directory, manifest = open_manifest(path)
    else:
        directory = Path(path)
    names = list(models) if models is not None else sorted(manifest.models)
    loaded = {}
    for name in names:
        entry = manifest.models.get(name)
        if entry is None:
            raise BundleError(f"{directory}: manifest has no model {name!r}; it has {sorted(manifest.models)}")
        config = (configs or {}).get(name)
        model_precision = config.precision if config is not None else precision
        spec = entry.files.get(model_precision)
        if spec is None:
            raise BundleError(
                f"{directory} has no {model_precision} {name} model (it has {sorted(entry.files)}); "
                "float32 models live in the build directory, not in the deployed bundle"
            )
        relative = spec.file
        missing = [key for key in entry.output_names if key not in spec.outputs]
        if missing:
            raise BundleError(f"{directory}: manifest entry of model {name!r} lacks output(s) {missing}")
        order = [spec.outputs[key].index for key in entry.output_names]
        if device == Device.EDGETPU and spec.edgetpu_file:
            # Compiled by edgetpu_compiler: the same outputs, but tensor indices may be renumbered,
            # so they are matched by shape (the converter made shapes unambiguous).
            relative, order = spec.edgetpu_file, [spec.outputs[key].shape for key in entry.output_names]
        if verify:
            verify_files(directory, manifest, [relative])
        loaded[name] = Model(
            directory / relative, num_threads=num_threads, delegates=delegates,
            output_indices=order, device=device,
            **({"resolver": config.resolver} if config is not None else {}),
        )
    return Bundle(directory, manifest, precision, loaded)
