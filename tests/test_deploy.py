"""Deploy and roll back against a real OpenSSH server on 127.0.0.1 (throwaway keys, host key checked)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cbnet_tl.toolchain.deploy import DeployError, Destination, deploy, rollback

SSHD = Path("/usr/sbin/sshd")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ssh_server(tmp_path_factory):
    if not SSHD.exists() or shutil.which("rsync") is None or shutil.which("ssh-keygen") is None:
        pytest.fail("This test needs openssh-server, openssh-client and rsync (scripts/setup.sh installs them)")
    home = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / name)], check=True)
    (home / "authorized_keys").write_text((home / "user_key.pub").read_text())
    port = _free_port()
    config = home / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {home / 'host_key'}", f"PidFile {home / 'sshd.pid'}",
        f"AuthorizedKeysFile {home / 'authorized_keys'}", "StrictModes no", "UsePAM no", "PasswordAuthentication no",
        "PermitRootLogin prohibit-password", "PubkeyAuthentication yes", "LogLevel ERROR",
        f"SetEnv PATH={os.path.dirname(sys.executable)}:/usr/local/bin:/usr/bin:/bin",
    ]) + "\n")
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    server = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE, text=True)
    host_key = (home / "host_key.pub").read_text().split()
    (home / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    user = os.environ.get("USER") or __import__("pwd").getpwuid(os.getuid()).pw_name
    yield {"port": port, "home": home, "user": user}
    server.terminate()
    server.wait(timeout=10)


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
    from cbnet_tl.toolchain import deploy as deploy_module

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
