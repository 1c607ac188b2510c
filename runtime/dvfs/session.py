"""``DvfsSession``: applies a DVFS policy on a device while the pipelines run, and sums up what it cost."""

from __future__ import annotations

import math
import time
from typing import Optional

import numpy as np

from cbnet_tl.runtime.dvfs.base import PRE_STAGE, DvfsContext, Policy
from cbnet_tl.runtime.dvfs.energy import EnergyModel, EnergySource
from cbnet_tl.runtime.errors import DvfsError


class DvfsSession:
    """The pipelines' stage hook on a device: applies a policy through a ``CpufreqController``, times every
    stage and sums up misses, latency, energy and time per frequency.

    ``energy`` is an ``EnergyModel`` (energy ``modelled`` from the time spent at each frequency) or a meter
    from ``meters`` (energy ``measured`` over the session's window). A policy decides from a power model
    even when energy is measured: pass ``model`` then. ``controller=None`` means DVFS off: no policy, and
    the frequency is whatever the governor chooses (modelled energy then assumes the top frequency).
    Use ``with session:`` to start and stop a meter; call ``wait_for_arrival()`` before each inference
    when ``period_s`` is set, so that lateness and idle time are known.

    Batches: call ``begin_batch(pipeline, num_images, waited_s, queue)`` before ``classify`` on a batch whose
    oldest image arrived ``waited_s`` ago; the policy then hears the batch events (``Policy.on_batch`` ...), with
    each stage's number of images when the stage hook passes it (``before_stage(stage, num_images)``; else the
    batch's size), and the deadline counts from that oldest image. Each image counts as one inference, with
    its batch's latency (its oldest image's: an upper bound for the others).
    """

    def __init__(self, policy: Optional[Policy], controller, energy, deadline_s: float,
                 period_s: Optional[float] = None, *, model: Optional[EnergyModel] = None,
                 clock=time.perf_counter, sleep=time.sleep):
        if (policy is None) != (controller is None):
            raise DvfsError("A DVFS policy needs a CpufreqController, and a controller needs a policy. Received "
                            f"policy={getattr(policy, 'name', None)!r}, controller={controller!r}. Use DVFS off "
                            "(no policy, no controller) to run without frequency control")
        self.meter = None if isinstance(energy, EnergyModel) else energy
        model = energy if isinstance(energy, EnergyModel) else model
        if model is None and (policy is not None or self.meter is None):
            raise DvfsError("Expected an EnergyModel (energy, or model= when energy is a meter). Received none")
        if controller is not None and tuple(controller.frequencies_khz) != model.frequencies_khz:
            raise DvfsError(f"The energy model's frequencies {list(model.frequencies_khz)} kHz differ from the "
                            f"CPU's {list(controller.frequencies_khz)}; build it with model_for(target, "
                            "controller.frequencies_khz)")
        self.policy, self.controller, self.model = policy, controller, model
        self.context = DvfsContext(model, deadline_s, period_s)
        if policy is not None:
            policy.bind(self.context)
        self._clock, self._sleep = clock, sleep
        self._khz: Optional[int] = None
        self._next_arrival: Optional[float] = None
        self._arrival = self._mark = self._last_end = None
        self._segment, self._slept, self._reading = PRE_STAGE, 0.0, None
        self._batch: Optional[tuple] = None  # (num_images, seconds waited, queue) of the batch about to run
        self._segment_images = 0
        self.latencies: list = []
        self.busy_seconds: dict = {}
        self.stage_seconds: dict = {}
        self.switches: list = []
        self.switch_seconds = self.idle_seconds = 0.0

    @property
    def deadline_s(self) -> float:
        return self.context.deadline_s

    @property
    def period_s(self) -> Optional[float]:
        return self.context.period_s

    def __enter__(self) -> "DvfsSession":
        if self.policy is not None:
            self._apply(self.policy.initial_khz())  # before the first arrival: no inference waits for it
        if self.meter is not None:
            self.meter.start()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.meter is not None and self._reading is None:
            self._reading = self.meter.stop()

    def wait_for_arrival(self) -> None:
        """Periodic arrivals: sleep until the next one (t0 + k·period); return at once when late."""
        if self.period_s is None:
            return
        now = self._clock()
        self._next_arrival = now if self._next_arrival is None else self._next_arrival + self.period_s
        if now < self._next_arrival:
            self._sleep(self._next_arrival - now)
            self._slept += self._clock() - now

    def _apply(self, khz: int) -> None:
        if khz == self._khz:
            return
        start = self._clock()
        self.controller.set_khz(khz)
        self.switch_seconds += self._clock() - start
        if self._khz is not None:
            self.switches.append((self._khz, khz))
        self._khz = khz

    def _account(self, now: float) -> float:
        seconds = now - self._mark
        self.busy_seconds[self._khz] = self.busy_seconds.get(self._khz, 0.0) + seconds  # None: uncontrolled
        return seconds

    def begin_batch(self, pipeline: str, num_images: int, waited_s: float = 0.0, queue: tuple = ()) -> None:
        """The next ``classify`` runs a batch of ``num_images``, the oldest of which arrived ``waited_s`` ago;
        ``queue``: the batches waiting behind it, as (num_images, seconds to its deadline)."""
        if num_images < 1 or waited_s < 0:
            raise DvfsError(f"Expected a batch of >= 1 images waited for >= 0 s. Received: {num_images}, {waited_s}")
        self._batch = (int(num_images), float(waited_s), tuple(queue))

    # the stage hook -----------------------------------------------------------------------------
    def begin_inference(self, pipeline: str) -> None:
        now = self._clock()
        idle, self._slept = self._slept, 0.0
        self.idle_seconds += idle
        if self._last_end is not None:  # time between inferences not spent asleep is the caller's work
            self._mark = self._last_end
            self._account(now - idle)
        self._arrival = self._next_arrival if self._next_arrival is not None else now
        if self._batch is not None:
            num_images, waited, queue = self._batch
            self._arrival, self._segment_images = now - waited, num_images
            if self.policy is not None:
                self._apply(self.policy.on_batch(pipeline, num_images, waited, idle, queue))
        elif self.policy is not None:
            self._apply(self.policy.on_begin(pipeline, max(0.0, now - self._arrival), idle))
        self._mark, self._segment = self._clock(), PRE_STAGE

    def before_stage(self, stage: str, num_images: Optional[int] = None) -> None:
        now = self._clock()
        seconds = self._account(now)
        if self.policy is not None and self._batch is not None:
            count = self._batch[0] if num_images is None else num_images
            self.policy.on_batch_stage_done(self._segment, self._segment_images, seconds, self._khz)
            self._apply(self.policy.on_batch_stage(stage, count, now - self._arrival))
            self._segment_images = count
        elif self.policy is not None:
            self.policy.on_stage_done(self._segment, seconds, self._khz)
            self._apply(self.policy.on_stage(stage, now - self._arrival))
        self._mark, self._segment = self._clock(), stage

    def after_stage(self, stage: str, seconds: float) -> None:
        self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + seconds

    def end_inference(self, path: str) -> None:
        now = self._clock()
        seconds = self._account(now)
        latency = now - self._arrival
        if self._batch is not None:
            num_images, _, queue = self._batch
            self.latencies.extend([latency] * num_images)
            if self.policy is not None:
                self.policy.on_batch_stage_done(self._segment, self._segment_images, seconds, self._khz)
                self._apply(self.policy.on_batch_end(latency, queue))
            self._batch = None
        else:
            self.latencies.append(latency)
            if self.policy is not None:
                self.policy.on_stage_done(self._segment, seconds, self._khz)
                self._apply(self.policy.on_end(path, latency))
        self._last_end = self._clock()

    # results ------------------------------------------------------------------------------------
    def summary(self) -> dict:
        count = len(self.latencies)
        latencies_ms = np.asarray(self.latencies, dtype=np.float64) * 1e3
        misses = int(np.sum(latencies_ms > self.deadline_s * 1e3))
        result = {
            "dvfs": self.policy.name if self.policy is not None else "off",
            "method": getattr(getattr(self.controller, "method", None), "value", None),
            "num_inferences": count,
            "deadline_ms": self.deadline_s * 1e3 if math.isfinite(self.deadline_s) else None,  # None: no deadline
            "period_ms": None if self.period_s is None else self.period_s * 1e3,
            "deadline_misses": misses,
            "miss_rate": misses / count if count else 0.0,
            "latency_ms_median": float(np.median(latencies_ms)) if count else None,
            "latency_ms_p95": float(np.percentile(latencies_ms, 95)) if count else None,
            "time_at_frequency": {("uncontrolled" if khz is None else str(khz // 1000)): round(s, 6)
                                  for khz, s in self.busy_seconds.items()},
            "switches": len(self.switches),
            "switch_ms_total": self.switch_seconds * 1e3,
        }
        if self.meter is not None:
            if self._reading is None:
                self._reading = self.meter.stop()
            result.update(energy_j=self._reading.joules / count if count else None,
                          energy_source=EnergySource.MEASURED.value, energy_meter=self._reading.meter)
        else:
            busy = {(self.model.top_khz if khz is None else khz): s for khz, s in self.busy_seconds.items()}
            total = self.model.energy_j(busy, self.idle_seconds, self.switches)
            result.update(energy_j=total / count if count else None, energy_source=EnergySource.MODELLED.value,
                          energy_model=self.model.table.target)
            if self.controller is None:
                result["energy_note"] = "DVFS off: the frequency was not controlled; modelled at the top frequency"
        return result
