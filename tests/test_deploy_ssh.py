"""Deploy and roll back against a real OpenSSH server on 127.0.0.1 (throwaway keys, host key checked). The
service steps run through a stand-in ``sudo`` that records each command it runs and a stand-in ``systemctl``."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cbnet_tl.toolchain.delivery.deploy import DeployError, Destination, ServiceSetup, deploy, rollback


def _destination(server, directory: Path) -> Destination:
    return Destination(f"{server['user']}@127.0.0.1", str(directory), port=server["port"],
                       identity=server["home"] / "user_key",
                       ssh_options=(f"UserKnownHostsFile={server['home'] / 'known_hosts'}",))


def fake_root(tmp_path: Path, sudo_says: str = "") -> dict:
    """A stand-in ``sudo`` that appends the command it runs to ``log`` and runs it (``systemctl`` resolving to a
    stand-in that does nothing), and the folder it installs units into. With ``sudo_says`` it prints that and
    fails, as sudo does when it wants a password."""
    bin_dir, unit_dir, log = tmp_path / "fake-bin", tmp_path / "systemd-system", tmp_path / "root-commands.log"
    bin_dir.mkdir()
    unit_dir.mkdir()
    failing = f"echo {shlex.quote(sudo_says)} >&2; exit 1\n" if sudo_says else ""
    (bin_dir / "sudo").write_text(f'#!/bin/sh\n{failing}echo "sudo $*" >> {shlex.quote(str(log))}\n'
                                  'PATH="$(dirname "$0"):$PATH"; export PATH; exec "$@"\n')
    (bin_dir / "systemctl").write_text("#!/bin/sh\nexit 0\n")
    for name in ("sudo", "systemctl"):
        (bin_dir / name).chmod(0o755)
    return {"unit_dir": unit_dir, "log": log, "sudo": (str(bin_dir / "sudo"),)}


def service_setup(root: dict, name: str = "watch") -> ServiceSetup:
    return ServiceSetup(name, unit_dir=str(root["unit_dir"]), sudo=root["sudo"])


def root_commands(root: dict) -> list:
    """The commands run through the stand-in sudo since the last call."""
    lines = root["log"].read_text().splitlines() if root["log"].exists() else []
    root["log"].unlink(missing_ok=True)
    return lines


def set_up_like_a_board(bundle: Path, device: Path, user: str) -> Path:
    """What the bundle's README has one set up on a board before its services run, done here: the units run as
    ``user`` (the board's cbnet-tl user is not on this machine; the manifest follows), the watch folders exist."""
    from cbnet_tl.runtime.bundle import sha256_of
    from cbnet_tl.toolchain.delivery.bundle import SERVICE_UNITS

    manifest = json.loads((bundle / "manifest.json").read_text())
    for unit in SERVICE_UNITS.values():
        (bundle / unit).write_text((bundle / unit).read_text().replace("\nUser=cbnet-tl\n", f"\nUser={user}\n"))
        manifest["files"][unit] = sha256_of(bundle / unit)
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    for folder in ("inbox", "outbox", "done", "failed", "state"):
        (device / folder).mkdir(parents=True, exist_ok=True)
    return bundle


def _bundle_with_version(tiny_bundle: Path, tmp_path: Path, version: str) -> Path:
    copy = tmp_path / f"bundle-{version}-{len(list(tmp_path.glob('bundle-*')))}"
    shutil.copytree(tiny_bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["version"] = version
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def test_deploy_switch_and_rollback(ssh_server, tiny_bundle, tmp_path):
    device = tmp_path / "device"
    destination = _destination(ssh_server, device)
    first = deploy(_bundle_with_version(tiny_bundle, tmp_path, "v1"), destination, python=sys.executable, service=None)
    assert first["previous"] is None and os.readlink(device / "current") == str(device / "releases" / "v1")
    assert first["service"] is None and not first["restarted"]
    deploy(_bundle_with_version(tiny_bundle, tmp_path, "v2"), destination, python=sys.executable, service=None)
    assert os.readlink(device / "current") == str(device / "releases" / "v2")
    assert os.readlink(device / "previous") == str(device / "releases" / "v1")
    assert (device / "releases" / "v1" / "run.py").is_file()  # the previous version is kept

    with pytest.raises(DeployError, match="already exists; this version is deployed"):
        deploy(_bundle_with_version(tiny_bundle, tmp_path, "v2"), destination, python=sys.executable, service=None)

    rolled = rollback(destination, service=None)
    assert rolled["current"] == str(device / "releases" / "v1")
    assert os.readlink(device / "current") == str(device / "releases" / "v1")
    assert os.readlink(device / "previous") == str(device / "releases" / "v2")


def test_each_release_installs_enables_and_restarts_the_chosen_service(ssh_server, tiny_bundle, tmp_path):
    """serve, then watch (which disables serve: the two conflict), then a rollback to serve from the release's own
    unit: the commands run as root, in order, and the unit each one installs, with the device's directory in it."""
    device, root = tmp_path / "device", fake_root(tmp_path)
    destination, units = _destination(ssh_server, device), root["unit_dir"]
    bundle = set_up_like_a_board(_bundle_with_version(tiny_bundle, tmp_path, "v1"), device, ssh_server["user"])
    record = deploy(bundle, destination, python=sys.executable, service=service_setup(root, "serve"))
    assert record["service"] == "cbnet-tl-serve.service" and record["restarted"]
    assert root_commands(root) == [
        f"sudo install -m 0644 /dev/stdin {units}/cbnet-tl-serve.service",
        "sudo systemctl daemon-reload",
        "sudo systemctl enable cbnet-tl-serve.service",
        "sudo systemctl restart cbnet-tl-serve.service",
    ]
    installed = (units / "cbnet-tl-serve.service").read_text()
    assert installed == (bundle / "cbnet-tl-serve.service").read_text().replace("/opt/cbnet-tl/", f"{device}/")
    assert f"WorkingDirectory={device}/current\n" in installed and "/opt/cbnet-tl" not in installed
    assert f"\nExecStart={device}/venv/bin/python3 {device}/current/run.py serve --listen" in installed

    deploy(set_up_like_a_board(_bundle_with_version(tiny_bundle, tmp_path, "v2"), device, ssh_server["user"]),
           destination, python=sys.executable, service=service_setup(root))
    assert root_commands(root) == [
        f"sudo install -m 0644 /dev/stdin {units}/cbnet-tl.service",
        "sudo systemctl daemon-reload",
        "sudo systemctl disable --now cbnet-tl-serve.service",
        "sudo systemctl enable cbnet-tl.service",
        "sudo systemctl restart cbnet-tl.service",
    ]
    assert f"ExecStart={device}/venv/bin/python3 {device}/current/run.py watch --inbox {device}/inbox" in \
        (units / "cbnet-tl.service").read_text()

    (units / "cbnet-tl-serve.service").write_text("an older unit\n")
    rolled = rollback(destination, service=service_setup(root, "serve"))
    assert rolled["current"] == str(device / "releases" / "v1") and rolled["service"] == "cbnet-tl-serve.service"
    assert root_commands(root) == [
        f"sudo install -m 0644 /dev/stdin {units}/cbnet-tl-serve.service",
        "sudo systemctl daemon-reload",
        "sudo systemctl disable --now cbnet-tl.service",
        "sudo systemctl enable cbnet-tl-serve.service",
        "sudo systemctl restart cbnet-tl-serve.service",
    ]
    assert (units / "cbnet-tl-serve.service").read_text() == installed  # v1's own unit, from the device


def test_sudo_that_wants_a_password_is_one_clear_cause(ssh_server, tiny_bundle, tmp_path):
    device, root = tmp_path / "device", fake_root(tmp_path, sudo_says="sudo: a terminal is required to read the password; either use the -S "
                                         "option to read from standard input or configure an askpass helper")
    with pytest.raises(DeployError, match=r"^install the unit failed \(exit 1\): sudo on the device asks for a "
                                          r"password; .*--no-restart"):
        deploy(set_up_like_a_board(_bundle_with_version(tiny_bundle, tmp_path, "v1"), device, ssh_server["user"]),
               _destination(ssh_server, device), python=sys.executable, service=service_setup(root, "serve"))
    assert not list(root["unit_dir"].iterdir())


def test_a_device_without_the_services_user_and_folders_is_refused_before_the_upload(ssh_server, tiny_bundle,
                                                                                     tmp_path):
    device, root = tmp_path / "device", fake_root(tmp_path)
    folders = ", ".join(f"{device}/{name}" for name in ("inbox", "outbox", "done", "failed", "state"))
    with pytest.raises(DeployError, match=re.escape(f"the device lacks what cbnet-tl.service needs: user cbnet-tl, "
                                                    f"{folders}; set it up as the bundle's README.md says")):
        deploy(_bundle_with_version(tiny_bundle, tmp_path, "v1"), _destination(ssh_server, device),
               python=sys.executable, service=service_setup(root))
    assert not (device / "releases" / "v1").exists() and not root["log"].exists()


def test_a_bundle_without_the_unit_is_refused_before_the_device_is_touched(tiny_bundle, tmp_path):
    """A bundle built before the serve service: refused here, so nothing is uploaded (port 1: nobody listens)."""
    old = _bundle_with_version(tiny_bundle, tmp_path, "old")
    (old / "cbnet-tl-serve.service").unlink()
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["files"]["cbnet-tl-serve.service"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    nowhere = Destination("pi@127.0.0.1", str(tmp_path / "device"), port=1)
    with pytest.raises(DeployError, match="has no cbnet-tl-serve.service .*build the bundle again, or pass --no-restart"):
        deploy(old, nowhere, python=sys.executable, service=ServiceSetup("serve"))
    with pytest.raises(DeployError, match="cannot reach the device"):  # the watch unit is there: it goes on
        deploy(old, nowhere, python=sys.executable, service=ServiceSetup("watch"))


def test_the_unit_gets_the_device_directory_and_refuses_an_unsafe_one(tiny_bundle):
    from cbnet_tl.toolchain.delivery.deploy import unit_for_device

    text = (tiny_bundle / "cbnet-tl-serve.service").read_text()
    moved = unit_for_device(text, "cbnet-tl-serve.service", "/srv/cbnet")
    assert "WorkingDirectory=/srv/cbnet/current\n" in moved and "/opt/cbnet-tl" not in moved
    assert "EnvironmentFile=-/etc/default/cbnet-tl-serve\n" in moved  # only the install directory moves
    assert unit_for_device(text, "cbnet-tl-serve.service", "/opt/cbnet-tl") == text
    with pytest.raises(DeployError, match=r"Expected a device directory of \[A-Za-z0-9._/-\] only.*'/srv/a%i'"):
        unit_for_device(text, "cbnet-tl-serve.service", "/srv/a%i")  # %i is a systemd specifier
    with pytest.raises(DeployError, match="Expected a service, one of watch, serve. Received: 'camera'"):
        ServiceSetup("camera")


def test_corrupted_upload_keeps_the_running_version(ssh_server, tiny_bundle, tmp_path, monkeypatch):
    device = tmp_path / "device"
    destination = _destination(ssh_server, device)
    deploy(_bundle_with_version(tiny_bundle, tmp_path, "good"), destination, python=sys.executable, service=None)
    bad = _bundle_with_version(tiny_bundle, tmp_path, "bad")
    manifest = json.loads((bad / "manifest.json").read_text())
    # the manifest promises other bytes than the file carries: what a corrupted transfer looks like
    manifest["files"]["models/lenet_int8.tflite"] = "0" * 64
    (bad / "manifest.json").write_text(json.dumps(manifest))
    (bad / "models" / "lenet_int8.tflite").write_bytes(b"corrupted in transit")
    from cbnet_tl.toolchain.delivery import deploy as deploy_module

    with pytest.raises(DeployError, match="already broken here|sha256"):
        deploy(bad, destination, python=sys.executable, service=None)  # the local check refuses first
    monkeypatch.setattr(deploy_module, "verify_files", lambda *a, **k: None)  # reach the device's own check
    with pytest.raises(DeployError, match="checksum check on the device failed"):
        deploy(bad, destination, python=sys.executable, service=None)
    assert os.readlink(device / "current") == str(device / "releases" / "good")
    assert not (device / "releases" / "bad").exists() and not list((device / "releases").glob(".incoming-*"))


def test_failing_selftest_keeps_the_running_version(ssh_server, tiny_bundle, tmp_path):
    from cbnet_tl.runtime.bundle import sha256_of

    device = tmp_path / "device"
    destination = _destination(ssh_server, device)
    deploy(_bundle_with_version(tiny_bundle, tmp_path, "good"), destination, python=sys.executable, service=None)
    bad = _bundle_with_version(tiny_bundle, tmp_path, "wrong-answers")
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["selftest"]["expected"]["cbnet"] = [(label + 1) % 10 for label in manifest["selftest"]["expected"]["cbnet"]]
    (bad / "manifest.json").write_text(json.dumps(manifest))
    assert sha256_of(bad / "models" / "lenet_int8.tflite") == manifest["files"]["models/lenet_int8.tflite"]
    with pytest.raises(DeployError, match="self-test on the device failed .*Self-test failed: cbnet agrees on"):
        deploy(bad, destination, python=sys.executable, service=None)
    assert os.readlink(device / "current") == str(device / "releases" / "good")
    assert not (device / "releases" / "wrong-answers").exists()


def test_unknown_host_key_is_refused(ssh_server, tiny_bundle, tmp_path):
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    destination = Destination(f"{ssh_server['user']}@127.0.0.1", str(tmp_path / "device"), port=ssh_server["port"],
                              identity=ssh_server["home"] / "user_key", ssh_options=(f"UserKnownHostsFile={empty}",))
    with pytest.raises(DeployError, match="Host key verification failed"):
        deploy(_bundle_with_version(tiny_bundle, tmp_path, "v1"), destination, python=sys.executable, service=None)


def test_bad_destination_text():
    with pytest.raises(DeployError, match="Expected user@host or user@host:/absolute/dir"):
        Destination.parse("pi@host:relative/dir")
    assert Destination.parse("pi@board:/srv/cbnet/").directory == "/srv/cbnet"


@pytest.mark.slow
def test_fleet_playbook_deploys_to_the_local_server(ssh_server, tiny_bundle, tmp_path):
    """The bundle's playbook, run by real Ansible against the same sshd: upload, check, self-test, switch."""
    ansible = shutil.which("ansible-playbook")
    if ansible is None:
        pytest.fail("ansible-playbook is missing; scripts/setup.sh installs ansible-core")
    device = tmp_path / "device"
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    version = json.loads((bundle / "manifest.json").read_text())["version"]
    inventory = tmp_path / "inventory.ini"
    inventory.write_text(
        "[cbnet]\n"
        f"board ansible_host=127.0.0.1 ansible_port={ssh_server['port']} ansible_user={ssh_server['user']} "
        f"ansible_ssh_private_key_file={ssh_server['home'] / 'user_key'} "
        f"ansible_ssh_common_args='-o UserKnownHostsFile={ssh_server['home'] / 'known_hosts'}' "
        f"ansible_python_interpreter={sys.executable}\n"
    )
    env = {**os.environ, "ANSIBLE_HOST_KEY_CHECKING": "True", "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_LOCAL_TEMP": str(tmp_path / "ansible-local"), "ANSIBLE_REMOTE_TEMP": str(tmp_path / "ansible-remote")}
    extra = json.dumps({"cbnet_dir": str(device), "cbnet_python": sys.executable, "cbnet_restart": False})
    result = subprocess.run([ansible, "-i", str(inventory), str(bundle / "fleet" / "playbook.yml"), "-e", extra],
                            capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert os.readlink(device / "current") == str(device / "releases" / version)
    assert (device / "releases" / version / "models" / "lenet_int8.tflite").is_file()
