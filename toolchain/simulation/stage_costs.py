"""Seconds of each stage of a pipeline for a number of images at a frequency, from host times or a trace.

Host times (measured here, per stage and batch size, multiplied by a stated factor to stand for the target)
count as times at the target's top frequency and scale as f_max / f. A trace (``runtime.dvfs.trace_file``)
gives times at each frequency as recorded; a frequency it lacks is scaled from the nearest one it has
(f_near / f); a batch size it lacks is interpolated between the nearest sizes it has (``per_count``).
The table of a host-timed simulation written as a trace replays to the same times, bit for bit.
"""

from __future__ import annotations

from typing import Optional

from cbnet_tl.runtime.dvfs.exit_plan import per_count
from cbnet_tl.toolchain.simulation.trace_read import stage_seconds


class StageCosts:
    def __init__(self, stages: tuple, table: dict, source: str, ran_at_khz: Optional[int] = None):
        """``table``: {stage: {num_images: {kHz: seconds}}}; ``ran_at_khz``: every time was taken at this kHz."""
        self.stages, self.table, self.source, self.ran_at_khz = tuple(stages), table, source, ran_at_khz

    @classmethod
    def from_top(cls, top_seconds: dict, frequencies_khz, source: str) -> "StageCosts":
        """``top_seconds``: {stage: {num_images: seconds at the top frequency}} -> every frequency, as f_max / f."""
        top = max(frequencies_khz)
        table = {stage: {n: {f: s * top / f for f in frequencies_khz} for n, s in sizes.items()}
                 for stage, sizes in top_seconds.items()}
        return cls(tuple(top_seconds), table, source)

    @classmethod
    def from_trace(cls, trace: dict, pipeline: str, source: str) -> "StageCosts":
        stages, table, ran_at = stage_seconds(trace, pipeline)
        return cls(stages, table, source, ran_at)

    def seconds(self, stage: str, num_images: int, khz: int) -> float:
        sizes = self.table.get(stage)
        if not sizes or num_images <= 0:
            return 0.0
        return per_count({n: self._at(at, khz) for n, at in sizes.items()}, num_images)

    def _at(self, at: dict, khz: int) -> float:
        if self.ran_at_khz is not None:  # the CPU never changed speed: every time is a time at ran_at
            seconds = at.get(self.ran_at_khz, next(iter(at.values())))
            return seconds * self.ran_at_khz / khz
        if khz in at:
            return at[khz]
        near = min(at, key=lambda f: (abs(f - khz), -f))
        return at[near] * near / khz

    def at_top(self, top_khz: int) -> dict:
        """{(stage, num_images): seconds at ``top_khz``} for every recorded size: eenet's profile."""
        return {(stage, n): self.seconds(stage, n, top_khz) for stage, sizes in self.table.items() for n in sizes}

    def as_trace_stages(self, frequencies_khz) -> dict:
        """{stage: {num_images: {kHz: seconds}}} at ``frequencies_khz``, for ``trace_file.make_trace``."""
        return {stage: {n: {f: self.seconds(stage, n, f) for f in frequencies_khz} for n in sizes}
                for stage, sizes in self.table.items()}
