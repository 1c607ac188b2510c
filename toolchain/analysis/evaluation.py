"""``cbnet-tl eval``: score a bundle's pipelines on a test split, through the runtime only."""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from cbnet_tl.runtime.bundle import load_bundle, open_manifest
from cbnet_tl.runtime.errors import CbnetError, ConfigError, DataError
from cbnet_tl.runtime.formats import format_dvfs_summary
from cbnet_tl.runtime.pipelines import Pipeline
from cbnet_tl.runtime.specs import deployed_pipelines, models_for
from cbnet_tl.toolchain.ingest.datasets import DatasetName, Split, load_dataset, seeded_subset
from cbnet_tl.toolchain.scoring import evaluate


def _recorded_data(directory: Path, manifest) -> dict:
    """Where the build's data came from: its manifest's record, or for a bundle inside a build directory
    (bundles carry no host paths), the build's."""
    if manifest.data is not None:
        return manifest.data
    parent = Path(directory).resolve().parent
    if (parent / "manifest.json").is_file():
        try:
            return open_manifest(parent)[1].data or {}
        except CbnetError:
            return {}
    return {}


def data_dir_of(directory: Path, manifest, data_dir: Optional[Path] = None) -> Optional[Path]:
    """``data_dir`` if given, else the folder the build read (recorded in its manifest), if it still exists."""
    if data_dir is not None:
        return Path(data_dir)
    recorded = _recorded_data(directory, manifest).get("data_dir")
    return Path(recorded) if recorded and Path(recorded).exists() else None


def load_test_split(bundle_dir: Path, data_dir: Optional[Path] = None, dataset: Optional[str] = None):
    """The manifest and the test split of the bundle's dataset, through the bundle's input spec (only
    ``t10k-*`` files are read). Without ``data_dir``, the folder the build read."""
    _, manifest = open_manifest(bundle_dir)
    name = dataset or manifest.dataset
    data_dir = data_dir_of(bundle_dir, manifest, data_dir)
    if name not in {d.value for d in DatasetName} and data_dir is None:
        recorded = _recorded_data(bundle_dir, manifest).get("data_dir")
        raise DataError(f"The bundle was built on a custom dataset ({name}) read from {recorded or 'a folder'}, "
                        "which is not here; pass --data-dir with its images")
    test = load_dataset(name, Split.TEST, data_dir, spec=manifest.input_spec)
    if len(test.class_names) != len(manifest.class_names):
        raise DataError(
            f"The test data has {len(test.class_names)} classes but the bundle has {len(manifest.class_names)}"
        )
    return manifest, test


def load_train_split(build_dir: Path, data_dir: Optional[Path] = None) -> tuple:
    """(training split as the build used it, the build's seed): the same seeded subset when it trained on one."""
    import json

    _, manifest = open_manifest(build_dir)
    seed = int(json.loads((Path(build_dir) / "train.json").read_text())["config"]["seed"])
    name = manifest.dataset if (manifest.data or {}).get("custom") else (manifest.data or {}).get("name", manifest.dataset)
    train = load_dataset(name, Split.TRAIN, data_dir_of(build_dir, manifest, data_dir), spec=manifest.input_spec)
    return seeded_subset(train, int((manifest.data or {}).get("num_train", len(train))), seed), seed


def evaluate_bundle(bundle_dir: Path, dataset: Optional[str], data_dir: Optional[Path],
                    pipelines: Optional[Sequence[str]] = None, *, precision: str = "int8",
                    batch_size: int = 1, limit: Optional[int] = None, num_threads: int = 1,
                    dvfs: Optional[dict] = None, options: Optional[dict] = None) -> dict:
    """Score each pipeline; with ``dvfs`` (options of ``dvfs_session``) under that policy: one image at a time
    (arriving every ``period_ms`` if set), or batches of ``batch_size`` of a burst (every image there at the start,
    each batch one DVFS batch with those behind it as its queue, as ``run --batch-size`` runs files)."""
    if dvfs is not None and batch_size > 1 and dvfs.get("period_ms") is not None:
        raise ConfigError(f"Expected --batch-size 1 with --period-ms (images arriving one at a time), or no "
                          f"--period-ms with --batch-size {batch_size} (a burst). Received both")
    manifest, test = load_test_split(bundle_dir, data_dir, dataset)
    images, labels = test.images[:limit], test.labels[:limit]
    names = list(pipelines or deployed_pipelines(manifest))
    bundle = load_bundle(bundle_dir, precision=precision, num_threads=num_threads, models=models_for(names, manifest))
    result = {"bundle": str(bundle_dir), "dataset": test.name, "num_images": int(len(labels)),
              "precision": precision, "batch_size": batch_size, "num_threads": num_threads, "pipelines": {}}
    for name in names:
        if dvfs is not None:
            result["pipelines"][name] = _evaluate_with_dvfs(Pipeline(bundle, name, options), images, labels, dvfs,
                                                            batch_size)
            continue
        scored = evaluate(Pipeline(bundle, name, options), images, labels, batch_size=batch_size)
        scored.pop("predictions")
        scored.pop("confusion")
        result["pipelines"][name] = scored
    return result


def _evaluate_with_dvfs(pipeline: Pipeline, images, labels, options: dict, batch_size: int) -> dict:
    from collections import Counter

    from cbnet_tl.runtime.dvfs.run import dvfs_session
    from cbnet_tl.toolchain.analysis.rapl import HOST_METERS

    with dvfs_session(options["dvfs"], deadline_ms=options["deadline_ms"], period_ms=options["period_ms"],
                      burst=options.get("burst", batch_size > 1), sysfs_root=options["sysfs_root"],
                      target=options["target"], host_meters=HOST_METERS) as session:
        predicted, paths = classify_stream(pipeline, images, session, batch_size)
    summary = session.summary()
    counts = Counter(paths)
    return {"accuracy": float((predicted == labels).mean()), "num_images": int(len(labels)), "batch_size": batch_size,
            "path_shares": {p: c / len(labels) for p, c in sorted(counts.items())},
            "ms_per_image_median": summary["latency_ms_median"], "dvfs": summary}


def format_evaluation(result: dict) -> str:
    lines = [f"{result['dataset']}: {result['num_images']} test images, {result['precision']}, batch {result['batch_size']}",
             f"{'pipeline':<12}{'accuracy':>10}{'ms/image':>10}  paths"]
    for name, r in result["pipelines"].items():
        shares = ", ".join(f"{p} {s:.1%}" for p, s in r["path_shares"].items())
        lines.append(f"{name:<12}{r['accuracy'] * 100:>9.2f}%{r['ms_per_image_median']:>10.3f}  {shares}")
        if "dvfs" in r:
            lines.append("            " + format_dvfs_summary(r["dvfs"], "eval"))
    return "\n".join(lines)


def classify_stream(pipeline, images, session, batch_size: int) -> tuple:
    """Classify ``images`` in batches of ``batch_size`` as the session's arrival stream (``classify_next``: periodic,
    a burst or back to back), each batch one DVFS batch: (labels, paths)."""
    labels, paths = [], []
    for start in range(0, len(images), batch_size):
        result = session.classify_next(pipeline, images[start:start + batch_size],
                                       behind=max(0, len(images) - start - batch_size))
        labels.extend(result.labels.tolist())
        paths.extend(result.paths)
    return np.asarray(labels), paths
