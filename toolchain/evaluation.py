"""``cbnet-tl eval``: score a bundle's pipelines on a test split, through the runtime only."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from cbnet_tl.runtime.bundle import load_bundle, read_manifest, resolve_bundle_dir
from cbnet_tl.runtime.errors import DataError
from cbnet_tl.runtime.evaluate import evaluate
from cbnet_tl.runtime.pipelines import DEPLOYED_PIPELINES, Pipeline, models_for
from cbnet_tl.toolchain.datasets import DatasetName, Split, load_dataset


def load_test_split(bundle_dir: Path, data_dir: Optional[Path] = None, dataset: Optional[str] = None):
    """The manifest and the test split of the bundle's dataset (only ``t10k-*`` files are read)."""
    manifest = read_manifest(resolve_bundle_dir(bundle_dir))
    name = dataset or manifest["dataset"]
    if name not in {d.value for d in DatasetName} and data_dir is None:
        raise DataError(f"The bundle was built on a custom dataset ({name}); pass --data-dir with its images")
    test = load_dataset(name, Split.TEST, data_dir)
    if len(test.class_names) != len(manifest["class_names"]):
        raise DataError(
            f"The test data has {len(test.class_names)} classes but the bundle has {len(manifest['class_names'])}"
        )
    return manifest, test


def evaluate_bundle(bundle_dir: Path, dataset: Optional[str], data_dir: Optional[Path],
                    pipelines: Optional[Sequence[str]] = None, *, precision: str = "int8",
                    batch_size: int = 1, limit: Optional[int] = None, num_threads: int = 1,
                    dvfs: Optional[dict] = None) -> dict:
    """Score each pipeline; with ``dvfs`` (options of ``dvfs_session``), one image at a time under that policy."""
    manifest, test = load_test_split(bundle_dir, data_dir, dataset)
    images, labels = test.images[:limit], test.labels[:limit]
    names = list(pipelines or DEPLOYED_PIPELINES)
    bundle = load_bundle(bundle_dir, precision=precision, num_threads=num_threads, models=models_for(names))
    result = {"bundle": str(bundle_dir), "dataset": test.name, "num_images": int(len(labels)),
              "precision": precision, "batch_size": batch_size, "num_threads": num_threads, "pipelines": {}}
    for name in names:
        if dvfs is not None:
            result["pipelines"][name] = _evaluate_with_dvfs(Pipeline(bundle, name), images, labels, dvfs)
            continue
        scored = evaluate(Pipeline(bundle, name), images, labels, batch_size=batch_size)
        scored.pop("predictions")
        scored.pop("confusion")
        result["pipelines"][name] = scored
    return result


def _evaluate_with_dvfs(pipeline: Pipeline, images, labels, options: dict) -> dict:
    from collections import Counter

    from cbnet_tl.runtime.dvfs_run import classify_each, dvfs_session

    with dvfs_session(options["dvfs"], deadline_ms=options["deadline_ms"], period_ms=options["period_ms"],
                      sysfs_root=options["sysfs_root"], target=options["target"]) as session:
        predicted, paths = classify_each(pipeline, images, session)
    summary = session.summary()
    counts = Counter(paths)
    return {"accuracy": float((predicted == labels).mean()), "num_images": int(len(labels)), "batch_size": 1,
            "path_shares": {p: c / len(labels) for p, c in sorted(counts.items())},
            "ms_per_image_median": summary["latency_ms_median"], "dvfs": summary}


def format_evaluation(result: dict) -> str:
    lines = [f"{result['dataset']}: {result['num_images']} test images, {result['precision']}, batch {result['batch_size']}",
             f"{'pipeline':<12}{'accuracy':>10}{'ms/image':>10}  paths"]
    for name, r in result["pipelines"].items():
        shares = ", ".join(f"{p} {s:.1%}" for p, s in r["path_shares"].items())
        lines.append(f"{name:<12}{r['accuracy'] * 100:>9.2f}%{r['ms_per_image_median']:>10.3f}  {shares}")
        if "dvfs" in r:
            from cbnet_tl.toolchain.cli import format_dvfs_summary

            lines.append("            " + format_dvfs_summary(r["dvfs"]))
    return "\n".join(lines)
