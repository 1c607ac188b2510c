"""Render a deployment bundle (directory + ``.tar.gz``) from a checked build directory.

Reads ``BUILD/manifest.json`` and ``BUILD/checks.json``; writes ``BUILD/bundle/`` and
``BUILD/cbnet-tl-<dataset>-<target>.tar.gz``, each atomically (temporary name, then rename).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import re
import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np

import cbnet_tl.runtime as runtime_package
from cbnet_tl.runtime.bundle import sha256_of
from cbnet_tl.runtime.errors import BundleError
from cbnet_tl.runtime.files import move_file_into_place, staged_directory
from cbnet_tl.runtime.manifest import ModelEntry, PipelineEntry, read_manifest
from cbnet_tl.runtime.pipelines import Pipeline
from cbnet_tl.runtime.specs import (
    CONVERTER,
    INVOKE_PROBE,
    PIPELINE_SPECS,
    default_pipeline,
    deployed_pipelines,
    models_for,
)
from cbnet_tl.toolchain.conversion.checks import failed_learning, read_checks
from cbnet_tl.toolchain.targets import Target

SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/-]+$")
NUM_SELFTEST_SAMPLES = 20
# The bundle's systemd services (`cbnet-tl deploy --service NAME` installs one): each unit is rendered from
# templates/bundle/<unit>.j2. watch: images dropped into a folder; serve: a camera or stream, a page and an HTTP API.
SERVICE_UNITS = {"watch": "cbnet-tl.service", "serve": "cbnet-tl-serve.service"}
UNIT_DIR = "/etc/systemd/system"  # where `cbnet-tl deploy` puts the unit on the device


def _environment():
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("cbnet_tl.templates", "."),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default=False),
    )


def render(template: str, **context) -> str:
    return _environment().get_template(template).render(**context)


def _copy_runtime(destination: Path) -> None:
    """The runtime package, subpackages included, without caches."""
    source = Path(runtime_package.__file__).parent
    target = destination / "lib" / "cbnet_tl" / "runtime"
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


def _write_samples(staging: Path, build_dir: Path, images: np.ndarray, spec) -> dict:
    """Selftest samples (as PNGs of the input spec ``spec``) and the int8 predictions the build made for them."""
    from cbnet_tl.runtime.bundle import load_bundle
    from cbnet_tl.runtime.images import as_pil, load_image

    (staging / "samples").mkdir()
    files = []
    for i, image in enumerate(images[:NUM_SELFTEST_SAMPLES]):
        relative = f"samples/{i:02d}.png"
        as_pil(image).save(staging / relative)
        files.append(relative)
    # read back the way the device will (run.py selftest), through the input spec
    stacked = np.stack([load_image(staging / f, spec) for f in files])
    manifest = read_manifest(build_dir)
    deployed = deployed_pipelines(manifest)
    bundle = load_bundle(build_dir, precision="int8", models=models_for(deployed, manifest))
    expected = {p: Pipeline(bundle, p).classify(stacked).labels.tolist() for p in deployed}
    return {"files": files, "expected": expected}


def device_checks() -> dict:
    """What scripts/arm64_check.py proved (bases, Pythons, interpreters, date), for the bundle README."""
    from importlib import resources

    source = resources.files("cbnet_tl.toolchain").joinpath("data/device_checks.json")
    return json.loads(source.read_text()) if source.is_file() else {}


def _render_files(staging: Path, target: Target, context: dict) -> None:
    outputs = {"run.py": "bundle/run.py.j2", "requirements.txt": "bundle/requirements.txt.j2",
               "README.md": "bundle/README.md.j2", **{unit: f"bundle/{unit}.j2" for unit in SERVICE_UNITS.values()}}
    outputs.update({out: template for template, out in target.extra_templates})
    for out, template in outputs.items():
        (staging / out).write_text(render(template, **context))
    (staging / "fleet").mkdir()
    for name in ("playbook.yml", "inventory.ini"):
        (staging / "fleet" / name).write_text(render(f"fleet/{name}.j2", **context))
    (staging / "run.py").chmod(0o755)
    if (staging / "compile_edgetpu.sh").exists():
        (staging / "compile_edgetpu.sh").chmod(0o755)


def write_bundle(build_dir: Path, target: Target, test_images: np.ndarray) -> Path:
    """Render ``build_dir/bundle`` and its tarball; return the tarball's path."""
    build_dir = Path(build_dir)
    if not SAFE_PATH.match(target.install_dir):
        raise BundleError(f"Install dir {target.install_dir!r} must be an absolute path of [A-Za-z0-9._/-]")
    build_manifest = read_manifest(build_dir)
    checks = read_checks(build_dir)
    with staged_directory(build_dir / "bundle") as staging:
        (staging / "models").mkdir()
        models = {}
        deployed = deployed_pipelines(build_manifest)
        for name in models_for(deployed, build_manifest) + [CONVERTER, INVOKE_PROBE]:
            # float32 too where the target can use it (not the Edge TPU): a tuning step may find it faster here
            entry = build_manifest.models[name].only(*(("int8",) if target.uses_edgetpu else ("int8", "float32")))
            for model_file in entry.files.values():
                shutil.copy2(build_dir / model_file.file, staging / model_file.file)
            models[name] = entry
        _copy_runtime(staging)
        selftest = _write_samples(staging, build_dir, test_images, build_manifest.input_spec)
        accuracy = {
            name: {"float32": r["float32"]["accuracy"], "int8": r["int8"]["accuracy"], "agreement": r["top1_agreement"]}
            for name, r in checks["pipelines"].items()
        }
        context = {
            "dataset": build_manifest.dataset, "target": target.name, "target_title": target.title,
            "version": build_manifest.version, "built_at": build_manifest.built_at,
            "tool_version": build_manifest.tools.get("cbnet-tl", "?"), "threshold": build_manifest.entropy_threshold,
            "num_test": checks["num_images"], "accuracy": accuracy, "install_dir": target.install_dir,
            "install_notes": target.install_notes, "requirements": target.requirements,
            "pipeline": default_pipeline(build_manifest, required=False),  # None: no pipeline passed the checks
            "recommendation": (build_manifest.recommendation or {}).get("reason"),
            "failed": failed_learning(checks),
            "pipelines": [name for name in deployed if name in accuracy], "power_model": target.power_model, "dvfs": "off", "deadline_ms": None,
            "service_user": "cbnet-tl", "memory_max": "384M",  # the units' user (README creates it), watch's MemoryMax=
            "serve_memory_max": "512M",  # serve's MemoryMax=: the camera process and its frames count too
            "units": SERVICE_UNITS,
            "device_checks": device_checks(), "input_text": build_manifest.input_spec.describe(),
        }
        edgetpu = _edgetpu_stage(staging, models) if target.uses_edgetpu else None
        if edgetpu is not None:
            models = {name: _with_edgetpu_file(entry, edgetpu["compile"]) for name, entry in models.items()}
        context["edgetpu"] = edgetpu
        context["models"] = sorted(Path(m.files["int8"].file).name for m in models.values())
        _render_files(staging, target, context)
        content = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
        # the playbook checks these on each device, like `cbnet-tl deploy` does (paths relative to fleet/)
        (staging / "fleet" / "checksums.sha256").write_text(
            "".join(f"{sha256_of(staging / f)}  ../{f}\n" for f in content if not f.startswith("fleet/")))
        files = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
        build_manifest.replace(
            kind="bundle", target=target.name, accelerator=target.accelerator, models=models,
            pipelines={name: PipelineEntry(build_manifest.pipelines[name].models or PIPELINE_SPECS[name].models,
                                           accuracy[name], build_manifest.pipelines[name].options)
                       for name in deployed if name in accuracy},
            selftest=selftest, files={f: sha256_of(staging / f) for f in files}, data=None,
        ).write(staging)
    return _write_tarball(build_dir, build_dir / "bundle", f"cbnet-tl-{build_manifest.dataset}-{target.name}")


def _edgetpu_stage(staging: Path, models: dict) -> dict:
    """Check every model against the Edge TPU's ops; compile when edgetpu_compiler is on PATH."""
    from cbnet_tl.toolchain.edgetpu.coral import check_edgetpu_versions, compile_models, inspect_model

    files = [staging / entry.files["int8"].file for entry in models.values()]
    check_edgetpu_versions(files)  # a version edgetpu_compiler 16 rejects fails the build, naming op and fix
    inspected = {name: inspect_model(staging / entry.files["int8"].file) for name, entry in models.items()}
    compiled = compile_models([staging / entry.files["int8"].file for entry in models.values()], staging / "models")
    report = {"inspect": inspected, "compile": compiled}
    (staging / "edgetpu_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _with_edgetpu_file(entry: ModelEntry, compiled: dict) -> ModelEntry:
    """The entry with the compiled file beside its int8 file, when edgetpu_compiler made one."""
    int8 = entry.files["int8"]
    result = compiled["models"].get(Path(int8.file).stem)
    if not result:
        return entry
    return dataclasses.replace(entry, files={**entry.files, "int8": dataclasses.replace(
        int8, edgetpu_file=f"models/{result['file']}")})


def _write_tarball(build_dir: Path, bundle_dir: Path, stem: str) -> Path:
    tarball = build_dir / f"{stem}.tar.gz"
    with tempfile.NamedTemporaryFile(dir=build_dir, prefix=f".{stem}.", suffix=".tar.gz.tmp", delete=False) as tmp:
        try:
            with tarfile.open(fileobj=tmp, mode="w:gz") as archive:
                archive.add(bundle_dir, arcname=stem)
        except BaseException:
            tmp.close()
            Path(tmp.name).unlink()
            raise
    move_file_into_place(Path(tmp.name), tarball)
    return tarball


def new_version(model_hashes: list) -> str:
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    digest = sha256_of_text("".join(sorted(model_hashes)))[:8]
    return f"{stamp}-{digest}"


def sha256_of_text(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()
