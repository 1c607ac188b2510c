"""``cbnet-tl bench`` and ``cbnet-tl report``."""

from __future__ import annotations

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
    json_output: JsonOutput = False,
):
    """Time every pipeline the same way, at its tuned configuration and at the fixed ones; ratios, MACs, floor, footprint."""
    from tqdm.auto import tqdm

    from cbnet_tl.runtime.files import write_json_atomic
    from cbnet_tl.toolchain.bench import BenchConfig, format_bench, run_bench
    from cbnet_tl.toolchain.evaluation import load_test_split

    _, test = load_test_split(bundle, data_dir, dataset.value if dataset else None)
    config = BenchConfig(threads=threads, batch_sizes=parse_batches(batch), num_images=num_images,
                         power_model=power_model(target), tuned=not untuned)
    report = run_bench(bundle, test.images, test.labels, config,
                       progress=None if json_output else (lambda it, **kw: tqdm(it, leave=False, **kw)))
    if save:
        write_json_atomic(bundle / "bench.json", report)
    if json_output:
        echo_json(report)
    else:
        typer.echo(format_bench(report))


@app.command()
def report(
    build_dir: Annotated[Path, typer.Argument(help="A build directory from `cbnet-tl build`.")],
    data_dir: DataDir = None,
):
    """Write BUILD_DIR/report/index.html: latency and accuracy beside the paper's, checks, confusion, hard images, DVFS."""
    from cbnet_tl.toolchain.evaluation import load_test_split
    from cbnet_tl.toolchain.report import write_report

    _, test = load_test_split(build_dir, data_dir)
    typer.echo(str(write_report(build_dir, test.images, test.labels)))
