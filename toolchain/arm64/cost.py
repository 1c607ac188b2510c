"""``cbnet-tl bench --arm64``: instructions per image of every pipeline on the board's instruction set.

Each pipeline of a bundle runs inside the Debian arm64 root the arm64 check builds (scripts/arm64_check.py),
under the dynamic ``qemu-aarch64`` emulating the target's core (``-cpu cortex-a72`` for a Raspberry Pi 4), with
a small TCG plugin (``toolchain/data/insncount.c``, compiled here) counting the guest instructions executed. One run per
pipeline and batch size (``probe.py``, copied into the root as ``arm64_probe.py``): after start-up, loading and a warm-up call, the same loop runs on
N images and on 0, each between two marks the plugin records, so (count(N) - count(0)) / N is the instructions
per image, with none of the start-up (whose run-to-run noise would land on the per-image figure if the two
counts came from two separate runs). The guest sees the emulated core's /proc/cpuinfo
(``arm64_setup.proc_cpuinfo``), so the interpreter picks the kernels it picks on the board (qemu 7.2 would show
it the host's x86 one, and XNNPACK would take its generic kernels). It is an instruction count under emulation,
from the same aarch64 kernels the board runs: a proxy for time on the board, not a time (no caches, no memory
stalls, every instruction weighs one, a prefetch too).

Beside the pipelines, each model's bare call (``set_tensor`` + ``invoke`` + ``get_tensor``) is counted at each
batch size on both kernel choices the bundle's tuning weighs (``runtime/tuning.py``): the default resolver
(XNNPACK) and the built-in kernels alone. The pipelines run as deployed without a tuning file (the default).

The counting environment in the root (qemu, the plugin, a venv with the interpreter) is ``arm64_setup.py``'s;
it sets itself up at the first count (needs root, and the network once); counting needs no network.
"""

from __future__ import annotations

import concurrent.futures
import json
import shutil
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from cbnet_tl.runtime.specs import BASELINE_PIPELINE as BASELINE  # ratios are to it
from cbnet_tl.toolchain.arm64.setup import (
    CORES,
    DEFAULT_CACHE,
    DEFAULT_SUITE,
    IN_ROOT,
    count_dir,
    Arm64CountError,
    guest_env,
    setup_lock,
    last_line,
    in_root,
    is_prepared,
    prepare,
    proc_cpuinfo,
    qemu_version,
    require_root,
)

PROBE_SOURCE = Path(__file__).parent / "probe.py"
METHOD = ("instructions per image counted under qemu-aarch64 emulation (TCG plugin), (count of a loop on N images - "
          "count of the same loop on 0) / N, in one process after start-up, the guest shown the emulated core's "
          "/proc/cpuinfo (the interpreter picks its kernels as on the board): a proxy for time on the board, "
          "not a time")
RESOLVERS = ("default", "builtin")  # runtime.interpreter.RESOLVERS: the kernel choices a bare call is counted on
KERNEL_LABELS = {"default": "XNNPACK (default)", "builtin": "built-in"}


@dataclass(frozen=True)
class CountConfig:
    cpu: Optional[str] = None  # qemu's -cpu; None: the core of the bundle's target (toolchain/targets.py)
    batch_sizes: tuple = (1, 32)
    num_images: int = 1024
    root: Path = DEFAULT_CACHE / DEFAULT_SUITE
    jobs: int = 2  # counting runs at once (counts do not depend on load)
    bare: bool = True  # also each model's bare call, at each batch size, on each of RESOLVERS

    def __post_init__(self):
        if self.num_images < max(self.batch_sizes, default=1) or min(self.batch_sizes, default=0) < 1 or self.jobs < 1:
            raise Arm64CountError(f"Expected batch sizes >= 1, num_images >= the largest batch and jobs >= 1. Received "
                                  f"batch_sizes={self.batch_sizes}, num_images={self.num_images}, jobs={self.jobs}")


# ---------------------------------------------------------------------------------------------------------
# counting


@dataclass(frozen=True)
class Job:
    kind: str  # "pipeline" or "bare"
    name: str
    batch_size: int
    num_images: int  # the counted loop's images (a multiple of batch_size)
    resolver: str = "default"  # a bare call's kernels (RESOLVERS); pipelines run the default configuration


def _count(root: Path, work: str, job: Job, cpu: str, cpuinfo: Path) -> tuple:
    """((instructions of the loop on N images, of the loop on 0), the probe's JSON line) of one run, the guest
    shown ``cpuinfo`` (a host file) as /proc/cpuinfo."""
    out = f"{work}/{job.kind}-{job.name}-{job.batch_size}-{job.resolver}.count"
    host = f"{IN_ROOT}/host"
    argv = [f"{host}/ld.so", "--library-path", f"{host}/lib", f"{host}/qemu-aarch64", "-cpu", cpu,
            "-plugin", f"{host}/insncount.so,out={out}", f"{IN_ROOT}/venv/bin/python", f"{work}/arm64_probe.py",
            f"{work}/bundle", f"{work}/images.npy", job.kind, job.name, str(job.batch_size), str(job.num_images),
            job.resolver]
    result = in_root(root, argv, env=guest_env({"PYTHONDONTWRITEBYTECODE": "1"}), cwd=work,
                     binds=((str(cpuinfo), "/proc/cpuinfo"),))
    count_file = root / out.lstrip("/")
    if result.returncode != 0 or not count_file.is_file():
        raise Arm64CountError(f"counting {job.kind} {job.name} at batch {job.batch_size} ({job.resolver}) on {cpu} "
                              f"failed (exit {result.returncode}): {last_line(result.stderr)}")
    _total, *marks = [int(line) for line in count_file.read_text().split()]
    if len(marks) != 4:
        raise Arm64CountError(f"counting {job.kind} {job.name} at batch {job.batch_size}: expected 4 marks from the "
                              f"probe, the plugin saw {len(marks)}")
    return (marks[1] - marks[0], marks[3] - marks[2]), result.stdout.strip().splitlines()[-1]


def _copy_bundle(bundle: Path, dest: Path, models: list) -> None:
    """The bundle's runtime, manifest and the int8 files of ``models`` (enough to load them)."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    shutil.copytree(bundle / "lib", dest / "lib")
    shutil.copy2(bundle / "manifest.json", dest / "manifest.json")
    for model in models:
        relative = manifest["models"][model]["int8"]["file"]
        (dest / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(bundle / relative, dest / relative)


def count_bundle(bundle: Path, images: np.ndarray, pipelines: dict, config: CountConfig,
                 progress: Optional[Callable] = None, extra_models: tuple = ()) -> dict:
    """Instructions per image of each pipeline at each batch size (and of each model's bare call, on each kernel
    choice).

    ``pipelines``: name -> the models it loads. ``images``: uint8 images as the pipelines take them.
    ``extra_models``: also counted bare (the empty model)."""
    cpu = config.cpu or "cortex-a72"
    cpuinfo = proc_cpuinfo(cpu)  # refuses a core it cannot describe, before any set-up
    requirements = (bundle / "requirements.txt").read_text()
    require_root(config.root)
    with setup_lock(config.root):
        if not is_prepared(config.root, requirements):
            prepare(config.root, requirements, pip_cache=config.root.parent / "pip")
    models = sorted({m for names in pipelines.values() for m in names} | set(extra_models))
    jobs = [Job("pipeline", name, b, (config.num_images // b) * b) for name in pipelines for b in config.batch_sizes]
    if config.bare:
        jobs += [Job("bare", model, b, (config.num_images // b) * b, resolver)
                 for model in models for b in _bare_batches(config) for resolver in RESOLVERS]
    (count_dir(config.root) / "work").mkdir(parents=True, exist_ok=True)
    host_work = Path(tempfile.mkdtemp(prefix="run-", dir=count_dir(config.root) / "work"))
    work = f"{IN_ROOT}/work/{host_work.name}"
    try:
        _copy_bundle(bundle, host_work / "bundle", models)
        np.save(host_work / "images.npy", np.ascontiguousarray(images[: config.num_images]))
        shutil.copy2(PROBE_SOURCE, host_work / "arm64_probe.py")
        (host_work / "cpuinfo").write_text(cpuinfo)
        counts, versions = {}, {}
        with concurrent.futures.ThreadPoolExecutor(max_workers=config.jobs) as pool:
            futures = {pool.submit(_count, config.root, work, job, cpu, host_work / "cpuinfo"): job for job in jobs}
            done = concurrent.futures.as_completed(futures)
            for future in progress(done, total=len(futures)) if progress else done:
                counts[futures[future]], line = future.result()
                versions = json.loads(line)
    finally:
        shutil.rmtree(host_work, ignore_errors=True)
    return _report(counts, versions, pipelines, replace(config, cpu=cpu), models)


def count_pipelines(path: Path, images: np.ndarray, config: CountConfig, progress: Optional[Callable] = None) -> dict:
    """Every deployed pipeline of a bundle (or a build's bundle): instructions per image at each batch size, the
    ratios to LeNet, each model's bare call, and each pipeline's count beyond the bare calls of the models it ran."""
    from cbnet_tl.runtime.api import open_pipeline
    from cbnet_tl.runtime.bundle import open_manifest
    from cbnet_tl.runtime.specs import DEPLOYED_PIPELINES, INVOKE_PROBE, spec_in
    from cbnet_tl.toolchain.scoring import run_pipeline
    from cbnet_tl.toolchain.targets import TARGETS

    directory, manifest = open_manifest(path)
    bundle = directory / "bundle" if (directory / "bundle" / "run.py").is_file() else directory
    if not (bundle / "lib").is_dir() or not (bundle / "requirements.txt").is_file():
        raise Arm64CountError(f"{bundle} is not a deployment bundle (no lib/ or requirements.txt): pass a bundle "
                              "or a build directory from `cbnet-tl build`")
    target = TARGETS.get(manifest.target or "")
    config = replace(config, cpu=config.cpu or (target.qemu_cpu if target else "cortex-a72"))
    specs = {n: spec_in(n, manifest) for n in DEPLOYED_PIPELINES}  # the models this build chose (cbnet-fallback's)
    names = [n for n, spec in specs.items() if all(m in manifest.models for m in spec.models)]
    images = images[: config.num_images]
    if len(images) < config.num_images:
        raise Arm64CountError(f"Expected at least {config.num_images} test images. Received: {len(images)}")
    report = count_bundle(bundle, images, {n: specs[n].models for n in names}, config, progress,
                          extra_models=tuple(m for m in (INVOKE_PROBE,) if m in manifest.models))
    report["arm64_setup"]["target"] = manifest.target
    if config.bare and 1 in config.batch_sizes:
        beyond = {}
        for name in names:  # which models each image ran, on this machine's interpreter (the same int8 decisions)
            ran = run_pipeline(open_pipeline(bundle, name, tuning=None), images, batch_size=256)["paths"]
            by_label = {label: models for models, label in specs[name].paths.items()}
            bare = sum(sum(report["arm64_bare"][m] for m in by_label[label]) for label in ran) / len(ran)
            beyond[name] = round(report["arm64"][name]["1"] - bare)
        report["arm64_beyond_bare"] = beyond
    return report


def _bare_batches(config: CountConfig) -> tuple:
    return tuple(sorted({1, *config.batch_sizes}))  # batch 1 always: each pipeline's count beyond its bare calls


def _per_image(counts: dict, kind: str, name: str, batch_size: int, num_images: int,
               resolver: str = "default") -> int:
    full = (num_images // batch_size) * batch_size
    with_images, without = counts[Job(kind, name, batch_size, full, resolver)]
    return round((with_images - without) / full)


def _report(counts: dict, versions: dict, pipelines: dict, config: CountConfig, models: list) -> dict:
    per_pipeline = {name: {str(b): _per_image(counts, "pipeline", name, b, config.num_images)
                           for b in config.batch_sizes} for name in pipelines}
    report = {"arm64": per_pipeline,
              "arm64_setup": {"cpu": config.cpu, "qemu": qemu_version(), "num_images": config.num_images,
                              "root": str(config.root), **versions, "method": METHOD,
                              "cpuinfo": f"{config.cpu}, MIDR {CORES[config.cpu][0]:#010x}" if config.cpu in CORES
                              else None}}
    if BASELINE in per_pipeline:
        report["arm64_vs_lenet"] = {name: {b: per_pipeline[BASELINE][b] / n for b, n in row.items() if n > 0}
                                    for name, row in per_pipeline.items()}
    if config.bare:
        kernels = {m: {r: {str(b): _per_image(counts, "bare", m, b, config.num_images, r)
                           for b in _bare_batches(config)} for r in RESOLVERS} for m in models}
        report["arm64_bare"] = {m: row["default"]["1"] for m, row in kernels.items()}  # what the pipelines run
        report["arm64_bare_kernels"] = kernels  # model -> kernels -> batch -> per image
    return report


def _version_word(text: str) -> str:
    """'qemu-aarch64 version 7.2.22 (Debian ...)' -> '7.2.22'."""
    words = text.split()
    return words[words.index("version") + 1] if "version" in words[:-1] else text


def format_counts(report: dict) -> str:
    setup = report["arm64_setup"]
    batches = list(next(iter(report["arm64"].values())))
    identity = f" shown as {setup['cpuinfo']} in /proc/cpuinfo" if setup.get("cpuinfo") else ""
    lines = [f"arm64 instruction count per image under emulation (qemu {_version_word(setup['qemu'])} "
             f"-cpu {setup['cpu']}{identity}, {setup.get('interpreter', '?')} {setup.get('interpreter_version', '?')}, "
             f"Python {setup.get('python', '?')}, {setup['num_images']} images): a proxy for time on the board, "
             "not a time",
             f"{'pipeline':<16}" + "".join(f"{'batch ' + b:>14}{'vs lenet':>10}" for b in batches)]
    ratios = report.get("arm64_vs_lenet", {})
    for name, row in report["arm64"].items():
        cells = ""
        for b in batches:
            ratio = ratios.get(name, {}).get(b)
            cells += f"{row[b]:>14,}" + (f"{ratio:>9.2f}x" if ratio else f"{'-':>10}")
        lines.append(f"{name:<16}{cells}")
    if report.get("arm64_bare"):
        lines.append("bare set_tensor + invoke + get_tensor, batch 1: "
                     + ", ".join(f"{m} {n:,}" for m, n in report["arm64_bare"].items()))
    for model, row in (report.get("arm64_bare_kernels") or {}).items():
        lines.append(f"bare call of {model} per image by kernels: " + "; ".join(
            f"{KERNEL_LABELS.get(r, r)} " + ", ".join(f"batch {b} {n:,}" for b, n in by_batch.items())
            for r, by_batch in row.items()))
    if report.get("arm64_beyond_bare"):
        lines.append("beyond the bare calls of the models each image ran, batch 1: "
                     + ", ".join(f"{m} {n:,}" for m, n in report["arm64_beyond_bare"].items()))
    return "\n".join(lines)


def side_by_side(bench: dict) -> Optional[dict]:
    """The arm64 counts saved in a bench.json beside the host timings saved with them (same pipelines, batch sizes):
    instructions per image, LeNet's count over each pipeline's, and LeNet's time here over each pipeline's (the
    fixed int8 configuration, which the count also runs, when it was timed; else the first)."""
    if not bench or not bench.get("arm64"):
        return None
    runs = bench.get("runs") or []
    precision = "int8" if any(r["precision"] == "int8" for r in runs) else (runs[0]["precision"] if runs else None)
    host = {r["batch_size"]: r["pipelines"] for r in runs if r["precision"] == precision}
    rows = []
    for name, row in bench["arm64"].items():
        for batch, count in row.items():
            timed = host.get(int(batch), {}).get(name, {})
            rows.append({"pipeline": name, "batch": int(batch), "instructions": count,
                         "arm64_vs_lenet": bench.get("arm64_vs_lenet", {}).get(name, {}).get(batch),
                         "host_vs_lenet": timed.get(f"speedup_vs_{BASELINE}")})
    return {"setup": bench["arm64_setup"], "rows": rows, "host_precision": precision,
            "host_machine": bench.get("machine"), "bare": bench.get("arm64_bare") or {},
            "beyond_bare": bench.get("arm64_beyond_bare") or {}}
