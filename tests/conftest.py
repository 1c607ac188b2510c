"""Shared fixtures: real test data shipped in tests/data, and one tiny real build per session."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
MNIST_8K = DATA / "mnist-8k"
SAMPLES = DATA / "samples"


def _has_tensorflow() -> bool:
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    return MNIST_8K


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    return SAMPLES


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory) -> Path:
    """A real build on 2,000 MNIST training images, 4 + 20 epochs (≈45 s): every stage runs for real."""
    from cbnet_tl.toolchain.build import BuildConfig, build
    from cbnet_tl.toolchain.checks import CheckConfig
    from cbnet_tl.toolchain.train import TrainConfig

    out = tmp_path_factory.mktemp("builds") / "tiny"
    build(
        BuildConfig(
            dataset="mnist", out=out, data_dir=MNIST_8K, allow_download=False, max_train_images=2000,
            train=TrainConfig(blenet_epochs=4, autoencoder_epochs=20, progress=False, min_autoencoder_pairs=0,
                              augment_shift_pixels=0),
            check=CheckConfig(max_accuracy_drop=5.0),
            write_report=True,
        ),
        log=lambda message: None,
    )
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tiny_build) -> Path:
    return tiny_build / "bundle"


SSHD = Path("/usr/sbin/sshd")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
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


