"""``cbnet-tl simulate``: DVFS policies against the hindsight oracle, on real stage times."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from cbnet_tl.runtime.pipelines import DEFAULT_PIPELINE, EARLY_EXIT_PIPELINE
from cbnet_tl.toolchain.cli.common import (
    DEFAULT_TARGET,
    DataDir,
    DatasetChoice,
    JsonOutput,
    PeriodMs,
    PipelineChoice,
    PowerTarget,
    echo_json,
    parse_frequencies_khz,
    power_model,
)

app = typer.Typer()


@app.command()
def simulate(
    bundle: Annotated[Path, typer.Argument(help="Bundle or build directory.")],
    dataset: Annotated[Optional[DatasetChoice], typer.Option(help="Dataset (default: the bundle's).")] = None,
    data_dir: DataDir = None,
    pipeline: Annotated[List[PipelineChoice], typer.Option(help="Pipeline(s) to replay.")] = [PipelineChoice(EARLY_EXIT_PIPELINE), PipelineChoice(DEFAULT_PIPELINE)],
    target: PowerTarget = DEFAULT_TARGET,
    deadline_ms: Annotated[Optional[float], typer.Option(help="Deadline per inference (default: 2x the median top-frequency latency of the pipeline's slowest path, e.g. branchynet's branch+main).")] = None,
    period_ms: PeriodMs = None,
    policy: Annotated[List[str], typer.Option(help="Policies to compare (oracle is the hindsight optimum).")] = ["performance", "powersave", "eenet", "oracle"],
    limit: Annotated[Optional[int], typer.Option(min=1, help="Replay only the first N test images.")] = None,
    repeats: Annotated[int, typer.Option(min=1, help="Times each image is timed; each stage keeps its median.")] = 5,
    frequencies_mhz: Annotated[Optional[str], typer.Option(help="The device's OPP list in MHz, comma-separated, e.g. the mainline Pi 4 driver's 600,700,...,1500 (default: the target table's; `cat /sys/devices/system/cpu/cpufreq/policy0/scaling_available_frequencies` on the device gives kHz).")] = None,
    switch_us: Annotated[Optional[float], typer.Option(min=0, help="Cost of one frequency switch in microseconds (default: the target table's).")] = None,
    save: Annotated[bool, typer.Option(help="Also write BUNDLE/simulate.json (used by `cbnet-tl report`).")] = True,
    json_output: JsonOutput = False,
):
    """Replay each test image's real stage times through a target's power model, per DVFS policy.

    Times measured on this machine count as times at the target's top frequency, scaled by f_max/f.
    """
    from cbnet_tl.runtime.files import write_json_atomic
    from cbnet_tl.toolchain.dvfs_report import format_simulation, simulate_bundle

    frequencies_khz = None if frequencies_mhz is None else parse_frequencies_khz(frequencies_mhz)
    result = simulate_bundle(bundle, dataset.value if dataset else None, data_dir, [p.value for p in pipeline],
                             target=power_model(target), deadline_ms=deadline_ms, period_ms=period_ms,
                             policies=list(policy), limit=limit, repeats=repeats, switch_us=switch_us,
                             frequencies_khz=frequencies_khz)
    if save:
        write_json_atomic(bundle / "simulate.json", result)
    if json_output:
        echo_json(result)
    else:
        typer.echo(format_simulation(result))
