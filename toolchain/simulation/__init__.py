"""DVFS offline: the per-inference and per-batch simulators and their oracle, workloads, stage costs, time scales and board traces, and their reports."""
