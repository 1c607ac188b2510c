"""Static policies: one frequency for everything (``performance``, ``powersave``, ``fixed:<MHz>``)."""

from __future__ import annotations

from typing import Optional

from cbnet_tl.runtime.dvfs.base import DvfsContext, Policy, PolicyKind
from cbnet_tl.runtime.errors import DvfsError


class StaticPolicy(Policy):
    """One frequency for everything: the top, the bottom, or a fixed one from the device's list."""

    def __init__(self, kind: PolicyKind, mhz: Optional[int] = None):
        self.kind, self.mhz = kind, mhz
        self.name = f"fixed:{mhz}" if kind is PolicyKind.FIXED else kind.value
        self.khz = 0

    def bind(self, context: DvfsContext) -> None:
        super().bind(context)
        offered = context.model.frequencies_khz
        if self.kind is PolicyKind.PERFORMANCE:
            self.khz = offered[-1]
        elif self.kind is PolicyKind.POWERSAVE:
            self.khz = offered[0]
        elif self.mhz * 1000 in offered:
            self.khz = self.mhz * 1000
        else:
            raise DvfsError(f"Expected fixed:<MHz> with a frequency this CPU offers, "
                            f"{[f // 1000 for f in offered]} MHz. Received: fixed:{self.mhz}")

    def initial_khz(self):
        return self.khz

    def on_begin(self, pipeline, lateness_s, idle_s):
        return self.khz

    def on_stage(self, stage, elapsed_s):
        return self.khz

    def on_end(self, path, latency_s):
        return self.khz
