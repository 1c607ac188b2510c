"""``DvfsSession`` applies a DVFS policy while the pipelines run and keeps the energy books, on the board and in
``cbnet-tl simulate`` alike (the one driver of ``policy``'s protocol): the simulator's totals are the board's books.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from typing import Optional, Sequence

import numpy as np

from cbnet_tl.runtime.dvfs.energy import EnergyModel, EnergySource
from cbnet_tl.runtime.dvfs.policy import DvfsContext, Policy
from cbnet_tl.runtime.errors import DvfsError
from cbnet_tl.runtime.specs import EXIT_TABLE

LATENCY_WINDOW = 65_536  # latencies kept for the median and p95: a service's memory stays bounded
LATE = 1 + 1e-9  # a latency over deadline × LATE misses (a plan that finishes on the deadline meets it)


class DvfsSession:
    """The pipelines' stage hook: applies a policy through a controller, times every stage and sums up misses,
    latency, energy and time per frequency. ``energy``: an ``EnergyModel`` (energy ``modelled``) or a meter
    (``measured``; the policy then decides from ``model``). ``controller=None``: DVFS off, the governor chooses.

    ``classify_next`` runs the next batch of a stream: periodic (image k arrives at t0 + k·period), a burst
    (``burst``: every image there when the first batch began, the rest queued behind it; also any stream whose
    arrivals do not wait for answers, such as an inbox) or back to back. ``classify_batch`` runs a batch whose
    arrivals the caller knows; ``idle(seconds)`` says it waited for work. The policy hears every stage in order,
    one no image reached with 0 images; the time before the first stage is booked but is no stage.
    """

    def __init__(self, policy: Optional[Policy], controller, energy, deadline_s: float,
                 period_s: Optional[float] = None, *, model: Optional[EnergyModel] = None, burst: bool = False,
                 clock=time.monotonic, sleep=time.sleep):
        if (policy is None) != (controller is None):
            raise DvfsError("A DVFS policy needs a CpufreqController, and a controller needs a policy. Received "
                            f"policy={getattr(policy, 'name', None)!r}, controller={controller!r}. Use DVFS off "
                            "(no policy, no controller) to run without frequency control")
        if period_s is not None and not period_s > 0:
            raise DvfsError(f"Expected a period > 0 s, or none. Received: {period_s}")
        self.meter = None if isinstance(energy, EnergyModel) else energy
        model = energy if isinstance(energy, EnergyModel) else model
        if model is None and (policy is not None or self.meter is None):
            raise DvfsError("Expected an EnergyModel (energy, or model= when energy is a meter). Received none")
        if controller is not None and tuple(controller.frequencies_khz) != model.frequencies_khz:
            raise DvfsError(f"The energy model's frequencies {list(model.frequencies_khz)} kHz differ from the "
                            f"CPU's {list(controller.frequencies_khz)}; build it with model_for(target, "
                            "controller.frequencies_khz)")
        self.policy, self.controller, self.model = policy, controller, model
        self.period_s, self.burst = period_s, burst and period_s is None
        self.context = DvfsContext(model, deadline_s, back_to_back=period_s is None and not burst)
        if policy is not None:
            policy.bind(self.context)
        self._clock, self._sleep = clock, sleep
        self._khz: Optional[int] = getattr(controller, "khz_at_start", None)  # a simulated CPU says; a governor not
        self._next_arrival = self._began = self._arrival = self._mark = self._last_end = None
        self._slept, self._reading = 0.0, None
        self._batch: Optional[tuple] = None  # (num_images, queue, how much younger each image is) of this batch
        self._stages: tuple = ()  # the pipeline's stages, in order, and how many the policy has heard of
        self._heard, self._segment, self._segment_images = 0, None, 0
        self._exit_tables: set = set()  # pipelines whose exit table the policy has been given
        self.latencies: deque = deque(maxlen=LATENCY_WINDOW)
        self.num_inferences = self.num_misses = self.num_batches = 0
        self.busy_seconds: dict = {}  # kHz (None: uncontrolled) -> seconds
        self.switches: Counter = Counter()  # (from kHz, to kHz) -> how many times
        self.switch_seconds = self.idle_seconds = 0.0

    @property
    def deadline_s(self) -> float:
        return self.context.deadline_s

    @property
    def current_khz(self) -> Optional[int]:
        """The frequency the session set last (None: DVFS off, or nothing set yet)."""
        return self._khz if self.controller is not None else None

    def __enter__(self) -> "DvfsSession":
        if self.policy is not None:
            self._apply(self.policy.initial_khz())  # before the first arrival: no inference waits for it
        if self.meter is not None:
            self.meter.start()
        return self

    def __exit__(self, *exc_info) -> None:
        if self.meter is not None and self._reading is None:
            self._reading = self.meter.stop()

    def wait_for_arrival(self) -> float:
        """Periodic arrivals: sleep until the next one (t0 + k·period); how late it is taken (0 when waited for)."""
        now = self._clock()
        self._next_arrival = now if self._next_arrival is None else self._next_arrival + self.period_s
        if now < self._next_arrival:
            self._sleep(self._next_arrival - now)
            self.idle(self._clock() - now)
        return max(0.0, self._clock() - self._next_arrival)

    def classify_next(self, pipeline, images: np.ndarray, behind: int = 0):
        """The next batch of this session's stream; ``behind``: images of a burst still to come after it."""
        count = len(images)
        if self.period_s is not None:
            if count != 1:
                raise DvfsError(f"Periodic arrivals come one image at a time: expected batches of 1. Received {count}")
            return self.classify_batch(pipeline, images, [self.wait_for_arrival()])
        if not self.burst:
            return self.classify_batch(pipeline, images, [0.0] * count)
        self._began = self._clock() if self._began is None else self._began
        waited = self._clock() - self._began
        queue = [(min(count, behind - first), waited) for first in range(0, behind, count)]
        return self.classify_batch(pipeline, images, [waited] * count, queue)

    def classify_batch(self, pipeline, images, image_waits: Sequence[float], queue_waits: Sequence[tuple] = (),
                       answered_later: bool = False):
        """``pipeline.classify(images)`` as one batch; ``image_waits``: seconds each image has waited; ``queue_waits``:
        the batches behind it as (num_images, seconds its oldest image waited); ``answered_later``: the latency
        runs on until ``answered()``."""
        num_images, waited = len(image_waits), max(image_waits, default=-1.0)
        if num_images < 1 or min(image_waits) < 0:
            raise DvfsError(f"Expected a batch of >= 1 images waited for >= 0 s. Received: {list(image_waits)}")
        younger = np.maximum(0.0, waited - np.asarray(image_waits, dtype=np.float64))
        queue = tuple((num, self.deadline_s - seconds) for num, seconds in queue_waits)
        self._batch, self._stages = (num_images, queue, younger), tuple(pipeline.spec.models)
        self.num_batches += 1
        self._begin(pipeline, waited)
        if self.policy is None:  # nothing to decide between stages: no hook, no overhead
            result = pipeline.classify(images)
        else:
            if pipeline.name not in self._exit_tables:  # a multi-exit pipeline's table, learned by the build
                self._exit_tables.add(pipeline.name)
                if pipeline.options.get(EXIT_TABLE):
                    self.policy.learn_exits(pipeline.name, pipeline.options[EXIT_TABLE])
            result = pipeline.classify(images, hook=self)
        self._finish()
        if not answered_later:
            self.answered()
        return result

    def idle(self, seconds: float) -> None:
        """The caller waited ``seconds`` for work: idle time, in the totals at once."""
        seconds = max(0.0, seconds)
        self._slept += seconds  # until the next batch: told to the policy, and kept out of the busy time
        self.idle_seconds += seconds

    # the stage hook (``Pipeline.classify`` calls it) ----------------------------------------------------
    def begin_inference(self, pipeline: str) -> None:
        pass  # ``classify_batch`` began the batch

    def before_stage(self, stage: str, num_images: Optional[int] = None) -> None:
        now = self._clock()
        seconds = self._account(now)
        count = self._batch[0] if num_images is None else num_images
        if self._segment is not None:
            self.policy.on_stage_done(self._segment, self._segment_images, seconds, self._khz)
        for skipped in self._stages[self._heard:self._stages.index(stage) if stage in self._stages else self._heard]:
            self._skip(skipped, now)
        self._heard = self._stages.index(stage) + 1 if stage in self._stages else self._heard
        self._apply(self.policy.on_stage(stage, count, now - self._arrival))
        self._mark, self._segment, self._segment_images = self._clock(), stage, count

    def exit_confidence(self, stage: str, confidence: float) -> None:
        self.policy.on_confidence(stage, confidence)

    def after_stage(self, stage: str, seconds: float) -> None:
        pass  # the stage's time is booked at the next stage or the end

    def end_inference(self, path: str) -> None:
        pass  # ``classify_batch`` ends the batch

    def answered(self) -> None:
        """The batch's answers are out (``classify_batch`` says so unless ``answered_later``): its latency ends."""
        if self._batch is None or self._last_end is None:
            raise DvfsError("answered() needs a batch that ran (classify_batch)")
        now = self._clock()
        self._mark = self._last_end
        self._account(now)  # writing the answers: busy, at the frequency of the batch's last stage
        latency = now - self._arrival
        latencies = (latency - self._batch[2]).tolist()  # each image's own: the younger ones waited less
        self.latencies.extend(latencies)
        self.num_inferences += len(latencies)
        self.num_misses += sum(1 for image_latency in latencies if image_latency > self.deadline_s * LATE)
        if self.policy is not None:
            self._apply(self.policy.on_end(latency))
        self._batch = None
        self._last_end = self._clock()

    # the books ------------------------------------------------------------------------------------------
    def _begin(self, pipeline, waited: float) -> None:
        now = self._clock()
        idle, self._slept = self._slept, 0.0
        if self._last_end is not None:  # time between batches not spent waiting is the caller's work
            self._mark = self._last_end
            self._account(now - idle)
        self._arrival, self._heard, self._segment = now - waited, 0, None
        num_images, queue, _ = self._batch
        if self.policy is not None:
            self._apply(self.policy.on_batch(pipeline.name, num_images, waited, idle, queue))
        self._mark = self._clock()

    def _finish(self) -> None:
        now = self._clock()
        seconds = self._account(now)
        if self.policy is not None:
            if self._segment is not None:
                self.policy.on_stage_done(self._segment, self._segment_images, seconds, self._khz)
            for skipped in self._stages[self._heard:]:
                self._skip(skipped, now)
        self._last_end = self._clock()

    def _skip(self, stage: str, now: float) -> None:
        """A stage no image of the batch reached: the policy hears it with 0 images, so that it learns the shares."""
        self._apply(self.policy.on_stage(stage, 0, now - self._arrival))
        self.policy.on_stage_done(stage, 0, 0.0, self._khz)

    def _apply(self, khz: int) -> None:
        if khz == self._khz:
            return
        start = self._clock()
        self.controller.set_khz(khz)
        self.switch_seconds += self._clock() - start
        if self._khz is not None:
            self.switches[(self._khz, khz)] += 1
        self._khz = khz

    def _account(self, now: float) -> float:
        seconds = now - self._mark
        self.busy_seconds[self._khz] = self.busy_seconds.get(self._khz, 0.0) + seconds
        return seconds

    def totals(self) -> dict:
        """Inferences, misses, energy (modelled or measured) and time per frequency so far, strict JSON."""
        count = self.num_inferences
        result = {
            "dvfs": self.policy.name if self.policy is not None else "off",
            "method": getattr(getattr(self.controller, "method", None), "value", None),
            "num_inferences": count, "num_batches": self.num_batches,
            "deadline_ms": self.deadline_s * 1e3 if math.isfinite(self.deadline_s) else None,  # None: no deadline
            "deadline_misses": self.num_misses, "miss_rate": self.num_misses / count if count else 0.0,
            "time_at_frequency": {("uncontrolled" if khz is None else str(khz // 1000)): round(s, 6)
                                  for khz, s in sorted(self.busy_seconds.items(), key=lambda item: item[0] or 0)},
            "idle_s": round(self.idle_seconds, 6), "switches": sum(self.switches.values()),
            "switch_ms_total": self.switch_seconds * 1e3,
        }
        if self.meter is not None:
            reading = self._reading or self.meter.reading()
            joules = reading.joules
            result.update(energy_source=EnergySource.MEASURED.value, energy_meter=reading.meter)
        else:
            joules = self.modelled_joules()
            result.update(energy_source=EnergySource.MODELLED.value, energy_model=self.model.table.target)
            if self.controller is None:
                result["energy_note"] = "DVFS off: the frequency was not controlled; modelled at the top frequency"
        result.update(energy_j=joules / count if count else None, energy_j_total=joules)
        return result

    def modelled_joules(self) -> float:
        """The power model over the books: busy time at P(f), idle time at P_idle, each switch its energy."""
        busy = {(self.model.top_khz if khz is None else khz): s for khz, s in self.busy_seconds.items()}
        return self.model.energy_j(busy, self.idle_seconds, list(self.switches.elements()))

    def summary(self) -> dict:
        """``totals()`` (a meter stops), the period, and the latency median and p95 of the last images."""
        if self.meter is not None and self._reading is None:
            self._reading = self.meter.stop()
        latencies_ms = np.asarray(self.latencies, dtype=np.float64) * 1e3
        result = self.totals()
        result.update(period_ms=None if self.period_s is None else self.period_s * 1e3,
                      latency_ms_median=float(np.median(latencies_ms)) if len(latencies_ms) else None,
                      latency_ms_p95=float(np.percentile(latencies_ms, 95)) if len(latencies_ms) else None)
        return result
