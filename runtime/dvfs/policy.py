"""The DVFS policy protocol, the static policies and the table of names a user can give.

A ``Policy`` is a pure decision object bound to a ``DvfsContext``. One driver, ``session.DvfsSession``, tells it what
happens, on the board (real clock and cpufreq) and in ``cbnet-tl simulate`` (simulated ones), and sets whatever
frequency (kHz) it returns. The policy never reads a clock or a file; every time is passed in, in seconds. Work comes
in batches; a single image is a batch of one.

    initial_khz() -> kHz                                before the first arrival
    on_batch(pipeline, num_images, lateness_s, idle_s, queue) -> kHz
        a batch starts; its oldest image arrived lateness_s ago (the batch's deadline counts from it); the CPU was idle
        idle_s before it; ``queue``: the batches waiting behind it, oldest first, as (num_images, seconds to deadline)
    on_stage(stage, num_images, elapsed_s) -> kHz       before a stage that num_images of the batch run (0: every image
                                                        left at an earlier exit)
    on_stage_done(stage, num_images, seconds, khz)      that stage (and the work after it) took seconds at khz
    on_confidence(stage, confidence)                    a batch of one image did not leave at ``stage``'s exit, where
                                                        its top softmax probability was ``confidence``
    on_end(latency_s) -> kHz                            the batch's answers are out (its oldest image's latency); the
                                                        returned kHz holds until the next batch
    learn(pipeline, stage, num_images, seconds, khz)    a stage's cost from a profile, before the first batch
    learn_exits(pipeline, table)                        a multi-exit pipeline's manifest ``exit_table``, before batches
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Optional

from cbnet_tl.runtime.dvfs.energy import EnergyModel
from cbnet_tl.runtime.errors import DvfsError


class PolicyKind(str, Enum):
    PERFORMANCE = "performance"
    POWERSAVE = "powersave"
    FIXED = "fixed"
    EENET = "eenet"


POLICY_CHOICES = ("off", "performance", "powersave", "fixed:<MHz>", "eenet")


@dataclass(frozen=True)
class DvfsContext:
    model: Optional[EnergyModel]  # the OPP list, P(f) and the switch cost; None only with no policy and a meter
    deadline_s: float
    back_to_back: bool = False  # each batch arrives when the previous one has answered (no idle time to fill)

    def __post_init__(self):
        if not self.deadline_s > 0:
            raise DvfsError(f"Expected a deadline > 0 s. Received: {self.deadline_s}")


class Policy:
    name = "policy"
    context: DvfsContext

    def bind(self, context: DvfsContext) -> None:
        self.context = context

    def initial_khz(self) -> int:
        return self.context.model.top_khz

    def on_batch(self, pipeline: str, num_images: int, lateness_s: float, idle_s: float, queue: tuple) -> int:
        raise NotImplementedError

    def on_stage(self, stage: str, num_images: int, elapsed_s: float) -> int:
        raise NotImplementedError

    def on_stage_done(self, stage: str, num_images: int, seconds: float, khz: int) -> None:
        pass

    def on_confidence(self, stage: str, confidence: float) -> None:
        pass

    def on_end(self, latency_s: float) -> int:
        raise NotImplementedError

    def learn(self, pipeline: str, stage: str, num_images: int, seconds: float, khz: int) -> None:
        pass

    def learn_exits(self, pipeline: str, table: dict) -> None:
        pass


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

    def initial_khz(self, *event):
        """Every event's answer: the one frequency."""
        return self.khz

    on_batch = on_stage = on_end = initial_khz
