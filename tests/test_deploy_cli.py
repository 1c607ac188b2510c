"""``cbnet-tl deploy`` and ``--rollback`` through the CLI, against the real sshd fixture (tests/conftest.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from test_deploy_ssh import _bundle_with_version, fake_root, root_commands, set_up_like_a_board
from typer.testing import CliRunner

from cbnet_tl.toolchain.cli import app


def _options(server, *extra):
    return ["--port", str(server["port"]), "--identity", str(server["home"] / "user_key"),
            "-o", f"UserKnownHostsFile={server['home'] / 'known_hosts'}", "--python", sys.executable, *extra]


def _invoke(*args):
    return CliRunner().invoke(app, ["deploy", *args])


def test_deploy_switch_rollback_and_failed_selftest(ssh_server, tiny_bundle, tmp_path):
    device = tmp_path / "device"
    where = f"{ssh_server['user']}@127.0.0.1:{device}"
    first = _invoke(str(_bundle_with_version(tiny_bundle, tmp_path, "v1")), where, *_options(ssh_server, "--no-restart"))
    assert first.exit_code == 0, first.output
    assert "uploading" in first.output and "self-test on the device" in first.output
    assert os.readlink(device / "current") == str(device / "releases" / "v1")
    second = _invoke(str(_bundle_with_version(tiny_bundle, tmp_path, "v2")), where,
                     *_options(ssh_server, "--no-restart", "--json"))
    assert second.exit_code == 0, second.output
    assert json.loads(second.stdout[second.stdout.index("{"):])["previous"] == str(device / "releases" / "v1")
    assert os.readlink(device / "current") == str(device / "releases" / "v2")

    bad = _bundle_with_version(tiny_bundle, tmp_path, "wrong")
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["selftest"]["expected"]["cbnet"] = [(x + 1) % 10 for x in manifest["selftest"]["expected"]["cbnet"]]
    (bad / "manifest.json").write_text(json.dumps(manifest))
    failed = _invoke(str(bad), where, *_options(ssh_server, "--no-restart"))
    assert failed.exit_code == 1
    assert "error: self-test on the device failed" in failed.output and "Traceback" not in failed.output
    assert os.readlink(device / "current") == str(device / "releases" / "v2")

    rolled = _invoke("--rollback", where, *_options(ssh_server, "--no-restart"))
    assert rolled.exit_code == 0, rolled.output
    assert os.readlink(device / "current") == str(device / "releases" / "v1")
    assert os.readlink(device / "previous") == str(device / "releases" / "v2")


def _last_error(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert lines[-1].startswith("error: ") and "Traceback" not in result.output
    return lines[-1]


def test_clear_errors_keep_current(ssh_server, tiny_bundle, tmp_path):
    device = tmp_path / "device"
    where = f"{ssh_server['user']}@127.0.0.1:{device}"
    bundle = str(_bundle_with_version(tiny_bundle, tmp_path, "v9"))
    assert _invoke(str(_bundle_with_version(tiny_bundle, tmp_path, "v1")), where, *_options(ssh_server, "--no-restart")).exit_code == 0
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    options = _options(ssh_server, "--no-restart")
    options[options.index("-o") + 1] = f"UserKnownHostsFile={empty}"
    unknown = _invoke(bundle, where, *options)
    assert "host key is unknown" in _last_error(unknown)
    other_key = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True)
    options = _options(ssh_server, "--no-restart")
    options[options.index("--identity") + 1] = str(other_key)
    assert "refused the key" in _last_error(_invoke(bundle, where, *options))
    closed = _options(ssh_server, "--no-restart")
    closed[1] = "1"  # nothing listens on port 1
    assert "cannot reach the device" in _last_error(_invoke(bundle, where, *closed))
    assert "Expected BUNDLE user@host" in _invoke(where).output
    assert os.readlink(device / "current") == str(device / "releases" / "v1")


def test_no_rsync_on_the_device(ssh_server, tiny_bundle, tmp_path):
    import pytest

    from cbnet_tl.runtime.errors import DeployError
    from cbnet_tl.toolchain.delivery.deploy import Destination, deploy

    destination = Destination(f"{ssh_server['user']}@127.0.0.1", str(tmp_path / "device"), port=ssh_server["port"],
                              identity=ssh_server["home"] / "user_key", rsync_path="/nonexistent/rsync",
                              ssh_options=(f"UserKnownHostsFile={ssh_server['home'] / 'known_hosts'}",))
    with pytest.raises(DeployError, match="rsync is not installed on the device"):
        deploy(_bundle_with_version(tiny_bundle, tmp_path, "v1"), destination, python=sys.executable, service=None)
    assert not (tmp_path / "device" / "current").exists()


def test_known_stderr_maps_to_one_clear_cause():
    from cbnet_tl.toolchain.delivery.deploy import explain

    assert "no space left on the device" in explain("rsync: write failed on \"x\": No space left on device (28)")
    assert "rsync is not installed" in explain("bash: line 1: rsync: command not found")
    assert explain("something new", 3) == ""


def test_service_serve_installs_enables_and_restarts_it_and_rollback_restarts_it(ssh_server, tiny_bundle, tmp_path,
                                                                                monkeypatch):
    """The CLI's --service reaches the device: the stand-in sudo records what runs as root (tests/test_deploy_ssh.py)."""
    import functools

    from cbnet_tl.toolchain.delivery import deploy as deploying

    root = fake_root(tmp_path)
    monkeypatch.setattr(deploying, "ServiceSetup", functools.partial(
        deploying.ServiceSetup, unit_dir=str(root["unit_dir"]), sudo=root["sudo"]))
    device, units = tmp_path / "device", root["unit_dir"]
    where = f"{ssh_server['user']}@127.0.0.1:{device}"
    def bundle(version: str) -> str:
        return str(set_up_like_a_board(_bundle_with_version(tiny_bundle, tmp_path, version), device, ssh_server["user"]))

    first = _invoke(bundle("v1"), where, *_options(ssh_server, "--service", "serve"))
    assert first.exit_code == 0, first.output
    assert f"installing {units}/cbnet-tl-serve.service" in first.output
    assert first.output.strip().splitlines()[-1] == \
        f"deployed: current -> {device}/releases/v1; cbnet-tl-serve.service enabled and restarted"
    assert root_commands(root)[-2:] == ["sudo systemctl enable cbnet-tl-serve.service",
                                        "sudo systemctl restart cbnet-tl-serve.service"]
    assert f"WorkingDirectory={device}/current" in (units / "cbnet-tl-serve.service").read_text()

    second = _invoke(bundle("v2"), where, *_options(ssh_server, "--json"))
    assert second.exit_code == 0, second.output
    record = json.loads(second.stdout[second.stdout.index("{"):])
    assert record["service"] == "cbnet-tl.service" and record["restarted"]  # watch, the default
    assert "sudo systemctl disable --now cbnet-tl-serve.service" in root_commands(root)

    rolled = _invoke("--rollback", where, *_options(ssh_server, "--service", "serve"))
    assert rolled.exit_code == 0, rolled.output
    assert os.readlink(device / "current") == str(device / "releases" / "v1")
    assert root_commands(root)[-1] == "sudo systemctl restart cbnet-tl-serve.service"


def test_bad_service_values_are_refused(tmp_path):
    def refused(*args) -> str:  # typer's usage error, one line in a box wide enough for it
        result = CliRunner().invoke(app, ["deploy", str(tmp_path), "pi@board", *args], env={"COLUMNS": "250"})
        assert result.exit_code == 2 and "Traceback" not in result.output
        return next(line for line in result.output.splitlines() if "Invalid value" in line)

    assert "'camera' is not one of 'watch', 'serve'" in refused("--service", "camera")
    assert "Expected --service serve or --no-restart, not both" in refused("--service", "serve", "--no-restart")


def test_help_explains_the_services():
    result = CliRunner().invoke(app, ["deploy", "--help"], env={"COLUMNS": "200"})
    text = " ".join(result.output.split())
    assert result.exit_code == 0
    for words in ("--service", "watch", "serve", "cbnet-tl-serve.service", "/etc/systemd/system", "--no-restart"):
        assert words in text
