"""``DvfsSession``: applies a DVFS policy on a device while the pipelines run, and sums up what it cost."""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from typing import Optional, Sequence

import numpy as np

from cbnet_tl.runtime.dvfs.base import PRE_STAGE, DvfsContext, Policy
from cbnet_tl.runtime.dvfs.energy import EnergyModel, EnergySource
from cbnet_tl.runtime.errors import DvfsError
from cbnet_tl.runtime.exits import EXIT_TABLE

LATENCY_WINDOW = 65_536  # latencies kept for the median and p95: a service's memory stays bounded


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
    oldest image arrived ``waited_s`` ago (or ``classify_batch``, which does both); the policy then hears the
    batch events (``Policy.on_batch`` ...), with each stage's number of images when the stage hook passes it
    (``before_stage(stage, num_images)``; else the batch's size), and the deadline counts from that oldest image.
    Each image counts as one inference, with a latency from its own arrival when ``image_waits`` gives each
    image's wait (else its oldest image's: an upper bound for the others). A caller that waits for work between
    batches (a service polling its inbox) says so with ``idle(seconds)``: that time is idle, not busy.

    Counts, misses, energy and time per frequency are totals (``totals()``, cheap enough after every batch);
    the latency median and p95 in ``summary()`` cover the last ``LATENCY_WINDOW`` images.
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
        self._batch: Optional[tuple] = None  # (num_images, seconds waited, queue, image waits) of the next batch
        self._segment_images, self._answer_later = 0, False
        self._exit_tables: set = set()  # pipelines whose exit table the policy has been given
        self.latencies: deque = deque(maxlen=LATENCY_WINDOW)
        self.num_inferences = self.num_misses = self.num_batches = 0
        self.busy_seconds: dict = {}
        self.stage_seconds: dict = {}
        self.switches: Counter = Counter()  # (from kHz, to kHz) -> how many times
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
            self.idle(self._clock() - now)

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
        self.busy_seconds[self._khz] = self.busy_seconds.get(self._khz, 0.0) + seconds  # None: uncontrolled
        return seconds

    def begin_batch(self, pipeline: str, num_images: int, waited_s: float = 0.0, queue: tuple = (),
                    image_waits: Optional[Sequence[float]] = None) -> None:
        """The next ``classify`` runs a batch of ``num_images``, the oldest of which arrived ``waited_s`` ago;
        ``queue``: the batches waiting behind it, as (num_images, seconds to its deadline); ``image_waits``: how
        long each image of the batch waited (for each one's latency), at most ``waited_s``."""
        if num_images < 1 or waited_s < 0:
            raise DvfsError(f"Expected a batch of >= 1 images waited for >= 0 s. Received: {num_images}, {waited_s}")
        if image_waits is not None and len(image_waits) != num_images:
            raise DvfsError(f"Expected one wait per image of the batch, {num_images}. Received: {len(image_waits)}")
        younger = None if image_waits is None else np.maximum(0.0, waited_s - np.asarray(image_waits, dtype=float))
        self._batch = (int(num_images), float(waited_s), tuple(queue), younger)
        self.num_batches += 1

    def classify_batch(self, pipeline, images, image_waits: Sequence[float], queue_waits: Sequence[tuple] = (),
                       answered_later: bool = False):
        """``pipeline.classify(images)`` as one batch under this session. ``image_waits``: seconds each image has
        waited since it arrived; ``queue_waits``: the batches behind it as (num_images, seconds its oldest image
        has waited). The policy hears every stage; DVFS off, the pipeline runs without a stage hook.
        ``answered_later``: the latency runs on until the caller's ``answered()`` (its results written)."""
        waited = max(image_waits)
        queue = tuple((num, self.deadline_s - seconds) for num, seconds in queue_waits)
        self.begin_batch(pipeline.name, len(image_waits), waited, queue, image_waits)
        self._answer_later = answered_later
        if self.policy is not None:
            if pipeline.name not in self._exit_tables:  # a multi-exit pipeline's table, learned by the build
                self._exit_tables.add(pipeline.name)
                if pipeline.options.get(EXIT_TABLE):
                    self.policy.learn_exits(pipeline.name, pipeline.options[EXIT_TABLE])
            return pipeline.classify(images, hook=self)
        self.begin_inference(pipeline.name)
        result = pipeline.classify(images)
        self.end_inference(result.path)
        return result

    def idle(self, seconds: float) -> None:
        """The caller waited ``seconds`` for work (not inferring): idle time, not busy, in the totals at once (a
        service idle after its last batch reports that time too)."""
        seconds = max(0.0, seconds)
        self._slept += seconds  # until the next inference: told to the policy, and kept out of the busy time
        self.idle_seconds += seconds

    # the stage hook -----------------------------------------------------------------------------
    def begin_inference(self, pipeline: str) -> None:
        now = self._clock()
        idle, self._slept = self._slept, 0.0
        if self._last_end is not None:  # time between inferences not spent asleep is the caller's work
            self._mark = self._last_end
            self._account(now - idle)
        self._arrival = self._next_arrival if self._next_arrival is not None else now
        if self._batch is not None:
            num_images, waited, queue, _ = self._batch
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

    def exit_confidence(self, stage: str, confidence: float) -> None:
        if self.policy is not None and self._batch is not None:
            self.policy.on_batch_confidence(stage, confidence)

    def after_stage(self, stage: str, seconds: float) -> None:
        self.stage_seconds[stage] = self.stage_seconds.get(stage, 0.0) + seconds

    def end_inference(self, path: str) -> None:
        now = self._clock()
        seconds = self._account(now)
        latency = now - self._arrival
        if self._batch is not None:
            if self.policy is not None:
                self.policy.on_batch_stage_done(self._segment, self._segment_images, seconds, self._khz)
            self._last_end = self._clock()
            if not self._answer_later:
                self.answered()
            return
        self._count((latency,))
        if self.policy is not None:
            self.policy.on_stage_done(self._segment, seconds, self._khz)
            self._apply(self.policy.on_end(path, latency))
        self._last_end = self._clock()

    def answered(self) -> None:
        """The batch's answers are out: its latency ends now, and the policy hears the batch's end. ``classify_batch``
        calls it unless ``answered_later``; a service calls it once the batch's results are written."""
        if self._batch is None or self._last_end is None:
            raise DvfsError("answered() needs a batch that ran (classify_batch, or begin_batch and classify)")
        now = self._clock()
        self._mark = self._last_end
        self._account(now)  # writing the answers: busy, at the frequency of the batch's last stage
        num_images, _, queue, younger = self._batch
        latency = now - self._arrival
        self._count([latency] * num_images if younger is None else (latency - younger).tolist())
        if self.policy is not None:
            self._apply(self.policy.on_batch_end(latency, queue))
        self._batch, self._answer_later = None, False
        self._last_end = self._clock()

    def _count(self, latencies) -> None:
        self.latencies.extend(latencies)
        self.num_inferences += len(latencies)
        self.num_misses += sum(1 for latency in latencies if latency > self.deadline_s)

    # results ------------------------------------------------------------------------------------
    def totals(self) -> dict:
        """Inferences, misses, energy (``energy_source``: modelled or measured) and time per frequency so far,
        strict JSON (no deadline: ``deadline_ms`` None). A meter keeps measuring."""
        count = self.num_inferences
        result = {
            "dvfs": self.policy.name if self.policy is not None else "off",
            "method": getattr(getattr(self.controller, "method", None), "value", None),
            "num_inferences": count,
            "num_batches": self.num_batches,  # 0: one inference at a time
            "deadline_ms": self.deadline_s * 1e3 if math.isfinite(self.deadline_s) else None,  # None: no deadline
            "deadline_misses": self.num_misses,
            "miss_rate": self.num_misses / count if count else 0.0,
            "time_at_frequency": {("uncontrolled" if khz is None else str(khz // 1000)): round(s, 6)
                                  for khz, s in sorted(self.busy_seconds.items(), key=lambda item: item[0] or 0)},
            "idle_s": round(self.idle_seconds, 6),
            "switches": sum(self.switches.values()),
            "switch_ms_total": self.switch_seconds * 1e3,
        }
        if self.meter is not None:
            reading = self._reading or self.meter.reading()
            joules = reading.joules
            result.update(energy_source=EnergySource.MEASURED.value, energy_meter=reading.meter)
        else:
            busy = {(self.model.top_khz if khz is None else khz): s for khz, s in self.busy_seconds.items()}
            joules = self.model.energy_j(busy, self.idle_seconds) + sum(
                self.model.switch_j(a, b) * n for (a, b), n in self.switches.items())
            result.update(energy_source=EnergySource.MODELLED.value, energy_model=self.model.table.target)
            if self.controller is None:
                result["energy_note"] = "DVFS off: the frequency was not controlled; modelled at the top frequency"
        result.update(energy_j=joules / count if count else None, energy_j_total=joules)
        return result

    def summary(self) -> dict:
        """``totals()`` (a meter stops) with the period and the latency median and p95 (of the last
        ``LATENCY_WINDOW`` images)."""
        if self.meter is not None and self._reading is None:
            self._reading = self.meter.stop()
        latencies_ms = np.asarray(self.latencies, dtype=np.float64) * 1e3
        result = self.totals()
        result.update(period_ms=None if self.period_s is None else self.period_s * 1e3,
                      latency_ms_median=float(np.median(latencies_ms)) if len(latencies_ms) else None,
                      latency_ms_p95=float(np.percentile(latencies_ms, 95)) if len(latencies_ms) else None)
        return result
