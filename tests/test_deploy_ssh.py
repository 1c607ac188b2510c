"""Deploy and roll back against a real OpenSSH server on 127.0.0.1 (throwaway keys, host key checked)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cbnet_tl.toolchain.delivery.deploy import DeployError, Destination, deploy, rollback


def _destination(server, directory: Path) -> Destination:
    return Destination(f"{server['user']}@127.0.0.1", str(directory), port=server["port"],
                       identity=server["home"] / "user_key",
                       ssh_options=(f"UserKnownHostsFile={server['home'] / 'known_hosts'}",))


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
    first = deploy(_bundle_with_version(tiny_bundle, tmp_path, "v1"), destination, python=sys.executable, restart=None)
    assert first["previous"] is None and os.readlink(device / "current") == str(device / "releases" / "v1")
    deploy(_bundle_with_version(tiny_bundle, tmp_path, "v2"), destination, python=sys.executable, restart=["true"])
    assert os.readlink(device / "current") == str(device / "releases" / "v2")
    assert os.readlink(device / "previous") == str(device / "releases" / "v1")
    assert (device / "releases" / "v1" / "run.py").is_file()  # the previous version is kept

    with pytest.raises(DeployError, match="already exists; this version is deployed"):
        deploy(_bundle_with_version(tiny_bundle, tmp_path, "v2"), destination, python=sys.executable, restart=None)

    rolled = rollback(destination, restart=None)
    assert rolled["current"] == str(device / "releases" / "v1")
    assert os.readlink(device / "current") == str(device / "releases" / "v1")
    assert os.readlink(device / "previous") == str(device / "releases" / "v2")


def test_corrupted_upload_keeps_the_running_version(ssh_server, tiny_bundle, tmp_path, monkeypatch):
    device = tmp_path / "device"
    destination = _destination(ssh_server, device)
    deploy(_bundle_with_version(tiny_bundle, tmp_path, "good"), destination, python=sys.executable, restart=None)
    bad = _bundle_with_version(tiny_bundle, tmp_path, "bad")
    manifest = json.loads((bad / "manifest.json").read_text())
    # the manifest promises other bytes than the file carries: what a corrupted transfer looks like
    manifest["files"]["models/lenet_int8.tflite"] = "0" * 64
    (bad / "manifest.json").write_text(json.dumps(manifest))
    (bad / "models" / "lenet_int8.tflite").write_bytes(b"corrupted in transit")
    from cbnet_tl.toolchain.delivery import deploy as deploy_module

    with pytest.raises(DeployError, match="already broken here|sha256"):
        deploy(bad, destination, python=sys.executable, restart=None)  # the local check refuses first
    monkeypatch.setattr(deploy_module, "verify_files", lambda *a, **k: None)  # reach the device's own check
    with pytest.raises(DeployError, match="checksum check on the device failed"):
        deploy(bad, destination, python=sys.executable, restart=None)
    assert os.readlink(device / "current") == str(device / "releases" / "good")
    assert not (device / "releases" / "bad").exists() and not list((device / "releases").glob(".incoming-*"))


def test_failing_selftest_keeps_the_running_version(ssh_server, tiny_bundle, tmp_path):
    from cbnet_tl.runtime.bundle import sha256_of

    device = tmp_path / "device"
    destination = _destination(ssh_server, device)
    deploy(_bundle_with_version(tiny_bundle, tmp_path, "good"), destination, python=sys.executable, restart=None)
    bad = _bundle_with_version(tiny_bundle, tmp_path, "wrong-answers")
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["selftest"]["expected"]["cbnet"] = [(label + 1) % 10 for label in manifest["selftest"]["expected"]["cbnet"]]
    (bad / "manifest.json").write_text(json.dumps(manifest))
    assert sha256_of(bad / "models" / "lenet_int8.tflite") == manifest["files"]["models/lenet_int8.tflite"]
    with pytest.raises(DeployError, match="self-test on the device failed .*Self-test failed: cbnet agrees on"):
        deploy(bad, destination, python=sys.executable, restart=None)
    assert os.readlink(device / "current") == str(device / "releases" / "good")
    assert not (device / "releases" / "wrong-answers").exists()


def test_unknown_host_key_is_refused(ssh_server, tiny_bundle, tmp_path):
    empty = tmp_path / "empty_known_hosts"
    empty.write_text("")
    destination = Destination(f"{ssh_server['user']}@127.0.0.1", str(tmp_path / "device"), port=ssh_server["port"],
                              identity=ssh_server["home"] / "user_key", ssh_options=(f"UserKnownHostsFile={empty}",))
    with pytest.raises(DeployError, match="Host key verification failed"):
        deploy(_bundle_with_version(tiny_bundle, tmp_path, "v1"), destination, python=sys.executable, restart=None)


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
