"""The build's checks: every pipeline, float32 vs int8, through our runtime on the test split.

Two checks, each collecting every pipeline's figures before it fails:

- quantization: int8 no more than ``max_accuracy_drop`` points below float32 (``passed``); a failure fails the build.
- learning (``learned``), against the simplest baseline, a model that always answers the test labels' largest
  class: a pipeline fails when the 95% lower bound of its int8 accuracy (Wilson, ``scoring.wilson_interval``) is
  not above the largest class's share of the test labels, or when it answers its most-answered class more than
  ``MAX_ANSWER_RATIO`` times as often as that class occurs in the test labels. A build that fails it is still
  written, but never defaults to a failed pipeline; ``cbnet-tl check`` exits 1, one line per failed pipeline.
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
from cbnet_tl.runtime.specs import BASELINE_PIPELINE, deployed_pipelines, models_for
from cbnet_tl.toolchain.scoring import evaluate, format_share, wilson_interval

MAX_ANSWER_RATIO = 2.0  # most-answered class: at most this many times its share of the test labels
ADVICE = ("more images per class, a larger --image-size or fewer classes, --recipe paper or --with multiexit, "
          "or another default pipeline (--default-pipeline)")


def int8_worse(only_float32_right: int, only_int8_right: int) -> bool:
    """Whether int8 is worse than float32 beyond chance: of the images only one precision gets right, float32's
    share has a 95% Wilson interval wholly above one half (a paired sign test). One image lost never is."""
    return wilson_interval(only_float32_right, only_float32_right + only_int8_right)[0] > 0.5


@dataclass(frozen=True)
class CheckConfig:
    max_accuracy_drop: float = 1.0  # percentage points
    batch_size: int = 250
    pipelines: Optional[tuple] = None  # None: the ones the build deploys (its manifest says)

    def __post_init__(self):
        if self.max_accuracy_drop < 0:
            raise ConfigError(f"Expected max_accuracy_drop >= 0. Received: {self.max_accuracy_drop}")


def learning_figures(predictions: np.ndarray, labels: np.ndarray, num_classes: int) -> dict:
    """The learning check's figures of one pipeline's answers on labelled images (module docstring)."""
    num, correct = len(labels), int(np.sum(predictions == labels))
    label_counts = np.bincount(labels, minlength=num_classes)
    answer_counts = np.bincount(predictions, minlength=num_classes)
    low, high = wilson_interval(correct, num)
    largest = float(label_counts.max() / max(num, 1))
    # the most answered class; among equal counts the rarest in the labels (the worst ratio)
    most = int(np.lexsort((label_counts, -answer_counts))[0])
    share, frequency = float(answer_counts[most] / max(num, 1)), float(label_counts[most] / max(num, 1))
    above, over = bool(low > largest), bool(share > MAX_ANSWER_RATIO * frequency)
    return {"num_correct": correct, "int8_accuracy_interval": [low, high], "largest_class": int(label_counts.argmax()),
            "largest_class_share": largest, "above_largest_class": above, "most_answered_class": most,
            "most_answered_share": share, "most_answered_frequency": frequency, "over_answered": over,
            "learned": above and not over}


def run_checks(build_dir: Path, images: np.ndarray, labels: np.ndarray, config: CheckConfig,
               progress: Optional[Callable] = None, manifest=None) -> dict:
    """Evaluate both precisions of each pipeline; return the checks record (never raises on drops).
    ``manifest``: the build's, before it is written (the model files are read from ``build_dir``)."""
    manifest = manifest if manifest is not None else read_manifest(build_dir)
    pipelines = config.pipelines if config.pipelines is not None else deployed_pipelines(manifest)
    names = models_for(pipelines, manifest)
    bundles = {p: load_bundle(build_dir, precision=p, models=names, manifest=manifest) for p in ("float32", "int8")}
    record = {"num_images": int(len(labels)), "max_accuracy_drop": config.max_accuracy_drop, "pipelines": {}}
    for pipeline_name in pipelines:
        results = {}
        for precision, bundle in bundles.items():
            wrapped = (lambda it, d=f"check {pipeline_name} {precision}": progress(it, desc=d)) if progress else None
            results[precision] = evaluate(Pipeline(bundle, pipeline_name), images, labels,
                                          batch_size=config.batch_size, progress=wrapped)
        fp32, int8 = results["float32"], results["int8"]
        drop = (fp32["accuracy"] - int8["accuracy"]) * 100.0
        fp32_right, int8_right = fp32["predictions"] == labels, int8["predictions"] == labels
        images_lost = int(np.sum(fp32_right)) - int(np.sum(int8_right))
        only_fp32, only_int8 = int(np.sum(fp32_right & ~int8_right)), int(np.sum(int8_right & ~fp32_right))
        record["pipelines"][pipeline_name] = {
            "float32": {k: fp32[k] for k in ("accuracy", "per_class_accuracy", "path_shares", "confusion")},
            "int8": {k: int8[k] for k in ("accuracy", "per_class_accuracy", "path_shares", "confusion")},
            "accuracy_drop_points": drop,
            "top1_agreement": float(np.mean(fp32["predictions"] == int8["predictions"])),
            # a drop the test split cannot tell from chance is not a failure: on a user's 94 test images one image
            # is 1.06 points, and one rounding flip would fail the build of every small folder
            "passed": drop <= config.max_accuracy_drop or not int8_worse(only_fp32, only_int8),
            "images_lost": images_lost, "images_only_float32_right": only_fp32, "images_only_int8_right": only_int8,
            **learning_figures(int8["predictions"], labels, len(manifest.class_names)),
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
        f"(drop {r['accuracy_drop_points']:.2f} points > {record['max_accuracy_drop']:.2f}, "
        f"{r.get('images_lost', '?')} of {record['num_images']} test images; beyond chance)"
        for name, r in record["pipelines"].items() if not r["passed"]
    ]
    if failures:
        raise QuantizationCheckError("Quantization check failed: " + "; ".join(failures))


def failed_learning(record: dict) -> list:
    """The pipelines of a checks record that failed the learning check (records made before it have none)."""
    return [name for name, r in record["pipelines"].items() if r.get("learned") is False]


def learning_failures(record: dict, class_names) -> dict:
    """pipeline -> one line saying which learning rule it failed, with figures, and what to try."""
    lines = {}
    for name in failed_learning(record):
        r = record["pipelines"][name]
        num, largest = record["num_images"], r["largest_class_share"]
        why = []
        if not r["above_largest_class"]:
            why.append(f"int8 accuracy {format_share(r['num_correct'], num)} on {num} test images: its 95% lower bound "
                       f"is not above the largest class's share {largest:.2%} ({class_names[r['largest_class']]!r})")
        if r["over_answered"]:
            why.append(f"answers {class_names[r['most_answered_class']]!r} for {r['most_answered_share']:.2%} of "
                       f"{num} test images, more than {MAX_ANSWER_RATIO:g}x its {r['most_answered_frequency']:.2%} of "
                       "the labels")
        lines[name] = f"{name} failed the learning check: {'; and it '.join(why)}; try {ADVICE}"
    return lines


def format_learning(record: dict, class_names, reference: str) -> str:
    """Each pipeline's int8 accuracy with its 95% interval beside the largest class's share and ``reference``'s."""
    num = record["num_images"]
    rows = {n: r for n, r in record["pipelines"].items() if "learned" in r}
    if not rows:
        return "learning check: not in this checks record (made before it); run `cbnet-tl check` again"
    first = next(iter(rows.values()))
    base = rows.get(reference)
    lines = [f"on {num} test images (95% intervals): the largest class {class_names[first['largest_class']]!r} is "
             f"{first['largest_class_share']:.2%} of them"
             + (f"; {reference} {format_share(base['num_correct'], num)}" if base else ""),
             f"{'pipeline':<16}{'int8 [95%]':>26}{'vs largest':>12}{'vs ' + reference:>12}  most answered (labels)"
             "        learned"]
    for name, r in rows.items():
        versus = f"{(r['num_correct'] - base['num_correct']) / num * 100:+.2f} pt" if base else "-"
        answered = (f"{class_names[r['most_answered_class']][:12]!r} {r['most_answered_share']:.1%} "
                    f"({r['most_answered_frequency']:.1%})")
        lines.append(f"{name:<16}{format_share(r['num_correct'], num):>26}"
                     f"{(r['int8']['accuracy'] - r['largest_class_share']) * 100:>+9.2f} pt{versus:>12}  "
                     f"{answered:<30}{'ok' if r['learned'] else 'FAIL'}")
    return "\n".join(lines)


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
    lines += ["", format_learning(record, class_names, BASELINE_PIPELINE)]
    return "\n".join(lines)
