"""What ``run.py serve`` counts of its own requests (``ServerStats``), and ``GET /metrics``: the server's status, the
frame loop's with it, in the Prometheus text exposition format 0.0.4, each family with its ``# HELP`` and ``# TYPE``.

A value the status does not have (no source, DVFS off: no frequency, nothing classified yet) leaves its family out
rather than reporting a made-up zero.
"""

from __future__ import annotations

import math
import threading
import time
from collections import Counter
from typing import Iterable, Optional

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SOURCE_STATES = ("opening", "open", "lost", "reopening", "ended", "stopped")

# (metric, type, the status key it reads, help) of the frame loop's numbers
LOOP_NUMBERS = (
    ("cbnet_frames_read_total", "counter", "frames_read", "Frames the source delivered."),
    ("cbnet_frames_classified_total", "counter", "frames_classified", "Frames the pipeline classified."),
    ("cbnet_frames_dropped_total", "counter", "frames_dropped",
     "Frames replaced by a newer one before the pipeline took them."),
    ("cbnet_deadline_misses_total", "counter", "deadline_misses", "Classified frames answered after their deadline."),
    ("cbnet_frames_failed_total", "counter", "frames_failed",
     "Frames the source delivered that could not be prepared for the model (skipped)."),
    ("cbnet_log_write_errors_total", "counter", "log_errors", "Records the --log file could not take."),
    ("cbnet_keep_write_errors_total", "counter", "keep_errors", "Frames --keep-uncertain could not keep."),
    ("cbnet_frames_per_second", "gauge", "fps", "Frames classified per second, recently."),
    ("cbnet_source_frames_per_second", "gauge", "source_fps", "The source's stated frame rate (its own, or --fps)."),
    ("cbnet_cpu_frequency_khz", "gauge", "khz", "The CPU frequency the DVFS policy set last, in kHz."),
    ("cbnet_uptime_seconds", "gauge", "uptime_s", "Seconds since the frame loop started."),
)


class ServerStats:
    """Counts of the server's answers, by route and status code, of the requests in flight and of posted images;
    safe to update from the request threads."""

    def __init__(self, max_in_flight: int) -> None:
        self.max_in_flight = max_in_flight
        self._lock = threading.Lock()
        self._answers: Counter = Counter()  # (route, code) -> count
        self._in_flight = self._classified = self._refused = 0
        self._started = time.monotonic()

    def answered(self, route: str, code: int) -> None:
        with self._lock:
            self._answers[(route, int(code))] += 1

    def entered(self, change: int) -> None:
        with self._lock:
            self._in_flight += change

    def posted(self, classified: bool) -> None:
        with self._lock:
            if classified:
                self._classified += 1
            else:
                self._refused += 1

    def snapshot(self, url: str, token: bool) -> dict:
        with self._lock:
            answers = dict(self._answers)
            in_flight, classified, refused = self._in_flight, self._classified, self._refused
        by_code: Counter = Counter()
        by_route: dict = {}
        for (route, code), count in sorted(answers.items()):
            by_code[str(code)] += count
            by_route.setdefault(route, {})[str(code)] = count
        return {"url": url, "auth": "token" if token else "none",
                "uptime_s": round(time.monotonic() - self._started, 3), "requests_total": sum(by_code.values()),
                "requests": dict(sorted(by_code.items())), "requests_by_route": by_route, "in_flight": in_flight,
                "max_in_flight": self.max_in_flight, "posted": {"classified": classified, "refused": refused}}


def _number(value) -> str:
    value = float(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if value.is_integer() and abs(value) < 2**53 else repr(value)


def _label(value) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict) -> str:
    return "{" + ",".join(f'{key}="{_label(value)}"' for key, value in labels.items()) + "}" if labels else ""


def _family(name: str, kind: str, help_text: str, samples: Iterable[tuple]) -> list:
    """The lines of one family: (labels dict, value) samples; none with a value: no lines at all."""
    lines = [f"{name}{_labels(labels)} {_number(value)}" for labels, value in samples if value is not None]
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *lines] if lines else []


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def render_metrics(status: dict) -> str:
    """``/api/status``'s object (``LiveServer.status``) as Prometheus text."""
    server = status["server"]
    lines = _family("cbnet_info", "gauge", "The pipeline served, the bundle's version and the DVFS policy.",
                    [({"pipeline": status["pipeline"], "bundle_version": status.get("bundle_version") or "",
                       "dvfs": status.get("dvfs") or "off"}, 1)])
    lines += _family("cbnet_requests_total", "counter", "HTTP requests answered, by route and status code.",
                     [({"route": route, "code": code}, count)
                      for route, codes in server["requests_by_route"].items() for code, count in codes.items()])
    lines += _family("cbnet_requests_in_flight", "gauge", "Posted images being classified now (the --max-in-flight slots taken).", [({}, server["in_flight"])])
    lines += _family("cbnet_requests_in_flight_max", "gauge", "Requests answered at once at most (--max-in-flight); "
                     "beyond it, 503.", [({}, server["max_in_flight"])])
    lines += _family("cbnet_posted_images_total", "counter", "Images posted to /api/classify, by result.",
                     [({"result": result}, count) for result, count in server["posted"].items()])
    lines += _family("cbnet_server_uptime_seconds", "gauge", "Seconds since the server started.",
                     [({}, server["uptime_s"])])
    if status.get("source_state") is not None:
        lines += _loop_lines(status)
    return "\n".join(lines) + "\n"


def _loop_lines(status: dict) -> list:
    lines = []
    for name, kind, key, help_text in LOOP_NUMBERS:
        value = status.get(key)
        lines += _family(name, kind, help_text, [({}, value if _is_number(value) else None)])
    state = status["source_state"]
    lines += _family("cbnet_source_state", "gauge", "The source's state: 1 for the one it is in.",
                     [({"state": name}, int(name == state)) for name in dict.fromkeys((*SOURCE_STATES, state))])
    deadline = status.get("deadline_ms")
    lines += _family("cbnet_deadline_seconds", "gauge", "Each frame's deadline, from its arrival.",
                     [({}, deadline / 1e3 if _is_number(deadline) else None)])
    source = {"source": status.get("energy_source") or "modelled"}
    lines += _family("cbnet_energy_joules_total", "counter", "Energy of the CPU while classifying frames, "
                     "modelled from the time at each frequency or measured by a meter (label source).",
                     [(source, _optional(status.get("energy_j_total")))])
    lines += _family("cbnet_energy_joules_per_frame", "gauge", "Energy per classified frame (label source).",
                     [(source, _optional(status.get("energy_j_per_frame")))])
    shares = status.get("path_shares") or {}
    lines += _family("cbnet_path_share", "gauge", "Share of the classified frames that took each path of the "
                     "pipeline.", [({"path": path}, share) for path, share in shares.items() if _is_number(share)])
    latest = status.get("latest") or {}
    lines += _family("cbnet_latest_confidence", "gauge", "The confidence of the latest classified frame.",
                     [({}, _optional(latest.get("confidence")))])
    return lines


def _optional(value) -> Optional[float]:
    return value if _is_number(value) else None
