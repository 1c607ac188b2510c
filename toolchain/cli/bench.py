"""``cbnet-tl bench`` and ``cbnet-tl report``."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated

from cbnet_tl.toolchain.cli.common import (
    DEFAULT_TARGET,
    DataDir,
    DatasetChoice,
    JsonOutput,
    PowerTarget,
    echo_json,
    parse_batches,
    power_model,
)

app = typer.Typer()

# qemu-aarch64 7.2's models of the cores our targets have (toolchain/targets.py qemu_cpu) and neoverse-n1. Not its
# default "max", which has SVE/SME that no target has (and there XNNPACK's int8 results are wrong).
Arm64Cpu = Enum("Arm64Cpu", [(name, name) for name in ("cortex-a53", "cortex-a72", "cortex-a76", "neoverse-n1")],
                type=str)
ARM64_KEYS = ("arm64", "arm64_setup", "arm64_vs_lenet", "arm64_bare", "arm64_beyond_bare")


@app.command()
def bench(
    bundle: Annotated[Path, typer.Argument(help="Bundle or build directory (build directories also time float32).")],
    dataset: Annotated[Optional[DatasetChoice], typer.Option(help="Dataset (default: the bundle's).")] = None,
    data_dir: DataDir = None,
    threads: Annotated[int, typer.Option(min=1, help="Interpreter threads, the same for every pipeline.")] = 1,
    batch: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,32",
    num_images: Annotated[int, typer.Option(min=32, help="Test images timed per pipeline and setting.")] = 1024,
    target: PowerTarget = DEFAULT_TARGET,
    untuned: Annotated[bool, typer.Option(help="Only the fixed configurations (int8 and float32 on the default resolver), as before tuning existed.")] = False,
    save: Annotated[bool, typer.Option(help="Also write BUNDLE/bench.json (used by `cbnet-tl report`).")] = True,
    arm64: Annotated[bool, typer.Option(
        "--arm64", help="Instead of timing here, count arm64 instructions per image of every pipeline under qemu "
        "emulation of the target's core, in the arm64 check's Debian root (needs root; sets itself up once). "
        "A proxy for time on the board, not a time.")] = False,
    arm64_cpu: Annotated[Optional[Arm64Cpu], typer.Option(
        help="With --arm64: count on this core instead of the bundle target's (rpi4: cortex-a72, rpi5: cortex-a76).")] = None,
    arm64_root: Annotated[Optional[Path], typer.Option(
        help="With --arm64: the Debian arm64 root (default: the arm64 check's bookworm root in $CBNET_ARM64_CACHE "
        "or /var/cache/cbnet-tl/arm64).")] = None,
    json_output: JsonOutput = False,
):
    """Time every pipeline the same way, at its tuned configuration and at the fixed ones; ratios, MACs, floor, footprint.

    With --arm64: instructions per image on the board's instruction set instead (deterministic, unlike times)."""
    from tqdm.auto import tqdm

    from cbnet_tl.runtime.files import write_json_atomic
    from cbnet_tl.toolchain.analysis.bench import BenchConfig, format_bench, run_bench
    from cbnet_tl.toolchain.analysis.evaluation import load_test_split

    if not arm64 and (arm64_cpu or arm64_root):
        raise typer.BadParameter("--arm64-cpu and --arm64-root go with --arm64. Add --arm64 to count instructions.")
    if arm64 and threads != 1:
        raise typer.BadParameter(f"--arm64 counts with one interpreter thread. Received: --threads {threads}")
    _, test = load_test_split(bundle, data_dir, dataset.value if dataset else None)
    if arm64:
        _count_arm64(bundle, test, parse_batches(batch), num_images, arm64_cpu, arm64_root, save, json_output)
        return
    config = BenchConfig(threads=threads, batch_sizes=parse_batches(batch), num_images=num_images,
                         power_model=power_model(target), tuned=not untuned)
    report = run_bench(bundle, test.images, test.labels, config,
                       progress=None if json_output else (lambda it, **kw: tqdm(it, leave=False, **kw)))
    if save:
        counted = {k: v for k, v in _saved_bench(bundle).items() if k in ARM64_KEYS}  # kept beside the new timings
        write_json_atomic(bundle / "bench.json", {**counted, **report})
    if json_output:
        echo_json(report)
    else:
        typer.echo(format_bench(report))


def _saved_bench(bundle: Path) -> dict:
    """What an earlier `bench` saved in BUNDLE/bench.json (host timings, arm64 counts), or nothing."""
    import json

    try:
        saved = json.loads((bundle / "bench.json").read_text())
    except (OSError, ValueError):
        return {}
    return saved if isinstance(saved, dict) else {}


def _count_arm64(bundle: Path, test, batch_sizes: tuple, num_images: int, cpu, root: Optional[Path], save: bool,
                 json_output: bool) -> None:
    from tqdm.auto import tqdm

    from cbnet_tl.runtime.files import write_json_atomic
    from cbnet_tl.toolchain.arm64.cost import CountConfig, count_pipelines, format_counts

    config = CountConfig(cpu=cpu.value if cpu else None, batch_sizes=batch_sizes, num_images=num_images,
                         **({"root": root} if root else {}))
    report = count_pipelines(bundle, test.images, config,
                             progress=None if json_output else (lambda it, **kw: tqdm(it, leave=False, desc="arm64 runs", **kw)))
    if save:
        timed = {k: v for k, v in _saved_bench(bundle).items() if k not in ARM64_KEYS}  # kept beside the new counts
        write_json_atomic(bundle / "bench.json", {**timed, **report})
    if json_output:
        echo_json(report)
    else:
        typer.echo(format_counts(report))


@app.command()
def report(
    build_dir: Annotated[Path, typer.Argument(help="A build directory from `cbnet-tl build`.")],
    data_dir: DataDir = None,
):
    """Write BUILD_DIR/report/index.html: latency and accuracy beside the paper's, checks, confusion, hard images, DVFS."""
    from cbnet_tl.toolchain.analysis.evaluation import load_test_split
    from cbnet_tl.toolchain.analysis.report import write_report

    _, test = load_test_split(build_dir, data_dir)
    typer.echo(str(write_report(build_dir, test.images, test.labels)))
