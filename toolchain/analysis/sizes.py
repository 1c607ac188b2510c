"""``cbnet-tl sizes``: train the fast recipe at several sizes on a build's data and measure each in one run.

Each size is trained the way the build trains the default (paper-style, then jointly, toward the build's
own canonical images), fused into one uint8-in int8 graph, scored on the test split through the runtime,
and timed at batch 1 with the others, interleaved, on this machine. Writes ``BUILD/sizes.json`` (and the
graphs under ``BUILD/sizes/``), which ``cbnet-tl report`` plots beside the build's pipelines.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cbnet_tl.runtime.bundle import open_manifest
from cbnet_tl.runtime.errors import ConfigError
from cbnet_tl.runtime.files import write_bytes_atomic, write_json_atomic
from cbnet_tl.runtime.interpreter import Model
from cbnet_tl.runtime.specs import BASELINE_PIPELINE, DEFAULT_PIPELINE, PIPELINE_SPECS


def _timed(pipelines: dict, images: np.ndarray, rounds: int = 5) -> dict:
    """Median µs per image at batch 1 through the pipeline code (as ``bench`` times), interleaved image by image."""
    samples = {name: [] for name in pipelines}
    for _ in range(rounds):
        for image in images:
            for name, pipeline in pipelines.items():
                samples[name].append(pipeline.classify(image).seconds)
    return {name: float(np.median(values) * 1e6) for name, values in samples.items()}


REFERENCE_PIPELINES = (DEFAULT_PIPELINE, BASELINE_PIPELINE)  # the build's own, timed in the same run


def _size_pipelines(build_dir: Path, manifest, models: dict) -> dict:
    """Each size's fused graph as a one-model pipeline like the default one, beside the reference pipelines."""
    from cbnet_tl.runtime.bundle import Bundle, load_bundle
    from cbnet_tl.runtime.pipelines import Pipeline
    from cbnet_tl.runtime.specs import PipelineSpec, models_for

    reference = load_bundle(build_dir, models=models_for(REFERENCE_PIPELINES))
    default = PIPELINE_SPECS[DEFAULT_PIPELINE]
    (fused,) = default.models  # every size's graph has its I/O contract
    names = {size: f"{fused}-{size}" for size in models}
    entries = {**manifest.models, **{names[s]: manifest.models[fused] for s in models}}
    bundle = Bundle(reference.directory, manifest.replace(models=entries), "int8",
                    {**reference.models, **{names[s]: m for s, m in models.items()}})
    pipelines = {name: Pipeline(bundle, name) for name in REFERENCE_PIPELINES}
    for size, name in names.items():
        spec = PipelineSpec(name, (name,), {(name,): default.full_path}, default.runner, deployed=False)
        pipelines[size] = Pipeline(bundle, spec)
    return pipelines


def run_sizes(build_dir: Path, train, test, sizes: Sequence[str], *, seed: int = 0, progress: bool = True,
              log: Callable = print, num_timed: int = 200) -> dict:
    from cbnet_tl.recipes import fast
    from cbnet_tl.toolchain.conversion.convert import Precision, check_raw_pixel_input, to_tflite
    from cbnet_tl.toolchain.training.export import _calibration_pixels
    from cbnet_tl.toolchain.training.train import split_validation
    from cbnet_tl.toolchain.training.fast import train_fast

    unknown = [s for s in sizes if s not in fast.SIZES]
    if unknown:
        raise ConfigError(f"Expected sizes among {list(fast.SIZES)}. Received: {unknown}")
    build_dir, manifest = open_manifest(build_dir)
    canonical = np.load(build_dir / "keras" / "canonical.npy")
    fit, val = split_validation(len(train), 0.1, seed)
    calibration = _calibration_pixels(train.images, np.random.default_rng(seed).permutation(fit)[:500])
    results, models = {}, {}
    for size in sizes:
        config = dataclasses.replace(fast.SIZES[size], num_classes=len(manifest.class_names),
                                     input_shape=manifest.input_spec.shape)
        log(f"size {size}: {config.macs() / 1e6:.3f} M MACs, training")
        ae, classifier, history = train_fast(train.images[fit], train.labels[fit], train.images[val],
                                             train.labels[val], canonical, config, seed=seed, progress=progress)
        path = build_dir / "sizes" / f"cbnet_{size}_int8.tflite"
        write_bytes_atomic(path, to_tflite(fast.build_fused(ae, classifier), Precision.INT8, calibration, "uint8"))
        model = Model(path)
        check_raw_pixel_input(path, {"dtype": model.input.dtype.name, "scale": model.input.scale,
                                     "zero_point": model.input.zero_point})
        predicted = np.concatenate([model.invoke_quantized(test.images[i:i + 500])[0].argmax(-1)
                                    for i in range(0, len(test), 500)])
        results[size] = {"macs": config.macs(), "config": config.to_dict(), "file": str(path.relative_to(build_dir)),
                         "int8_accuracy": float((predicted == test.labels).mean()),
                         "val_accuracy": history.get("best_val_acc"), "train_seconds": history.get("train_seconds")}
        models[size] = model
    timed = _timed(_size_pipelines(build_dir, manifest, models), test.images[:num_timed])
    for size in results:
        results[size]["us_per_image"] = timed[size]
    reference = {name: timed[name] for name in REFERENCE_PIPELINES}
    from cbnet_tl.toolchain.analysis.bench import cpu_model

    method = ("batch 1, 1 thread, through the pipeline code as bench times it, interleaved image by image with "
              f"the build's {' and '.join(reference)}, median")
    record = {"dataset": manifest.dataset, "machine": cpu_model(), "method": method,
              "sizes": results, "reference_us_per_image": reference}
    write_json_atomic(build_dir / "sizes.json", record)
    return record


def format_sizes(record: dict) -> str:
    ref = record.get("reference_us_per_image", {})
    lines = [f"{record['dataset']} on {record['machine']} ({record['method']})",
             "in the same run: " + ", ".join(f"{name} {us:.1f} µs/image" for name, us in ref.items()),
             f"{'size':<9}{'M MACs':>8}{'int8 acc':>10}{'µs/image':>10}"]
    for size, row in record["sizes"].items():
        lines.append(f"{size:<9}{row['macs'] / 1e6:>8.3f}{row['int8_accuracy'] * 100:>9.2f}%{row['us_per_image']:>10.1f}")
    return "\n".join(lines)



