"""``run.py trace``: time every stage of a bundle's pipelines on this device, at batch 1 and the service's batch
size, at each CPU frequency it may set, and write a stage trace (``runtime/dvfs/trace_file.py``) that
``cbnet-tl simulate --trace FILE`` replays as recorded.

Every image goes through every stage while timing (no early exit, no confidence gate), so each stage is timed on
the whole batch; the simulator interpolates between the sizes recorded. ``host`` is the time of a call outside
its model stages. When cpufreq cannot be written here (no permission, no cpufreq), every time is taken at the
current frequency and the trace says so; on a fake sysfs tree (``--sysfs-root`` other than ``/``) the
frequencies are set in the tree but the CPU does not change speed, and the trace says that too.
"""

from __future__ import annotations

import contextlib
import platform
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from cbnet_tl.runtime.api import open_pipeline, sample_images
from cbnet_tl.runtime.bundle import open_manifest
from cbnet_tl.runtime.dvfs.cpufreq import CpufreqController
from cbnet_tl.runtime.dvfs.trace_file import HOST_STAGE, make_trace, write_trace
from cbnet_tl.runtime.errors import ConfigError, DvfsError
from cbnet_tl.runtime.pipelines import TIME_STAGES
from cbnet_tl.runtime.specs import PIPELINE_SPECS, deployed_pipelines


def open_every_image_on(bundle_dir: Path, name: str, num_threads: int):
    """The pipeline built with its gate off (no early exit, no confidence gate): every image through every stage."""
    return open_pipeline(bundle_dir, name, num_threads=num_threads, options=PIPELINE_SPECS[name].gates_off)


def time_stages(pipeline, images: np.ndarray, repeats: int) -> dict:
    """{stage: median seconds} of one call on ``images``, every image through every stage; ``host`` included."""
    runs = [pipeline.classify(images, hook=TIME_STAGES) for _ in range(repeats + 1)][1:]  # the first call warms up
    stages = {name: float(np.median([r.stage_seconds.get(name, 0.0) for r in runs])) for name in pipeline.spec.models}
    host = float(np.median([max(0.0, r.seconds - sum(r.stage_seconds.values())) for r in runs]))
    return {HOST_STAGE: host, **stages}


@contextlib.contextmanager
def frequencies_to_visit(sysfs_root: Path, log: Callable[[str], None]):
    """Yield (set_khz or None, kHz list, speed_changed, note): a held controller when cpufreq can be written,
    else the current frequency only; no cpufreq at all is an error."""
    try:
        controller = CpufreqController(Path(sysfs_root))
    except DvfsError as error:
        raise DvfsError(f"A trace needs cpufreq to read the frequency at least: {error} (on a test machine, "
                        "pass --sysfs-root with a fake tree)") from None
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(controller)  # given back when the block ends, however it ends
        except DvfsError as error:
            current = controller.current_khz()
            yield None, (current,), False, (f"cpufreq is read-only here ({error}); every time was taken at the "
                                            f"current frequency, {current // 1000} MHz")
            return
        fake = Path(sysfs_root).resolve() != Path("/")
        log(f"trace: {len(controller.frequencies_khz)} frequencies, "
            f"{', '.join(str(k // 1000) for k in controller.frequencies_khz)} MHz")
        yield controller.set_khz, controller.frequencies_khz, not fake, (
            "a fake cpufreq tree (--sysfs-root): frequencies were set in it, but the CPU did not change speed"
            if fake else "each frequency set through cpufreq before its stages were timed")


def record_trace(bundle_dir: Path, out: Path, *, pipelines: Optional[Sequence[str]] = None, batch_size: int = 32,
                 repeats: int = 5, sysfs_root: Path = Path("/"), num_threads: int = 1, target: Optional[str] = None,
                 log: Callable[[str], None] = print) -> dict:
    """Time, write ``out`` (atomically) and return the trace."""
    if batch_size < 1 or repeats < 1:
        raise ConfigError(f"Expected --batch-size >= 1 and --repeats >= 1. Received: {batch_size}, {repeats}")
    directory, manifest = open_manifest(bundle_dir)
    names = list(pipelines) if pipelines else list(deployed_pipelines(manifest))
    opened = {name: open_every_image_on(directory, name, num_threads) for name in names}
    images = sample_images(directory, manifest, "sample images to time with")
    images = images[np.arange(batch_size) % len(images)]  # repeated up to the batch size
    sizes = sorted({1, batch_size})
    table = {name: {} for name in names}
    with frequencies_to_visit(sysfs_root, log) as (set_khz, frequencies, speed_changed, note):
        for khz in frequencies:
            if set_khz is not None:
                set_khz(khz)  # the switch is made when the write returns
            for name, pipeline in opened.items():
                for size in sizes:
                    for stage, seconds in time_stages(pipeline, images[:size], repeats).items():
                        table[name].setdefault(stage, {}).setdefault(size, {})[khz] = seconds
    trace = make_trace(f"run.py trace on {platform.node() or 'this device'} ({platform.machine()})", frequencies,
                       table, speed_changed=speed_changed, target=target,
                       ran_at_khz=frequencies[0] if len(frequencies) == 1 else None,
                       notes=[note, f"batch sizes {sizes}, median of {repeats} calls, {num_threads} thread(s)"],
                       recorded_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    write_trace(Path(out), trace)
    log(f"trace: {len(names)} pipeline(s) x {len(sizes)} batch size(s) x {len(frequencies)} frequencies -> {out} "
        f"({note})")
    return trace
