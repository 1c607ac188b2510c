"""The ``cbnet-tl`` command line. Heavy modules are imported inside each command, so ``--help`` is fast."""

from __future__ import annotations

import json
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from cbnet_tl.runtime.errors import CbnetError

app = typer.Typer(
    name="cbnet-tl",
    help="Build, check, run and deploy CBNet classifiers (converting autoencoder + light classifier) "
    "as int8 TFLite bundles for Raspberry Pi and Coral boards.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class DatasetChoice(str, Enum):
    mnist = "mnist"
    fashion_mnist = "fashion-mnist"
    kmnist = "kmnist"


class PipelineChoice(str, Enum):
    cbnet = "cbnet"
    branchynet = "branchynet"
    lenet = "lenet"
    branch = "branch"


DataDir = Annotated[
    Optional[Path],
    typer.Option(help="Folder with the four IDX .gz files, or one sub-folder of images per class (a custom dataset)."),
]


Dvfs = Annotated[str, typer.Option(help="CPU frequency policy: off, performance, powersave, fixed:<MHz> or eenet.")]
DeadlineMs = Annotated[Optional[float], typer.Option(help="Deadline per inference in ms (needed by every policy but off).")]
PeriodMs = Annotated[Optional[float], typer.Option(help="Inferences arrive every PERIOD ms (default: back to back).")]
SysfsRoot = Annotated[Path, typer.Option(help="Root of the sysfs tree holding cpufreq (tests pass a copy).")]
TargetOption = Annotated[str, typer.Option(help="Target whose power model gives modelled energy (rpi4, coral-usb, coral-devboard).")]


def fail(error: Exception) -> None:
    typer.echo(f"error: {error}", err=True)
    raise typer.Exit(code=1)


def _target_names() -> list:
    from cbnet_tl.toolchain.targets import TARGETS

    return sorted(TARGETS)


@app.command()
def build(
    dataset: Annotated[DatasetChoice, typer.Option(help="Dataset to train on (ignored for a custom --data-dir).")] = DatasetChoice.fashion_mnist,
    out: Annotated[Path, typer.Option(help="Build directory; the bundle lands in OUT/bundle and OUT/*.tar.gz.")] = Path("build"),
    data_dir: DataDir = None,
    target: Annotated[str, typer.Option(help="Deployment target: rpi4, coral-usb or coral-devboard.")] = "rpi4",
    threshold: Annotated[Optional[float], typer.Option(help="Entropy threshold T for easy/hard (default per dataset: mnist 0.05, fashion-mnist 0.5, kmnist 0.025).")] = None,
    max_accuracy_drop: Annotated[float, typer.Option(help="Fail if an int8 pipeline is more than this many points below float32.")] = 1.0,
    blenet_epochs: Annotated[int, typer.Option(min=1, help="Maximum B-LeNet epochs (early stopping).")] = 30,
    autoencoder_epochs: Annotated[int, typer.Option(min=1, help="Maximum converting-AE epochs (early stopping).")] = 100,
    seed: Annotated[int, typer.Option(help="Random seed for splits and weights.")] = 0,
    time_budget_minutes: Annotated[float, typer.Option(min=0, help="Wall-clock limit for training (2/3 B-LeNet, 1/3 AE); training keeps the best epoch so far. 0: no limit.")] = 12.0,
    max_train_images: Annotated[Optional[int], typer.Option(min=10, help="Train on a seeded subset of this many images (quick smoke builds).")] = None,
    force: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
    offline: Annotated[bool, typer.Option(help="Never download datasets.")] = False,
    report: Annotated[bool, typer.Option(help="Write OUT/report/index.html at the end.")] = True,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
    json_output: Annotated[bool, typer.Option("--json", help="Print the build record as JSON.")] = False,
):
    """Train the models, convert them to int8 TFLite, check quantized accuracy, and write a bundle."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ chatter out of the progress bars
    from cbnet_tl.toolchain.build import BuildConfig, build as run_build
    from cbnet_tl.toolchain.checks import CheckConfig
    from cbnet_tl.toolchain.targets import get_target
    from cbnet_tl.toolchain.train import TrainConfig

    try:
        get_target(target)
        config = BuildConfig(
            dataset=dataset.value, out=out, data_dir=data_dir, target=target, threshold=threshold, force=force,
            allow_download=not offline, write_report=report, max_train_images=max_train_images,
            train=TrainConfig(seed=seed, blenet_epochs=blenet_epochs, autoencoder_epochs=autoencoder_epochs, progress=progress,
                              time_budget_s=time_budget_minutes * 60 or None),
            check=CheckConfig(max_accuracy_drop=max_accuracy_drop),
        )
        record = run_build(config, log=(lambda m: typer.echo(m, err=True)) if json_output else typer.echo)
    except (CbnetError, ValueError) as error:
        fail(error)
    if json_output:
        typer.echo(json.dumps(record, indent=2))
    else:
        typer.echo(f"bundle: {out / 'bundle'}  ({record['tarball']})  in {record['timings']['total_s']:.0f} s")


@app.command()
def check(
    build_dir: Annotated[Path, typer.Argument(help="A build directory from `cbnet-tl build`.")],
    data_dir: DataDir = None,
    max_accuracy_drop: Annotated[Optional[float], typer.Option(help="Allowed drop in points (default: the build's).")] = None,
    json_output: Annotated[bool, typer.Option("--json", help="Print the checks record as JSON.")] = False,
):
    """Re-run the float32 vs int8 quantization checks of a build on its test split."""
    from cbnet_tl.toolchain import checks as checks_stage
    from cbnet_tl.toolchain.convert import write_json_atomic
    from cbnet_tl.toolchain.evaluation import load_test_split

    try:
        manifest, test = load_test_split(build_dir, data_dir)
        previous = build_dir / "checks.json"
        allowed = max_accuracy_drop
        if allowed is None:
            allowed = json.loads(previous.read_text())["max_accuracy_drop"] if previous.is_file() else 1.0
        record = checks_stage.run_checks(build_dir, test.images, test.labels,
                                         checks_stage.CheckConfig(max_accuracy_drop=allowed))
        write_json_atomic(build_dir / "checks.json", record)
        typer.echo(json.dumps(record) if json_output else checks_stage.format_table(record, manifest["class_names"]))
        checks_stage.raise_on_failures(record)
    except (CbnetError, ValueError) as error:
        fail(error)


@app.command()
def run(
    bundle: Annotated[Path, typer.Argument(help="Bundle or build directory.")],
    images: Annotated[List[Path], typer.Argument(help="Image files or folders of images.")],
    pipeline: Annotated[PipelineChoice, typer.Option(help="Which pipeline classifies.")] = PipelineChoice.cbnet,
    convert: Annotated[bool, typer.Option(help="Convert any size/mode to 28x28 grayscale instead of refusing it.")] = False,
    threads: Annotated[int, typer.Option(min=1, help="Interpreter threads.")] = 1,
    dvfs: Dvfs = "off",
    deadline_ms: DeadlineMs = None,
    period_ms: PeriodMs = None,
    sysfs_root: SysfsRoot = Path("/"),
    target: TargetOption = "rpi4",
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
):
    """Classify images with a bundle, through the light runtime only, optionally under a DVFS policy."""
    from cbnet_tl.runtime.dvfs_run import dvfs_session
    from cbnet_tl.runtime.images import collect_image_paths
    from cbnet_tl.runtime.runner import classify_paths, open_pipeline

    try:
        runner = open_pipeline(bundle, pipeline.value, num_threads=threads)
        paths = collect_image_paths(images)
        with dvfs_session(dvfs, deadline_ms=deadline_ms, period_ms=period_ms, sysfs_root=sysfs_root,
                          target=target) as session:
            records = []
            for path in paths:
                session.wait_for_arrival()
                records.extend(classify_paths(runner, [path], resize=convert, hook=session))
        summary = session.summary()
    except CbnetError as error:
        fail(error)
    if json_output:
        typer.echo(json.dumps({"pipeline": pipeline.value, "results": records, "dvfs": summary}, indent=2))
        return
    for r in records:
        typer.echo(f"{r['file']}\t{r['class_name']}\t{r['confidence']:.3f}\t{r['path']}\t{r['ms']:.3f} ms")
    typer.echo(format_dvfs_summary(summary))


def format_dvfs_summary(summary: dict) -> str:
    misses = "" if summary["deadline_ms"] == float("inf") else (
        f", deadline {summary['deadline_ms']:.3f} ms missed {summary['deadline_misses']}/{summary['num_inferences']}")
    frequencies = ", ".join(f"{k} MHz {v * 1e3:.1f} ms" if k != "uncontrolled" else f"uncontrolled {v * 1e3:.1f} ms"
                            for k, v in summary["time_at_frequency"].items())
    method = f" ({summary['method']})" if summary.get("method") else ""
    return (f"dvfs {summary['dvfs']}{method}: latency median {summary['latency_ms_median']:.3f} ms, "
            f"p95 {summary['latency_ms_p95']:.3f} ms{misses}; energy {summary['energy_j'] * 1e3:.4f} mJ/inference "
            f"({summary['energy_source']}); time at {frequencies}")


@app.command("eval")
def evaluate_command(
    bundle: Annotated[Path, typer.Argument(help="Bundle or build directory.")],
    dataset: Annotated[Optional[DatasetChoice], typer.Option(help="Dataset (default: the bundle's).")] = None,
    data_dir: DataDir = None,
    pipeline: Annotated[Optional[List[PipelineChoice]], typer.Option(help="Pipeline(s) to evaluate (default: cbnet, branchynet, lenet).")] = None,
    precision: Annotated[str, typer.Option(help="int8, or float32 (build directories only).")] = "int8",
    batch_size: Annotated[int, typer.Option(min=1, help="Images per interpreter call.")] = 1,
    limit: Annotated[Optional[int], typer.Option(min=1, help="Evaluate only the first N test images.")] = None,
    dvfs: Dvfs = "off",
    deadline_ms: DeadlineMs = None,
    period_ms: PeriodMs = None,
    sysfs_root: SysfsRoot = Path("/"),
    target: TargetOption = "rpi4",
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
):
    """Accuracy, share of each path and time per image on this machine, through the runtime only.

    With --dvfs other than off (or --deadline-ms/--period-ms), images run one at a time under the policy
    and each pipeline also reports misses, latency, energy per inference and time at each frequency.
    """
    from cbnet_tl.toolchain.evaluation import evaluate_bundle, format_evaluation

    try:
        names = [p.value for p in pipeline] if pipeline else None
        dvfs_options = None
        if dvfs != "off" or deadline_ms is not None or period_ms is not None:
            dvfs_options = {"dvfs": dvfs, "deadline_ms": deadline_ms, "period_ms": period_ms,
                            "sysfs_root": sysfs_root, "target": target}
        result = evaluate_bundle(bundle, dataset.value if dataset else None, data_dir, names,
                                 precision=precision, batch_size=batch_size, limit=limit, dvfs=dvfs_options)
    except CbnetError as error:
        fail(error)
    typer.echo(json.dumps(result, indent=2) if json_output else format_evaluation(result))


@app.command()
def simulate(
    bundle: Annotated[Path, typer.Argument(help="Bundle or build directory.")],
    dataset: Annotated[Optional[DatasetChoice], typer.Option(help="Dataset (default: the bundle's).")] = None,
    data_dir: DataDir = None,
    pipeline: Annotated[List[PipelineChoice], typer.Option(help="Pipeline(s) to replay.")] = [PipelineChoice.branchynet, PipelineChoice.cbnet],
    target: TargetOption = "rpi4",
    deadline_ms: Annotated[Optional[float], typer.Option(help="Deadline per inference (default: 2x the median top-frequency latency of the pipeline's slowest path, e.g. branchynet's branch+main).")] = None,
    period_ms: PeriodMs = None,
    policy: Annotated[List[str], typer.Option(help="Policies to compare (oracle is the hindsight optimum).")] = ["performance", "powersave", "eenet", "oracle"],
    limit: Annotated[Optional[int], typer.Option(min=1, help="Replay only the first N test images.")] = None,
    repeats: Annotated[int, typer.Option(min=1, help="Times each image is timed; each stage keeps its median.")] = 5,
    frequencies_mhz: Annotated[Optional[str], typer.Option(help="The device's OPP list in MHz, comma-separated, e.g. the mainline Pi 4 driver's 600,700,...,1500 (default: the target table's; `cat /sys/devices/system/cpu/cpufreq/policy0/scaling_available_frequencies` on the device gives kHz).")] = None,
    switch_us: Annotated[Optional[float], typer.Option(min=0, help="Cost of one frequency switch in microseconds (default: the target table's).")] = None,
    save: Annotated[bool, typer.Option(help="Also write BUNDLE/simulate.json (used by `cbnet-tl report`).")] = True,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
):
    """Replay each test image's real stage times through a target's power model, per DVFS policy.

    Times measured on this machine count as times at the target's top frequency, scaled by f_max/f.
    """
    from cbnet_tl.toolchain.convert import write_json_atomic
    from cbnet_tl.toolchain.dvfs_report import format_simulation, simulate_bundle

    try:
        result = simulate_bundle(bundle, dataset.value if dataset else None, data_dir, [p.value for p in pipeline],
                                 target=target, deadline_ms=deadline_ms, period_ms=period_ms, policies=list(policy),
                                 limit=limit, repeats=repeats, switch_us=switch_us,
                                 frequencies_khz=None if frequencies_mhz is None else parse_frequencies_khz(frequencies_mhz))
        if save:
            write_json_atomic(bundle / "simulate.json", result)
    except (CbnetError, ValueError) as error:
        fail(error)
    typer.echo(json.dumps(result, indent=2) if json_output else format_simulation(result))


@app.command()
def inspect(
    models: Annotated[List[Path], typer.Argument(help=".tflite files, or bundle/build directories (every model in models/).")],
    target: Annotated[str, typer.Option(help="Accelerator target whose op table to check against.")] = "coral-usb",
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
):
    """Which ops of each model map to the Edge TPU, which fall back to the CPU, and where the graph splits."""
    from cbnet_tl.toolchain.coral import format_inspection, inspect_model
    from cbnet_tl.toolchain.targets import get_target

    try:
        if get_target(target).accelerator != "edgetpu":
            raise CbnetError(f"Target {target} has no Edge TPU; expected coral-usb or coral-devboard")
        files = []
        for item in models:
            if item.is_dir():
                folder = item / "models" if (item / "models").is_dir() else item / "bundle" / "models"
                found = sorted(p for p in folder.glob("*_int8.tflite"))
                if not found:
                    raise CbnetError(f"{item}: no int8 .tflite models found in {folder}")
                files.extend(found)
            else:
                files.append(item)
        reports = {path.stem: inspect_model(path) for path in files}
    except CbnetError as error:
        fail(error)
    typer.echo(json.dumps({"target": target, "models": reports}, indent=2) if json_output else format_inspection(reports))


def parse_frequencies_khz(text: str) -> list:
    """'600,750,1500' (MHz) or kHz values as sysfs prints them ('600000 750000') -> kHz."""
    try:
        values = [float(part) for part in text.replace(",", " ").split()]
    except ValueError:
        raise typer.BadParameter(f"Expected comma-separated frequencies in MHz such as 600,1000,1500. "
                                 f"Received: {text!r}") from None
    if not values or min(values) <= 0:
        raise typer.BadParameter(f"Expected at least one frequency > 0 MHz. Received: {text!r}")
    return [int(round(v if v >= 100_000 else v * 1000)) for v in values]  # sysfs lists kHz


def _parse_batches(text: str) -> tuple:
    try:
        sizes = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise typer.BadParameter(f"Expected comma-separated integers such as 1,32. Received: {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise typer.BadParameter(f"Expected batch sizes >= 1. Received: {text!r}")
    return sizes


@app.command()
def bench(
    bundle: Annotated[Path, typer.Argument(help="Bundle or build directory (build directories also time float32).")],
    dataset: Annotated[Optional[DatasetChoice], typer.Option(help="Dataset (default: the bundle's).")] = None,
    data_dir: DataDir = None,
    threads: Annotated[int, typer.Option(min=1, help="Interpreter threads, the same for every pipeline.")] = 1,
    batch: Annotated[str, typer.Option(help="Comma-separated batch sizes.")] = "1,32",
    num_images: Annotated[int, typer.Option(min=32, help="Test images timed per pipeline and setting.")] = 1024,
    target: Annotated[str, typer.Option(help="Target whose power model gives the energy per image.")] = "rpi4",
    save: Annotated[bool, typer.Option(help="Also write BUNDLE/bench.json (used by `cbnet-tl report`).")] = True,
    json_output: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
):
    """Time lenet, branchynet, the truncated branch and cbnet the same way; report ratios, MACs, footprint."""
    from tqdm.auto import tqdm

    from cbnet_tl.toolchain.bench import BenchConfig, format_bench, run_bench
    from cbnet_tl.toolchain.convert import write_json_atomic
    from cbnet_tl.toolchain.evaluation import load_test_split

    try:
        _, test = load_test_split(bundle, data_dir, dataset.value if dataset else None)
        config = BenchConfig(threads=threads, batch_sizes=_parse_batches(batch), num_images=num_images, target=target)
        report = run_bench(bundle, test.images, test.labels, config,
                           progress=None if json_output else (lambda it, **kw: tqdm(it, leave=False, **kw)))
        if save:
            write_json_atomic(bundle / "bench.json", report)
    except CbnetError as error:
        fail(error)
    typer.echo(json.dumps(report, indent=2) if json_output else format_bench(report))


@app.command()
def report(
    build_dir: Annotated[Path, typer.Argument(help="A build directory from `cbnet-tl build`.")],
    data_dir: DataDir = None,
):
    """Write BUILD_DIR/report/index.html: latency and accuracy beside the paper's, checks, confusion, hard images, DVFS."""
    from cbnet_tl.toolchain.evaluation import load_test_split
    from cbnet_tl.toolchain.report import write_report

    try:
        _, test = load_test_split(build_dir, data_dir)
        path = write_report(build_dir, test.images, test.labels)
    except CbnetError as error:
        fail(error)
    typer.echo(str(path))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
