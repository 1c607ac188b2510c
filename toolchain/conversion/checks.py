"""Quantization checks: every pipeline, float32 vs int8, through our runtime on the test split.

Collects every pipeline's figures, then fails once naming each pipeline that lost too much.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from cbnet_tl.runtime.bundle import load_bundle
from cbnet_tl.runtime.errors import BundleError, ConfigError, QuantizationCheckError
from cbnet_tl.runtime.files import read_json
from cbnet_tl.runtime.manifest import read_manifest
from cbnet_tl.runtime.pipelines import Pipeline
from cbnet_tl.runtime.specs import deployed_pipelines, models_for
from cbnet_tl.toolchain.scoring import evaluate


@dataclass(frozen=True)
class CheckConfig:
    max_accuracy_drop: float = 1.0  # percentage points
    batch_size: int = 250
    pipelines: Optional[tuple] = None  # None: the ones the build deploys (its manifest says)

    def __post_init__(self):
        if self.max_accuracy_drop < 0:
            raise ConfigError(f"Expected max_accuracy_drop >= 0. Received: {self.max_accuracy_drop}")


def run_checks(build_dir: Path, images: np.ndarray, labels: np.ndarray, config: CheckConfig,
               progress: Optional[Callable] = None) -> dict:
    """Evaluate both precisions of each pipeline; return the checks record (never raises on drops)."""
    manifest = read_manifest(build_dir)
    pipelines = config.pipelines if config.pipelines is not None else deployed_pipelines(manifest)
    names = models_for(pipelines, manifest)
    bundles = {p: load_bundle(build_dir, precision=p, models=names) for p in ("float32", "int8")}
    record = {"num_images": int(len(labels)), "max_accuracy_drop": config.max_accuracy_drop, "pipelines": {}}
    for pipeline_name in pipelines:
        results = {}
        for precision, bundle in bundles.items():
            wrapped = (lambda it, d=f"check {pipeline_name} {precision}": progress(it, desc=d)) if progress else None
            results[precision] = evaluate(Pipeline(bundle, pipeline_name), images, labels,
                                          batch_size=config.batch_size, progress=wrapped)
        fp32, int8 = results["float32"], results["int8"]
        drop = (fp32["accuracy"] - int8["accuracy"]) * 100.0
        record["pipelines"][pipeline_name] = {
            "float32": {k: fp32[k] for k in ("accuracy", "per_class_accuracy", "path_shares", "confusion")},
            "int8": {k: int8[k] for k in ("accuracy", "per_class_accuracy", "path_shares", "confusion")},
            "accuracy_drop_points": drop,
            "top1_agreement": float(np.mean(fp32["predictions"] == int8["predictions"])),
            "passed": drop <= config.max_accuracy_drop,
        }
    return record


CHECKS_NAME = "checks.json"


def read_checks(build_dir: Path, required: bool = True) -> Optional[dict]:
    """``build_dir/checks.json``, the record ``run_checks`` made; every problem is one ``BundleError`` line.
    ``required=False``: None when the build has none yet."""
    path = Path(build_dir) / CHECKS_NAME
    if not path.is_file():
        if required:
            raise BundleError(f"{path} is missing; run `cbnet-tl check {build_dir}` to make it")
        return None
    fix = f"run `cbnet-tl check {build_dir} --max-accuracy-drop POINTS` to write it again"
    record = read_json(path, fix)
    drop = record.get("max_accuracy_drop") if isinstance(record, dict) else None
    if (not isinstance(drop, (int, float)) or isinstance(drop, bool) or drop < 0
            or not isinstance(record.get("pipelines"), dict)):
        raise BundleError(f"{path} is not a checks record (expected an object with max_accuracy_drop >= 0 and "
                          f"pipelines); {fix}")
    return record


def raise_on_failures(record: dict) -> None:
    failures = [
        f"{name}: int8 {r['int8']['accuracy'] * 100:.2f}% vs float32 {r['float32']['accuracy'] * 100:.2f}% "
        f"(drop {r['accuracy_drop_points']:.2f} points > {record['max_accuracy_drop']:.2f})"
        for name, r in record["pipelines"].items() if not r["passed"]
    ]
    if failures:
        raise QuantizationCheckError("Quantization check failed: " + "; ".join(failures))


def format_table(record: dict, class_names: list) -> str:
    lines = [f"{'pipeline':<12}{'float32':>9}{'int8':>9}{'drop':>8}{'agree':>8}  result"]
    for name, r in record["pipelines"].items():
        lines.append(
            f"{name:<12}{r['float32']['accuracy'] * 100:>8.2f}%{r['int8']['accuracy'] * 100:>8.2f}%"
            f"{r['accuracy_drop_points']:>8.2f}{r['top1_agreement'] * 100:>7.2f}%  {'ok' if r['passed'] else 'FAIL'}"
        )
    lines.append("")
    header = f"{'class':<14}" + "".join(f"{n[:10]:>22}" for n in record["pipelines"])
    lines.append(header)
    lines.append(f"{'':<14}" + "".join(f"{'fp32 / int8':>22}" for _ in record["pipelines"]))
    for cls, class_name in enumerate(class_names):
        row = f"{class_name[:13]:<14}"
        for r in record["pipelines"].values():
            a, b = r["float32"]["per_class_accuracy"][cls], r["int8"]["per_class_accuracy"][cls]
            row += f"{'-' if a is None else f'{a * 100:.1f}':>14} / {'-' if b is None else f'{b * 100:.1f}':>5}"
        lines.append(row)
    return "\n".join(lines)
