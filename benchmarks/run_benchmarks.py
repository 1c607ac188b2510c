"""Reproduce the shape of the CBNet paper's latency / accuracy / energy table on this machine.

    .venv/bin/python benchmarks/run_benchmarks.py --fmnist-build build/fashion-mnist --mnist-build build/mnist8k \
        [--fmnist-paper-build build/fashion-mnist-paper --mnist-paper-build build/mnist8k-paper]

Each build directory comes from `cbnet-tl build` (the commands are printed in RESULTS.md). The script
runs `cbnet-tl bench` (int8 and float32, batch 1 and 32) on each, and writes benchmarks/RESULTS.md
with the machine, the commands, our figures, the paper's figures (labelled) and a verdict per claim.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLI = [sys.executable, "-m", "cbnet_tl.toolchain.cli"]


def run_bench(build: Path, data_dir: str | None) -> tuple:
    command = CLI + ["bench", str(build), "--batch", "1,32", "--json"] + (["--data-dir", data_dir] if data_dir else [])
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(out.stdout), command


def run_arm64(build: Path, data_dir: str | None, cpu: str) -> tuple:
    """`cbnet-tl bench --arm64` on one core (needs root and the arm64 check's root; see toolchain/arm64/cost.py)."""
    command = CLI + ["bench", str(build), "--arm64", "--arm64-cpu", cpu, "--batch", "1,32", "--no-save", "--json"] \
        + (["--data-dir", data_dir] if data_dir else [])
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(out.stdout), command


def arm64_section(host: dict, counted: dict, commands: list) -> list:
    """Markdown: each pipeline's arm64 instructions per image on each core beside its time here, as ratios to LeNet.

    ``counted``: cpu -> a `bench --arm64 --json` report; ``host``: a `bench --json` report of the same build."""
    from cbnet_tl.toolchain.arm64.cost import side_by_side

    sides = {cpu: side_by_side({**host, **report}) for cpu, report in counted.items()}
    first = next(iter(sides.values()))
    setup = first["setup"]
    lines = ["Instructions per image counted under qemu-aarch64 7.2 with a counting plugin in a Debian bookworm arm64 "
             f"root ({setup['interpreter']} {setup['interpreter_version']}, Python {setup['python']}, "
             f"{setup['num_images']} test images, a loop on N images minus the same loop on 0, counted between marks "
             "in one process after start-up, divided by N; the default configuration): "
             "the board's own aarch64 kernels, counted. **An instruction count under emulation is a proxy for time on "
             "the board, not a time.** Beside it, the same pipelines timed on this machine "
             f"({first['host_precision']}, {first['host_machine']}).", "", "```", *commands, "```", "",
             "| pipeline | batch | " + " | ".join(f"{cpu} instructions/image | × vs LeNet ({cpu})" for cpu in sides)
             + " | × vs LeNet (time here) |", "|---|---|" + "---|---|" * len(sides) + "---|"]
    for index, row in enumerate(first["rows"]):
        cells = []
        for side in sides.values():
            other = side["rows"][index]
            cells += [f"{other['instructions']:,}", f"{other['arm64_vs_lenet']:.2f}" if other["arm64_vs_lenet"] else "–"]
        host_ratio = f"{row['host_vs_lenet']:.2f}" if row["host_vs_lenet"] else "–"
        lines.append(f"| {row['pipeline']} | {row['batch']} | " + " | ".join(cells) + f" | {host_ratio} |")
    for cpu, side in sides.items():
        if side["bare"]:
            lines += ["", f"{cpu}: bare `set_tensor` + `invoke` + `get_tensor` per image: "
                      + ", ".join(f"{m} {n:,}" for m, n in side["bare"].items())
                      + "; each pipeline beyond the bare calls of the models its images ran (our Python), batch 1: "
                      + ", ".join(f"{m} {n:,}" for m, n in side["beyond_bare"].items()) + "."]
    return lines + [""]


def run_simulate(build: Path, data_dir: str | None) -> tuple:
    command = CLI + ["simulate", str(build), "--target", "rpi4", "--json"] + (["--data-dir", data_dir] if data_dir else [])
    out = subprocess.run(command, capture_output=True, text=True)
    if out.returncode != 0:
        print(out.stderr, file=sys.stderr)
        return None, command
    return json.loads(out.stdout), command


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.machine()}, {cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.platform()}"


def table(bench: dict) -> list:
    lines = ["| configuration | batch | pipeline | µs/image (median) | p95 | images/s | accuracy | M MACs | × vs LeNet | × vs BranchyNet | × floor |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for run in bench["runs"]:
        for name, r in run["pipelines"].items():
            lines.append(f"| {run['precision']} | {run['batch_size']} | {name} | {r['latency_ms_median'] * 1e3:.1f} | {r['latency_ms_p95'] * 1e3:.1f} | "
                         f"{r['images_per_s']:.0f} | {r['accuracy'] * 100:.2f}% | {r['macs'] / 1e6:.3f} | {r['speedup_vs_lenet']:.2f} | "
                         f"{r['speedup_vs_branchynet']:.2f} | {r.get('multiple_of_floor', float('nan')):.1f} |")
    return lines


def breakdown(bench: dict) -> list:
    lines = ["| configuration | batch | empty invoke (µs) | floor: empty model through a pipeline (µs/img) | cbnet model stage (µs/img) | cbnet total (µs/img) |",
             "|---|---|---|---|---|---|"]
    for run in bench["runs"]:
        c = run["pipelines"]["cbnet"]
        stage = sum(c["stage_ms_median"].values())
        lines.append(f"| {run['precision']} | {run['batch_size']} | {run['invoke_overhead_us'] or 0:.1f} | "
                     f"{(run.get('floor_ms_median') or 0) * 1e3:.1f} | {stage * 1e3:.1f} | {c['latency_ms_median'] * 1e3:.1f} |")
    if bench.get("tuning"):
        lines += ["", "Tuning (every model in every configuration, µs per batch-1 invoke; the tuned runs use the chosen ones):", "",
                  "| model | configuration | µs/invoke | same classes as int8/default | chosen |", "|---|---|---|---|---|"]
        for model, rows in bench["tuning"]["table"].items():
            chosen = bench["tuning"]["models"][model]["config"]
            for label, row in rows.items():
                us = f"{row['us']:.1f}" if row["us"] is not None else "-"
                lines.append(f"| {model} | {label} | {us} | {'yes' if row['agrees'] else 'no'} | {'✔' if label == chosen else ''} |")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fmnist-build", type=Path, required=True)
    parser.add_argument("--mnist-build", type=Path, required=True)
    parser.add_argument("--mnist-data-dir", default="tests/data/mnist-8k")
    parser.add_argument("--fmnist-paper-build", type=Path, default=None, help="a build made with --recipe paper")
    parser.add_argument("--mnist-paper-build", type=Path, default=None, help="a build made with --recipe paper")
    parser.add_argument("--arm64", action="store_true", help="also count the Fashion-MNIST build's pipelines on "
                        "arm64 (cortex-a72 and cortex-a76) with `cbnet-tl bench --arm64` (needs root)")
    args = parser.parse_args()
    paper = json.loads((HERE.parent / "toolchain" / "data" / "paper_figures.json").read_text())
    sections = ["# Benchmark results", "", f"Machine: {machine()}", "",
                "Every pipeline is timed the same way: same interpreter (ai-edge-litert), 1 thread, same batch size, "
                "pre-processing, entropy gate and softmax inside the timed region, pipelines interleaved batch by batch. "
                "Medians and ratios come from one run. Times are on this machine, not on a Pi; the machine is shared, "
                "so expect run-to-run differences of tens of percent in the ratios.", "",
                "Builds used (from `cbnet-tl build`, see each build's `build.json`):", "", "```",
                f"cbnet-tl build --dataset fashion-mnist --out {args.fmnist_build}",
                f"cbnet-tl build --dataset mnist --data-dir {args.mnist_data_dir} --out {args.mnist_build}",
                *([f"cbnet-tl build --dataset fashion-mnist --recipe paper --out {args.fmnist_paper_build}"] if args.fmnist_paper_build else []),
                *([f"cbnet-tl build --dataset mnist --recipe paper --data-dir {args.mnist_data_dir} --out {args.mnist_paper_build}"] if args.mnist_paper_build else []),
                f"python benchmarks/run_benchmarks.py --fmnist-build {args.fmnist_build} --mnist-build {args.mnist_build}"
                + (f" --fmnist-paper-build {args.fmnist_paper_build}" if args.fmnist_paper_build else "")
                + (f" --mnist-paper-build {args.mnist_paper_build}" if args.mnist_paper_build else "")
                + f" --mnist-data-dir {args.mnist_data_dir}" + (" --arm64" if args.arm64 else ""),
                "```", ""]
    claims = {}
    builds = [("Fashion-MNIST (full, 10k test), fast recipe", args.fmnist_build, None, "fashion-mnist"),
              ("MNIST subset (1.6k test), fast recipe", args.mnist_build, args.mnist_data_dir, "mnist")]
    if args.fmnist_paper_build:
        builds.append(("Fashion-MNIST (full, 10k test), paper recipe", args.fmnist_paper_build, None, "fashion-mnist-paper"))
    if args.mnist_paper_build:
        builds.append(("MNIST subset (1.6k test), paper recipe", args.mnist_paper_build, args.mnist_data_dir, "mnist-paper"))
    for label, build, data_dir, key in builds:
        bench, command = run_bench(build, data_dir)
        sections += [f"## {label}", "", "```", " ".join(["cbnet-tl"] + command[3:]), "```", ""] + table(bench) + [""]
        sections += ["Where cbnet's time goes:", ""] + breakdown(bench) + [""]
        if bench.get("footprint"):
            f = bench["footprint"]
            sections += [f"Device-side footprint: `import cbnet_tl.runtime` {f['import_s'] * 1e3:.0f} ms, peak RSS of a "
                         f"process that loads the bundle and classifies {f['peak_rss_mb']:.1f} MB, bundle on disk "
                         f"{f['bundle_bytes'] / 1e6:.2f} MB (models {f['model_bytes'] / 1e6:.2f} MB).", ""]
        acc = paper["accuracy_percent"][key.replace("-paper", "")]
        lat = paper["latency_ms_per_image_rpi4"]
        sections += ["Paper (labelled, not measured here):", "",
                     "| pipeline | paper accuracy | paper ms/image (Pi 4) | ours int8 accuracy | ours int8 batch-1 ms/image |", "|---|---|---|---|---|"]
        primary = bench["runs"][0]["pipelines"]
        for name in ("lenet", "branchynet", "cbnet"):
            sections.append(f"| {name} | {acc[name]}% | {lat[name]} | {primary[name]['accuracy'] * 100:.2f}% | {primary[name]['latency_ms_median']:.4f} |")
        sections.append("")
        simulated, sim_command = run_simulate(build, data_dir)
        if simulated:
            sections += [f"DVFS simulation ({simulated['target']} power model, energy {simulated['energy_source']}; "
                         "this machine's stage times count as times at the top frequency, scaled by f_max/f; deadline "
                         f"{next(iter(simulated['pipelines'].values()))['deadline_rule']}; periodic arrivals come "
                         "once per deadline):", "",
                         "```", " ".join(["cbnet-tl"] + sim_command[3:]), "```", "",
                         "| pipeline | arrivals | deadline ms | policy | mJ/inference | vs performance | vs oracle | misses |",
                         "|---|---|---|---|---|---|---|---|"]
            for name, entry in simulated["pipelines"].items():
                for arrivals, run in entry["runs"].items():
                    for policy, r in run["policies"].items():
                        sections.append(f"| {name} | {arrivals} | {entry['deadline_ms']:.3f} | {policy} | {r['energy_j'] * 1e3:.4f} | "
                                        f"{r.get('energy_vs_performance', 0):+.2%} | {r.get('energy_vs_oracle', 0):+.2%} | {r['miss_rate']:.2%} |")
            sections.append("")
        if args.arm64 and key == "fashion-mnist":
            counted, commands = {}, []
            for cpu in ("cortex-a72", "cortex-a76"):
                counted[cpu], command = run_arm64(build, data_dir, cpu)
                commands.append(" ".join(["cbnet-tl"] + command[3:]))
            sections += ["### On the board's instruction set", ""] + arm64_section(bench, counted, commands)
        claims[key] = bench
    fm = claims["fashion-mnist"]["runs"][0]["pipelines"]

    def cbnet_ratio(key: str, batch: int) -> str:
        runs = [r for r in claims[key]["runs"] if r["batch_size"] == batch and r["precision"] == claims[key]["runs"][0]["precision"]]
        return f"{runs[0]['pipelines']['cbnet']['speedup_vs_lenet']:.2f}×" if runs else "n/a"

    paper_key = "fashion-mnist-paper" if "fashion-mnist-paper" in claims else None
    paper_line = (f"The paper's recipe (its AE with the B-LeNet branch as the classifier), timed the same way, runs at "
                  f"{cbnet_ratio(paper_key, 1)} LeNet at batch 1 and {cbnet_ratio(paper_key, 32)} at batch 32 "
                  f"(Fashion-MNIST, tuned): **not reproduced**. " if paper_key else "")
    sections += ["## The paper's claims", "",
                 f"- **CBNet up to 4.8× faster** (CBNet abstract): {paper_line}The paper's gap came from timing the parts "
                 "with different frameworks and batch sizes. Our `fast` recipe (a dense AE and classifier fused into one "
                 f"uint8-in graph) runs at {cbnet_ratio('fashion-mnist', 1)} LeNet at batch 1 and "
                 f"{cbnet_ratio('fashion-mnist', 32)} at batch 32 at {fm['cbnet']['accuracy'] * 100:.2f}% (Fashion-MNIST, tuned); "
                 f"by MACs it is {(1 - fm['cbnet']['macs'] / fm['lenet']['macs']) * 100:.0f}% cheaper than LeNet "
                 f"({fm['cbnet']['macs'] / 1e6:.2f} M against {fm['lenet']['macs'] / 1e6:.2f} M). At batch 1 the fixed cost of "
                 "one call through the pipeline (the floor column) is about half of cbnet's time, and this CPU runs "
                 "LeNet's int8 convolutions fast (XNNPACK, AVX-512 VNNI), so the batch-1 ratio stays far below the batch-32 one.",
                 "- **CBNet −79% energy** (CBNet abstract): not reproducible here; it compares KMNIST runs on a K80 GPU modelled at a constant 79 W. "
                 "Our energy is modelled for a Pi 4 from the measured time (see the DVFS tables), and follows latency.",
                 f"- **Accuracy** (authors' notebook, Fashion-MNIST: CBNet 89.59%, LeNet 84.9%, BranchyNet 87.8%): ours int8 "
                 f"cbnet {fm['cbnet']['accuracy'] * 100:.2f}%, lenet {fm['lenet']['accuracy'] * 100:.2f}%, branchynet {fm['branchynet']['accuracy'] * 100:.2f}%.",
                 "- **EENet −63.8% / −21.5% energy** (EENet abstract): not checkable (no public code or data); our DVFS tables report our own saving against `performance`.",
                 ""]
    (HERE / "RESULTS.md").write_text("\n".join(sections))
    print(HERE / "RESULTS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
