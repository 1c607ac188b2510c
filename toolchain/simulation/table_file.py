"""A user's own power table from a JSON file (``simulate --power-table FILE``), checked field by field.

The keys are the fields of ``power_tables.PowerTable``; the required ones are ``target``, ``cpu``,
``default_frequencies_mhz``, ``volt_points``, ``idle_w``, ``loaded_w``, ``loaded_cores``, ``loaded_mhz`` and
``switch_seconds``; ``active_cores``, ``accelerator_w`` and ``notes`` are optional. For example::

    {"target": "myboard", "cpu": "4x Cortex-A53", "default_frequencies_mhz": [600, 1200],
     "volt_points": [[600, 0.8], [1200, 1.0]], "idle_w": 1.2, "loaded_w": 3.0, "loaded_cores": 4,
     "loaded_mhz": 1200, "switch_seconds": 0.0001, "notes": ["measured with a USB meter"]}

Every problem is one line naming the file, the field, what was expected and what was received.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

from cbnet_tl.runtime.dvfs.power_tables import PowerTable
from cbnet_tl.runtime.errors import DvfsError
from cbnet_tl.runtime.files import read_json

_FIELDS = {field.name: field for field in dataclasses.fields(PowerTable)}
REQUIRED = tuple(name for name, field in _FIELDS.items() if field.default is dataclasses.MISSING)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


_CHECKS = {  # field -> (accepts the value, what is expected)
    "target": (lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string"),
    "cpu": (lambda v: isinstance(v, str), "a string"),
    "default_frequencies_mhz": (lambda v: isinstance(v, list) and v and all(_number(f) and f > 0 for f in v),
                                "a non-empty list of frequencies > 0 in MHz"),
    "volt_points": (lambda v: isinstance(v, list) and v and all(
        isinstance(p, list) and len(p) == 2 and all(_number(x) and x > 0 for x in p) for p in v)
        and len({p[0] for p in v}) == len(v), "a non-empty list of [MHz, volts] pairs > 0 with distinct MHz"),
    "idle_w": (lambda v: _number(v) and v >= 0, "watts >= 0"),
    "loaded_w": (lambda v: _number(v) and v > 0, "watts > 0"),
    "loaded_cores": (_positive_int, "an integer >= 1"),
    "loaded_mhz": (lambda v: _number(v) and v > 0, "MHz > 0"),
    "switch_seconds": (lambda v: _number(v) and v >= 0, "seconds >= 0 (e.g. 0.000355)"),
    "active_cores": (_positive_int, "an integer >= 1"),
    "accelerator_w": (lambda v: _number(v) and v >= 0, "watts >= 0"),
    "notes": (lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v), "a list of strings"),
}


def load_power_table(path: Path) -> PowerTable:
    """The ``PowerTable`` in ``path`` (JSON), or one ``DvfsError`` line saying what is wrong and where."""
    path = Path(path)
    data = read_json(path, "expected a JSON object with the PowerTable fields")
    if not isinstance(data, dict):
        raise DvfsError(f"Power table {path}: expected a JSON object with the fields {list(_FIELDS)}. "
                        f"Received: {type(data).__name__}")
    unknown = sorted(set(data) - set(_FIELDS))
    if unknown:
        raise DvfsError(f"Power table {path}: unknown field(s) {unknown}. Expected only {list(_FIELDS)}")
    missing = [name for name in REQUIRED if name not in data]
    if missing:
        raise DvfsError(f"Power table {path}: missing field(s) {missing}. Required: {list(REQUIRED)}")
    for name, value in data.items():
        accepts, expected = _CHECKS[name]
        if not accepts(value):
            raise DvfsError(f"Power table {path}: expected {name} as {expected}. Received: {value!r}")
    if data["loaded_w"] <= data["idle_w"]:
        raise DvfsError(f"Power table {path}: expected loaded_w > idle_w (loaded cores draw more than an idle "
                        f"board). Received: loaded_w {data['loaded_w']}, idle_w {data['idle_w']}")
    values = dict(data)
    values["default_frequencies_mhz"] = tuple(sorted(values["default_frequencies_mhz"]))
    values["volt_points"] = tuple(sorted((float(f), float(v)) for f, v in values["volt_points"]))
    values["notes"] = tuple(values.get("notes", ())) + (f"Power table read from {path}.",)
    return PowerTable(**values)
