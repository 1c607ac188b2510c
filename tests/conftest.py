"""Shared fixtures: real test data shipped in tests/data, and one tiny real build per session."""

from __future__ import annotations

import ast
import functools
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # as the CLI does (toolchain/quiet.py prefer_onednn)
ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
MNIST_8K = DATA / "mnist-8k"
SAMPLES = DATA / "samples"


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    return MNIST_8K


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    return SAMPLES


TINY_BUILD = DATA / "tiny-build"  # committed; scripts/make_test_build.py regenerates it


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


@pytest.fixture(scope="session")
def tiny_build(tmp_path_factory) -> Path:
    """A real build on 2,000 MNIST training images (scripts/make_test_build.py), copied per session.

    Its bundle is made again from the current code: rendered by ``write_bundle`` where jinja2 is
    installed, else (the runtime-only venv) the committed bundle with this runtime copied in.
    """
    if not (TINY_BUILD / "manifest.json").is_file():
        pytest.fail(f"{TINY_BUILD} is missing: run scripts/make_test_build.py")
    out = tmp_path_factory.mktemp("builds") / "tiny"
    shutil.copytree(TINY_BUILD, out)
    if _importable("jinja2"):
        from cbnet_tl.toolchain.delivery.bundle import write_bundle
        from cbnet_tl.toolchain.ingest.datasets import Split, load_dataset
        from cbnet_tl.toolchain.targets import get_target

        from cbnet_tl.toolchain.analysis.report import write_report

        test = load_dataset("mnist", Split.TEST, MNIST_8K)
        write_bundle(out, get_target("rpi4"), test.images)
        write_report(out, test.images, test.labels)
    else:
        _refresh_runtime(out / "bundle")
        (out / "bundle" / "models").mkdir(exist_ok=True)
        for model in (out / "models").glob("*.tflite"):  # the bundle's models are the build's, byte for byte
            shutil.copy2(model, out / "bundle" / "models" / model.name)
    return out


def _refresh_runtime(bundle: Path) -> None:
    """Copy this checkout's runtime into a bundle and record the new files' sha256 in its manifest."""
    import cbnet_tl.runtime as runtime_package
    from cbnet_tl.runtime.bundle import sha256_of
    from cbnet_tl.runtime.manifest import read_manifest

    lib = bundle / "lib" / "cbnet_tl" / "runtime"  # not committed: always this checkout's runtime
    shutil.rmtree(lib, ignore_errors=True)
    shutil.copytree(Path(runtime_package.__file__).parent, lib, ignore=shutil.ignore_patterns("__pycache__"))
    manifest = read_manifest(bundle)
    files = {k: v for k, v in manifest.files.items() if not k.startswith("lib/")}
    files.update({str(p.relative_to(bundle)): sha256_of(p) for p in lib.rglob("*") if p.is_file()})
    manifest.replace(files=files).write(bundle)


@pytest.fixture(scope="session")
def fresh_build(tmp_path_factory) -> Path:
    """A build made now, with TensorFlow, on 1,000 MNIST images (every stage for real, ≈1 min)."""
    from cbnet_tl.toolchain.build import BuildConfig, build
    from cbnet_tl.toolchain.conversion.checks import CheckConfig
    from cbnet_tl.toolchain.training.train import TrainConfig

    out = tmp_path_factory.mktemp("builds") / "fresh"
    build(
        BuildConfig(
            dataset="mnist", out=out, data_dir=MNIST_8K, max_train_images=1000,
            train=TrainConfig(blenet_epochs=3, autoencoder_epochs=6, progress=False, min_autoencoder_pairs=0,
                              few_image_steps=300,
                              augment_shift_pixels=0),
            check=CheckConfig(max_accuracy_drop=10.0),
            write_report=True,
        ),
        log=lambda message: None,
    )
    return out


@pytest.fixture(scope="session")
def tiny_bundle(tiny_build) -> Path:
    return tiny_build / "bundle"


STAMPS = Path("/usr/share/tuxpaint/stamps")  # Debian's tuxpaint-stamps-default: real RGBA/LA/P drawings
STAMP_CLASSES = ("animals/birds", "food/fruit", "plants/flowers", "town/houses", "vehicles")


def stamps_folder(destination: Path, per_class: int = 9, classes=STAMP_CLASSES) -> Path:
    """Class folders of real drawings and photos (links to the Debian package's PNGs), ``per_class`` each."""
    if not STAMPS.is_dir():
        pytest.fail(f"{STAMPS} is missing: apt-get install tuxpaint-stamps-default (scripts/setup.sh --tests does)")
    for category in classes:
        folder = destination / category.split("/")[-1]
        folder.mkdir(parents=True)
        for source in sorted((STAMPS / category).rglob("*.png"))[:per_class]:
            (folder / source.name).symlink_to(source)
    return destination


@pytest.fixture(scope="session")
def rgb_build(tmp_path_factory) -> Path:
    """A real RGB build through the CLI, on 5 classes of tuxpaint drawings (one file unreadable), 16x16."""
    from typer.testing import CliRunner

    from cbnet_tl.toolchain.cli import app

    data = stamps_folder(tmp_path_factory.mktemp("stamps") / "data")
    (data / "fruit" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path_factory.mktemp("builds") / "rgb"
    result = CliRunner().invoke(app, ["build", "--data-dir", str(data), "--image-size", "16", "--out", str(out),
                                      "--blenet-epochs", "2", "--steps", "60", "--no-progress", "--no-report",
                                      "--max-accuracy-drop", "100", "--max-fallback-share", "0.5"])
    assert result.exit_code == 0, result.output
    (out / "build-output.txt").write_text(result.output)
    return out


# Which tests need the build stack (TensorFlow, Keras, typer, jinja2) or the dev extras the runtime never needs
# (prometheus_client's parser): marked `tf` automatically, from the modules each test file imports (anywhere in it)
# and, transitively, what those cbnet_tl modules import. (OpenCV's tests are marked by hand: the frames' other tests
# run in the runtime-only suite.)
BUILD_STACK = ("tensorflow", "keras", "typer", "jinja2", "tqdm", "prometheus_client")
PACKAGE_DIRS = {"runtime": ROOT / "runtime", "toolchain": ROOT / "toolchain", "recipes": ROOT / "recipes"}
BUILD_FIXTURES = {"fresh_build", "ssh_server", "rgb_build"}


def _imports(path: Path) -> set:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def _source_of(module: str):
    parts = module.split(".")
    if len(parts) < 2 or parts[0] != "cbnet_tl" or parts[1] not in PACKAGE_DIRS:
        return None
    base = PACKAGE_DIRS[parts[1]].joinpath(*parts[2:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@functools.lru_cache(maxsize=None)
def needs_build_stack(path: Path) -> bool:
    seen, pending = set(), [path]
    while pending:
        current = pending.pop()
        if current in seen:
            continue
        seen.add(current)
        for name in _imports(current):
            if name.split(".")[0] in BUILD_STACK:
                return True
            source = _source_of(name)
            if source is not None:
                pending.append(source)
    return False


def pytest_collection_modifyitems(config, items):
    for item in items:
        if needs_build_stack(Path(item.fspath)) or BUILD_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.tf)


def pytest_ignore_collect(collection_path, config):
    """In a runtime-only venv, `-m "not tf"` must not even import the files that need the build stack."""
    markexpr = config.getoption("markexpr") or ""
    if collection_path.suffix != ".py" or "not tf" not in markexpr.replace("  ", " "):
        return None
    if all(_importable(module) for module in BUILD_STACK):
        return None
    return True if needs_build_stack(Path(collection_path)) else None


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


