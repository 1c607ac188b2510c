"""``cbnet-tl simulate``: DVFS policies against the hindsight oracle, on real stage times."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from cbnet_tl.runtime.specs import DEFAULT_PIPELINE, EARLY_EXIT_PIPELINE
from cbnet_tl.toolchain.cli.common import (
    DEFAULT_TARGET,
    DataDir,
    DatasetChoice,
    JsonOutput,
    PipelineChoice,
    PowerTarget,
    echo_json,
    parse_frequencies_khz,
    power_model,
)

app = typer.Typer()


def default_pipelines(bundle: Path) -> list:
    """What simulate replays without --pipeline: the optional pipelines the bundle deploys (their work is the
    longest), then the early exit and CBNet."""
    from cbnet_tl.runtime.bundle import open_manifest
    from cbnet_tl.runtime.specs import OPTIONAL_PIPELINES, deployed_pipelines

    deployed = deployed_pipelines(open_manifest(bundle)[1])
    return [p for p in OPTIONAL_PIPELINES if p in deployed] + [EARLY_EXIT_PIPELINE, DEFAULT_PIPELINE]


@app.command()
def simulate(
    bundle: Annotated[Path, typer.Argument(help="Bundle or build directory.")],
    dataset: Annotated[Optional[DatasetChoice], typer.Option(help="Dataset (default: the bundle's).")] = None,
    data_dir: DataDir = None,
    pipeline: Annotated[Optional[List[PipelineChoice]], typer.Option(help="Pipeline(s) to replay; the first is the headline. Default: the optional pipelines the bundle deploys (multiexit, where built --with it), then branchynet and cbnet.")] = None,
    target: PowerTarget = DEFAULT_TARGET,
    workload: Annotated[Optional[str], typer.Option(help="Arrivals served in batches: camera:FPS (deadline = the period), burst:K:MS (K images at once, due within MS ms) or arrivals:FILE (arrival times in seconds, one per line). Without it: each test image alone, back to back and periodic.")] = None,
    deadline_ms: Annotated[Optional[float], typer.Option(help="Deadline per image, counted from its arrival (a batch's from its oldest image). Default: the workload's; without --workload 2x the median top-frequency latency of the pipeline's slowest path; never less than two frequency switches unless given here.")] = None,
    period_ms: Annotated[Optional[float], typer.Option(help="Shorthand for --workload camera:(1000/PERIOD): one image every PERIOD ms.")] = None,
    batch_size: Annotated[int, typer.Option(min=1, help="With --workload: the most images a batch takes (as `eval` and `watch` do).")] = 1,
    threads: Annotated[int, typer.Option(min=1, help="Interpreter threads when timing here; the power model counts that many busy cores.")] = 1,
    power_table: Annotated[Optional[Path], typer.Option(exists=True, dir_okay=False, help="Your own power table: a JSON object whose keys are the PowerTable fields (target, cpu, default_frequencies_mhz, volt_points, idle_w, loaded_w, loaded_cores, loaded_mhz, switch_seconds; optional active_cores, accelerator_w, notes). Replaces --target's table.")] = None,
    trace: Annotated[Optional[Path], typer.Option(exists=True, dir_okay=False, help="With --workload: replay stage times recorded on the board (a cbnet-tl-stage-trace JSON: per pipeline, stage and batch size, seconds at each MHz; see toolchain/simulation/trace_read.py) instead of timing here.")] = None,
    save_trace: Annotated[Optional[Path], typer.Option(dir_okay=False, help="With --workload: also write the stage times this run used as a trace file (replay it with --trace).")] = None,
    time_scale: Annotated[Optional[float], typer.Option(help="With --workload and no --trace: multiply host times by this to stand for the target's top frequency (default: from recorded arm64 instruction counts, else 1; the output says which).")] = None,
    policy: Annotated[List[str], typer.Option(help="Policies to compare (oracle is the hindsight optimum).")] = ["performance", "powersave", "eenet", "oracle"],
    limit: Annotated[Optional[int], typer.Option(min=1, help="Replay only the first N test images.")] = None,
    repeats: Annotated[int, typer.Option(min=1, help="Times each image is timed; each stage keeps its median.")] = 5,
    frequencies_mhz: Annotated[Optional[str], typer.Option(help="The device's OPP list in MHz, comma-separated, e.g. the mainline Pi 4 driver's 600,700,...,1500 (default: the target table's; `cat /sys/devices/system/cpu/cpufreq/policy0/scaling_available_frequencies` on the device gives kHz).")] = None,
    switch_us: Annotated[Optional[float], typer.Option(min=0, help="Cost of one frequency switch in microseconds (default: the target table's).")] = None,
    save: Annotated[bool, typer.Option(help="Also write BUNDLE/simulate.json (used by `cbnet-tl report`).")] = True,
    json_output: JsonOutput = False,
):
    """Replay real stage times through a target's power model, per DVFS policy, against the hindsight oracle.

    With --workload: batches of a camera stream, a burst or recorded arrivals, with stage times from a board's trace (--trace) or from this machine scaled to the target by a stated factor. Without: each test image's host times, unscaled, back to back and periodic. Times count as times at the top frequency, scaled by f_max/f.
    """
    from cbnet_tl.runtime.dvfs.power_tables import power_table as named_table
    from cbnet_tl.toolchain.simulation.table_file import load_power_table
    from cbnet_tl.runtime.files import write_json_atomic
    from cbnet_tl.toolchain.simulation.dvfs_report import format_simulation, simulate_bundle
    from cbnet_tl.toolchain.simulation.workload_report import format_workload

    frequencies_khz = None if frequencies_mhz is None else parse_frequencies_khz(frequencies_mhz)
    names = [p.value for p in pipeline] if pipeline else default_pipelines(bundle)
    table = load_power_table(power_table) if power_table else named_table(power_model(target))
    if period_ms is not None:
        if workload is not None:
            raise typer.BadParameter("--period-ms is a shorthand for --workload camera:(1000/PERIOD); give one of them")
        if not period_ms > 0:
            raise typer.BadParameter(f"Expected --period-ms > 0. Received: {period_ms}")
        workload = f"camera:{1000.0 / period_ms!r}"
        typer.echo(f"note: --period-ms {period_ms:g} runs --workload camera:{1000.0 / period_ms:g}: one image every "
                   f"{period_ms:g} ms, due within the period unless --deadline-ms says otherwise", err=True)
    if workload is None:
        given = [name for name, value in (("--trace", trace), ("--save-trace", save_trace),
                                          ("--time-scale", time_scale)) if value is not None]
        if given or batch_size != 1:
            raise typer.BadParameter(f"{', '.join(given) or '--batch-size'} go(es) with --workload (batches of a "
                                     "workload). Add e.g. --workload burst:256:500")
        result = simulate_bundle(bundle, dataset.value if dataset else None, data_dir, names,
                                 target=table, deadline_ms=deadline_ms, period_ms=None, policies=list(policy),
                                 limit=limit, repeats=repeats, switch_us=switch_us, frequencies_khz=frequencies_khz,
                                 threads=threads)
    else:
        from cbnet_tl.toolchain.simulation.workload_report import run_workload

        result = run_workload(bundle, dataset.value if dataset else None, data_dir, names,
                              table, workload, deadline_ms=deadline_ms, batch_size=batch_size, threads=threads,
                              policies=list(policy), limit=limit, repeats=repeats, switch_us=switch_us,
                              frequencies_khz=frequencies_khz, trace=trace, save_trace=save_trace,
                              time_scale=time_scale)
    if save:
        write_json_atomic(bundle / "simulate.json", result)
    if json_output:
        echo_json(result)
    else:
        typer.echo(format_simulation(result) if workload is None else format_workload(result))
