"""Workloads served in batches, for ``cbnet-tl simulate --workload``. The parser of ``camera:FPS``, ``burst:K:MS``
and ``arrivals:FILE`` lives in the light runtime (``runtime/dvfs/workloads.py``, the device's ``run.py watch``
takes a workload's deadline) and is imported from there. ``arrivals:FILE`` without a deadline defaults to twice
the slowest batch at the top frequency, and never less than two frequency switches (``workload_sim``).

A service takes images in batches of at most ``batch_size``: when the CPU is free it takes every image that
has arrived, up to the batch size. Which images go together is fixed once, by serving the workload at the
top frequency, so every policy (and the oracle) serves the same batches.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from cbnet_tl.runtime.dvfs.workloads import WORKLOAD_FORMS, Workload, parse_workload, read_arrivals
from cbnet_tl.runtime.errors import ConfigError

__all__ = ["WORKLOAD_FORMS", "Workload", "form_batches", "parse_workload", "read_arrivals"]


def form_batches(arrivals_s: np.ndarray, batch_size: int, seconds_at_top: Callable) -> list:
    """[(first, stop)] image ranges: each batch is every image arrived when the CPU (at the top frequency)
    is free, up to ``batch_size``. ``seconds_at_top(first, stop)``: how long that batch takes."""
    if batch_size < 1:
        raise ConfigError(f"Expected a batch size >= 1. Received: {batch_size}")
    batches, now, first = [], 0.0, 0
    while first < len(arrivals_s):
        now = max(now, float(arrivals_s[first]))
        arrived = int(np.searchsorted(arrivals_s, now, side="right"))
        stop = min(first + batch_size, max(arrived, first + 1))
        batches.append((first, stop))
        now += seconds_at_top(first, stop)
        first = stop
    return batches
