"""``cbnet-tl report``: a self-contained HTML page (jinja2 + Pillow PNGs, no JavaScript, no CDN).

Reads what the build stages wrote (manifest, checks, train, bench, simulate JSON) and the int8
models through our runtime; writes ``DIR/report/index.html`` and its PNGs atomically.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Optional

import numpy as np

from cbnet_tl.runtime.bundle import load_bundle, open_manifest
from cbnet_tl.runtime.files import staged_directory
from cbnet_tl.runtime.pipelines import Pipeline, convert_images
from cbnet_tl.runtime.specs import (
    BASELINE_PIPELINE,
    CONVERTER,
    DEFAULT_PIPELINE,
    DEPLOYED_PIPELINES,
    EARLY_EXIT_PIPELINE,
    PIPELINE_SPECS,
    models_for,
)
from cbnet_tl.toolchain.analysis import charts

NUM_GRID_IMAGES = 12


def paper_figures() -> dict:
    text = resources.files("cbnet_tl.toolchain").joinpath("data/paper_figures.json").read_text()
    return json.loads(text)


def _read_json(path: Path) -> Optional[dict]:
    return json.loads(path.read_text()) if path.is_file() else None


def _confusion_rows(confusion: list) -> list:
    """Rows of (count, shade 0..1) for an HTML heat-map table."""
    matrix = np.asarray(confusion, dtype=float)
    totals = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)
    return [[(int(c), float(s)) for c, s in zip(row, share_row)] for row, share_row in zip(matrix, shares)]


def _grid(build_dir: Path, images: np.ndarray, labels: Optional[np.ndarray], threshold: float, out: Path) -> Optional[dict]:
    """Hard test images (branch entropy ≥ T) above what the converting AE made of them, and the default
    pipeline's answer for each."""
    bundle = load_bundle(build_dir, models=[CONVERTER, *models_for([EARLY_EXIT_PIPELINE, DEFAULT_PIPELINE])])
    gate = Pipeline(bundle, EARLY_EXIT_PIPELINE).classify(images[:2000])
    hard = [i for i, path in enumerate(gate.paths) if path == PIPELINE_SPECS[EARLY_EXIT_PIPELINE].full_path][:NUM_GRID_IMAGES]
    if not hard:
        return None
    originals = images[hard]
    converted = convert_images(bundle.models[CONVERTER], originals)
    charts.image_grid([list(originals), list(converted)]).save(out / "hard_vs_converted.png")
    names = bundle.class_names
    predicted = Pipeline(bundle, DEFAULT_PIPELINE).classify(originals).labels
    return {"file": "hard_vs_converted.png", "pipeline": DEFAULT_PIPELINE,
            "captions": [{"true": names[int(labels[i])] if labels is not None else "?", "predicted": names[int(p)]}
                         for i, p in zip(hard, predicted)]}


def _pareto_points(bench: dict, sizes: Optional[dict]) -> list:
    """Every pipeline of the build (bench's primary run), and every fast-recipe size of ``cbnet-tl sizes``."""
    points = [(name, row["latency_ms_median"] * 1e3, row["accuracy"] * 100, "pipelines of this build")
              for name, row in bench["pipelines"].items()]
    for name, row in (sizes or {}).get("sizes", {}).items():
        points.append((f"fast-{name}", row["us_per_image"], row["int8_accuracy"] * 100,
                       "fast recipe sizes (cbnet-tl sizes, one run)"))
    return points


def _chart_order(recorded: dict) -> list:
    """The deployed pipelines a record holds, the baseline first (the table's order reversed)."""
    return [name for name in reversed(DEPLOYED_PIPELINES) if name in recorded]


def _hard_share(checks: Optional[dict]) -> Optional[float]:
    """Share of test images the early-exit pipeline (int8) sent down its full path."""
    entry = (checks or {}).get("pipelines", {}).get(EARLY_EXIT_PIPELINE)
    if entry is None:
        return None
    return entry["int8"]["path_shares"].get(PIPELINE_SPECS[EARLY_EXIT_PIPELINE].full_path, 0.0)


def _learning(checks: Optional[dict], class_names) -> list:
    """One row per pipeline of the learning check (none for a checks.json made before it)."""
    return [{"name": name, "accuracy": r["int8"]["accuracy"], "interval": r["int8_accuracy_interval"],
             "largest": class_names[r["largest_class"]], "largest_share": r["largest_class_share"],
             "most_answered": class_names[r["most_answered_class"]], "most_answered_share": r["most_answered_share"],
             "most_answered_frequency": r["most_answered_frequency"], "learned": r["learned"]}
            for name, r in (checks or {}).get("pipelines", {}).items() if "learned" in r]


def _calibration(record: Optional[dict]) -> Optional[dict]:
    """calibration.json as one row per calibration size and one column per model (older builds: one model)."""
    if not record:
        return None
    models = record["models"] if "models" in record else {record["model"]: record["rows"]}
    sizes = sorted({row["samples"] for rows in models.values() for row in rows})
    accuracy = {name: {row["samples"]: row["int8_accuracy"] for row in rows} for name, rows in models.items()}
    return {"models": list(models), "num_test_images": record["num_test_images"], "chosen": record["chosen"],
            "rows": [{"samples": size, "accuracy": [accuracy[name].get(size) for name in models]} for size in sizes]}


def _charts(out: Path, dataset: str, bench: Optional[dict], checks: Optional[dict], simulate: Optional[dict],
            sizes: Optional[dict] = None) -> dict:
    made = {}
    paper = paper_figures()
    if bench:
        ours = bench["pipelines"]
        order = _chart_order(ours)
        paper_latency = paper["latency_ms_per_image_rpi4"]
        base = paper_latency.get(BASELINE_PIPELINE)
        series = {
            f"ours ({bench['primary']['precision']}, batch {bench['primary']['batch_size']}, this machine)":
                [ours[p][f"speedup_vs_{BASELINE_PIPELINE}"] for p in order],
            "paper (Pi 4, mixed frameworks)": [base / paper_latency[p] if base and p in paper_latency else None
                                               for p in order],
        }
        charts.bar_chart(order, series, "Speed-up over LeNet (higher is faster)", "x LeNet").save(out / "speedup.png")
        made["speedup"] = "speedup.png"
    if checks:
        order = _chart_order(checks["pipelines"])
        paper_accuracy = paper["accuracy_percent"].get(dataset, {})
        series = {"ours int8": [checks["pipelines"][p]["int8"]["accuracy"] * 100 for p in order],
                  "ours float32": [checks["pipelines"][p]["float32"]["accuracy"] * 100 for p in order]}
        if paper_accuracy:
            series["paper"] = [paper_accuracy.get(p) for p in order]
        charts.bar_chart(order, series, f"Test accuracy on {dataset} (%)", "%").save(out / "accuracy.png")
        made["accuracy"] = "accuracy.png"
    if bench:
        points = _pareto_points(bench, sizes)
        charts.scatter_chart(points, "Accuracy against time per image (one run; up and left is better)",
                             "us per image (median)", "accuracy %",
                             footer=f"measured on {bench.get('machine', 'this machine')}, {bench['interpreter']}, "
                                    f"{bench['threads']} thread(s), batch {bench['primary']['batch_size']}"
                             ).save(out / "pareto.png")
        made["pareto"] = "pareto.png"
    if simulate and simulate.get("frequency_curve"):
        curve = simulate["frequency_curve"]
        charts.line_chart(curve["mhz"], {k: v for k, v in curve["energy_mj"].items()},
                          "Modelled energy per inference vs CPU frequency", "MHz", "mJ").save(out / "dvfs.png")
        made["dvfs"] = "dvfs.png"
    return made


def write_report(build_dir: Path, test_images: Optional[np.ndarray] = None,
                 test_labels: Optional[np.ndarray] = None) -> Path:
    """Render ``build_dir/report/index.html``; return its path."""
    from cbnet_tl.toolchain.arm64.cost import side_by_side
    from cbnet_tl.toolchain.analysis.bench import SPEEDUP_BASES
    from cbnet_tl.toolchain.conversion.checks import MAX_ANSWER_RATIO
    from cbnet_tl.toolchain.delivery.bundle import render

    build_dir, manifest = open_manifest(build_dir)
    checks = _read_json(build_dir / "checks.json")
    train = _read_json(build_dir / "train.json")
    saved_bench = _read_json(build_dir / "bench.json")
    bench = saved_bench if saved_bench and saved_bench.get("runs") else None  # host timings (not only arm64 counts)
    simulate = _read_json(build_dir / "simulate.json")
    calibration = _calibration(_read_json(build_dir / "calibration.json"))
    with staged_directory(build_dir / "report") as staging:
        made = _charts(staging, manifest.dataset, bench, checks, simulate, _read_json(build_dir / "sizes.json"))
        grid = None
        if test_images is not None:
            grid = _grid(build_dir, test_images, test_labels, manifest.entropy_threshold, staging)
        context = {
            "manifest": manifest, "checks": checks, "train": train, "bench": bench, "simulate": simulate,
            "calibration": calibration, "arm64": side_by_side(saved_bench),
            "charts": made, "grid": grid, "paper": paper_figures(), "speedup_bases": SPEEDUP_BASES,
            "early_exit": {"name": EARLY_EXIT_PIPELINE, "full_path": PIPELINE_SPECS[EARLY_EXIT_PIPELINE].full_path,
                           "hard_share_test": _hard_share(checks)},
            "learning": _learning(checks, manifest.class_names), "max_answer_ratio": MAX_ANSWER_RATIO,
            "confusions": {name: _confusion_rows(r["int8"]["confusion"]) for name, r in (checks or {}).get("pipelines", {}).items()},
        }
        (staging / "index.html").write_text(render("report/index.html.j2", **context))
    return build_dir / "report" / "index.html"
