"""The DVFS policy protocol: a ``Policy`` is a pure decision object bound to a ``DvfsContext``.

A driver (``session.DvfsSession`` on a device, ``cbnet_tl.toolchain.simulation.simulate`` offline) tells a bound policy
what happens and sets whatever frequency (kHz) the policy returns. The policy never reads a clock or a
file; every time it needs is passed in, in seconds:

    initial_khz() -> kHz                             set when the session starts, before the first arrival
    on_begin(pipeline, lateness_s, idle_s) -> kHz    an inference arrived lateness_s ago; the CPU was idle idle_s before it
    on_stage(stage, elapsed_s) -> kHz                 before a stage; elapsed_s since the arrival
    on_stage_done(stage, seconds, khz)                a stage (with the overhead that follows it) took seconds at khz
    on_end(path, latency_s) -> kHz                    the answer is out; the returned kHz holds until the next arrival

A driver that runs images in batches (``simulate --batch-size``, a service draining an inbox) uses the batch
events instead. Each defaults to its per-inference event above, so a policy that knows nothing of batches
(the static ones) needs no change:

    on_batch(pipeline, num_images, lateness_s, idle_s, queue) -> kHz
        a batch of num_images starts; its oldest image arrived lateness_s ago (the batch's deadline counts from
        it); ``queue`` lists the batches waiting behind it, oldest first, as (num_images, seconds_to_deadline)
    on_batch_stage(stage, num_images, elapsed_s) -> kHz   before a stage that num_images of the batch run
    on_batch_stage_done(stage, num_images, seconds, khz)  that stage took seconds at khz
    on_batch_end(latency_s, queue) -> kHz                 the batch's answers are out (latency of its oldest image)
    on_batch_confidence(stage, confidence)                a batch of one image did not leave at ``stage``'s exit,
                                                          whose confidence (top softmax probability) it had there
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Optional

from cbnet_tl.runtime.dvfs.energy import EnergyModel
from cbnet_tl.runtime.errors import DvfsError

BATCH_PATH = "batch"  # the path a per-inference policy hears of at the end of a batch (its images' paths differ)
PRE_STAGE = "_pre"  # the session's segment between begin_inference and the first stage (pre-processing)


class PolicyKind(str, Enum):
    PERFORMANCE = "performance"
    POWERSAVE = "powersave"
    FIXED = "fixed"
    EENET = "eenet"


POLICY_CHOICES = ("off", "performance", "powersave", "fixed:<MHz>", "eenet")


@dataclass(frozen=True)
class DvfsContext:
    model: Optional[EnergyModel]  # the device's OPP list, P(f) and the switch cost; None only without a policy
                                  # when energy is measured by a meter
    deadline_s: float
    period_s: Optional[float] = None  # None: back to back

    def __post_init__(self):
        if not self.deadline_s > 0:
            raise DvfsError(f"Expected a deadline > 0 s. Received: {self.deadline_s}")
        if self.period_s is not None and not self.period_s > 0:
            raise DvfsError(f"Expected a period > 0 s, or none for back-to-back arrivals. Received: {self.period_s}")


class Policy:
    name = "policy"
    context: DvfsContext

    def bind(self, context: DvfsContext) -> None:
        self.context = context

    def initial_khz(self) -> int:
        """The frequency to set when the session starts, before the first arrival (default: the top)."""
        return self.context.model.top_khz

    def on_begin(self, pipeline: str, lateness_s: float, idle_s: float) -> int:
        raise NotImplementedError

    def on_stage(self, stage: str, elapsed_s: float) -> int:
        raise NotImplementedError

    def on_stage_done(self, stage: str, seconds: float, khz: int) -> None:
        pass

    def on_end(self, path: str, latency_s: float) -> int:
        raise NotImplementedError

    # batches: each event defaults to its per-inference one ------------------------------------------
    def on_batch(self, pipeline: str, num_images: int, lateness_s: float, idle_s: float, queue: tuple) -> int:
        return self.on_begin(pipeline, lateness_s, idle_s)

    def on_batch_stage(self, stage: str, num_images: int, elapsed_s: float) -> int:
        return self.on_stage(stage, elapsed_s)

    def on_batch_stage_done(self, stage: str, num_images: int, seconds: float, khz: int) -> None:
        self.on_stage_done(stage, seconds, khz)

    def on_batch_end(self, latency_s: float, queue: tuple) -> int:
        return self.on_end(BATCH_PATH, latency_s)

    def on_batch_confidence(self, stage: str, confidence: float) -> None:
        """What a multi-exit pipeline's exit said of the one image going on (default: not used)."""

    def learn_exits(self, pipeline: str, table: dict) -> None:
        """A multi-exit pipeline's exit table (its manifest's ``exit_table``), given once before its first batch
        (default: not used)."""
