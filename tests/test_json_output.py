"""Every ``--json`` output is standard JSON (no NaN, Infinity or -Infinity), command by command, through the
CLI on the committed tiny build. ``build`` and ``sizes`` train models (minutes), so they are left out here;
they print through the same ``echo_json`` as the others."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import typer
from typer.testing import CliRunner

from cbnet_tl.toolchain.cli import app

runner = CliRunner()
TOO_SLOW = {"build", "sizes"}  # each trains models


def strict_json(text: str):
    """``json.loads`` that refuses the non-standard constants Python's json module writes by default."""
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant} in --json output")

    return json.loads(text, parse_constant=refuse)


def _commands_with_json() -> set:
    group = typer.main.get_command(app)
    return {name for name, command in group.commands.items()
            if any("--json" in getattr(param, "opts", ()) for param in command.params)}


def _arguments(name: str, build, mnist, samples, tmp_path) -> list:
    bundle = build / "bundle"
    return {
        "eval": ["eval", str(bundle), "--data-dir", str(mnist), "--limit", "40", "--period-ms", "0.01"],
        "bench": ["bench", str(build), "--data-dir", str(mnist), "--batch", "1", "--num-images", "32", "--no-save"],
        "simulate": ["simulate", str(bundle), "--data-dir", str(mnist), "--limit", "20", "--repeats", "1",
                     "--no-save"],
        "tune": ["tune", str(bundle), "--out", str(tmp_path / "tuning.json")],
        "inspect": ["inspect", str(bundle), "--target", "coral-usb"],
        "check": ["check", str(build), "--data-dir", str(mnist)],
        "run": ["run", str(bundle), str(samples / "mnist_00_7.png"), "--pipeline", "cbnet-fallback"],
    }[name] + ["--json"]


LOCAL_COMMANDS = ("eval", "bench", "simulate", "tune", "inspect", "check", "run")


def test_every_json_command_is_covered_here():
    assert _commands_with_json() == set(LOCAL_COMMANDS) | {"deploy"} | TOO_SLOW


@pytest.mark.parametrize("name", LOCAL_COMMANDS)
def test_json_output_is_standard_json(name, tiny_build, mnist_dir, samples_dir, tmp_path):
    build = tmp_path / "build"
    shutil.copytree(tiny_build, build)  # check rewrites checks.json; keep the session's build as it was
    result = runner.invoke(app, _arguments(name, build, mnist_dir, samples_dir, tmp_path))
    assert result.exit_code == 0, result.output
    payload = strict_json(result.stdout)
    assert isinstance(payload, dict) and payload


def test_run_json_without_a_deadline_says_null(tiny_bundle, samples_dir):
    """A session without a deadline (arrivals every --period-ms) has ``deadline_ms`` null; no DVFS option at all
    means no session and no ``dvfs`` key, as in ``run.py classify --json``."""
    image = str(samples_dir / "mnist_00_7.png")
    result = runner.invoke(app, ["run", str(tiny_bundle), image, "--period-ms", "1", "--json"])
    assert result.exit_code == 0, result.output
    assert strict_json(result.stdout)["dvfs"]["deadline_ms"] is None
    plain = runner.invoke(app, ["run", str(tiny_bundle), image, "--json"])
    assert plain.exit_code == 0 and set(strict_json(plain.stdout)) == {"pipeline", "configuration", "input", "results"}


def test_deploy_json_is_standard_json(ssh_server, tiny_bundle, tmp_path):
    """deploy needs an ssh destination: the session's local sshd (tests/conftest.py), no remote machine."""
    where = f"{ssh_server['user']}@127.0.0.1:{tmp_path / 'device'}"
    result = runner.invoke(app, ["deploy", str(tiny_bundle), where, "--port", str(ssh_server["port"]),
                                 "--identity", str(ssh_server["home"] / "user_key"),
                                 "-o", f"UserKnownHostsFile={ssh_server['home'] / 'known_hosts'}",
                                 "--python", sys.executable, "--no-restart", "--json"])
    assert result.exit_code == 0, result.output
    assert strict_json(result.stdout)["release"].startswith(str(tmp_path / "device" / "releases"))


def test_echo_json_refuses_a_non_finite_number():
    from cbnet_tl.toolchain.cli.common import echo_json

    with pytest.raises(ValueError):
        echo_json({"deadline_ms": float("inf")})


def test_explain_records_an_unbounded_ratio_as_null():
    from cbnet_tl.toolchain.analysis.explain import LayerError, _record, format_explanation

    error = LayerError("dense", "FULLY_CONNECTED", "t", 0.5, 0.0, float("inf"), float("inf"), "keep it in float")
    record = _record(error)
    assert record["rmse_over_scale"] is None and record["noise_to_signal"] is None
    strict_json(json.dumps(record))
    assert "inf" in format_explanation({"lenet": [record]})


def test_simulate_workload_json_is_standard_json(tiny_bundle, mnist_dir, tmp_path):
    """simulate's batch options (--workload, --batch-size, --threads, --power-table, --save-trace) print standard
    JSON too; with one --pipeline, that run's policies are the top-level ``policies``."""
    from pathlib import Path

    table = Path(__file__).parent / "data" / "wide_range_power_table.json"
    result = runner.invoke(app, ["simulate", str(tiny_bundle), "--data-dir", str(mnist_dir), "--pipeline", "branchynet",
                                 "--workload", "burst:40:20", "--batch-size", "16", "--threads", "1", "--repeats", "1",
                                 "--power-table", str(table), "--save-trace", str(tmp_path / "t.json"), "--no-save",
                                 "--json"])
    assert result.exit_code == 0, result.output
    payload = strict_json(result.stdout)
    assert {"energy_j", "miss_rate"} <= set(payload["policies"]["eenet"])
