"""The counting environment of ``bench --arm64`` inside the arm64 check's Debian root, and running in it.

Set-up (as root; ``prepare``, each part only when missing or stale): the dynamic qemu-aarch64 with its loader
and libraries, and the counting plugin compiled from ``data/insncount.c``, are copied into
ROOT/opt/cbnet-tl-count/host (qemu-user-static loads no plugins, and under ``-L ROOT`` the host's /sys leaks in
and the interpreter's CPU detection crashes, so everything runs chrooted in the root); a venv with the bundle's
requirements is made in ROOT/opt/cbnet-tl-count/venv (the one step that needs the network). Commands run in the
root through ``arm64_jail.py`` in a private mount namespace, with the minimal /sys the arm64 check mounts.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional

from cbnet_tl.runtime.errors import CbnetError

DEFAULT_CACHE = Path(os.environ.get("CBNET_ARM64_CACHE", "/var/cache/cbnet-tl/arm64"))
DEFAULT_SUITE = "bookworm"
IN_ROOT = "/opt/cbnet-tl-count"  # what counting keeps in a root: host/ (qemu, plugin), venv/, work/


def count_dir(root: Path) -> Path:
    """IN_ROOT as seen from the host: the folder counting keeps in ``root``."""
    return root / IN_ROOT.lstrip("/")


QEMU = Path("/usr/bin/qemu-aarch64")  # Debian's qemu-user: dynamic, loads plugins
PLUGIN_SOURCE = Path(__file__).parent.parent / "data" / "insncount.c"
RUN_TIMEOUT = 3600


class Arm64CountError(CbnetError):
    """Instructions cannot be counted: no arm64 root, no set-up, not root, or a counting run failed."""


# ---------------------------------------------------------------------------------------------------------
# the emulated core as the interpreter sees it

# qemu-aarch64 7.2 passes the host's /proc/cpuinfo through (an x86 one here), so the interpreter's CPU detection
# (cpuinfo, under XNNPACK and ruy) finds no core and takes its generic kernels, where a board's finds its own: on
# a Pi 4, XNNPACK's int8 GEMMs for the Cortex-A72 are the prefetching variants (its src/configs/gemm-config.c picks
# per core), a count that differs from the generic kernels' (benchmarks/RESULTS.md). The count puts the
# emulated core's /proc/cpuinfo in its place. MIDR_EL1 as qemu's models give it (target/arm/cpu64.c), the same as
# the boards' (BCM2711: A72 r0p3; BCM2712: A76 r4p1); Features as the arm64 kernel prints them on those boards.
CORES = {
    "cortex-a53": (0x410FD034, "fp asimd evtstrm aes pmull sha1 sha2 crc32 cpuid"),
    "cortex-a72": (0x410FD083, "fp asimd evtstrm crc32 cpuid"),
    "cortex-a76": (0x414FD0B1, "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm "
                               "lrcpc dcpop asimddp"),
    "neoverse-n1": (0x414FD0C1, "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm "
                                "lrcpc dcpop asimddp ssbs"),
}
NUM_BOARD_CPUS = 4  # as arm64_jail.BOARD_CPUS says in /sys


def proc_cpuinfo(cpu: str) -> str:
    """/proc/cpuinfo of a board of NUM_BOARD_CPUS cores ``cpu`` (a qemu -cpu name in CORES), as arm64 Linux
    prints it."""
    if cpu not in CORES:
        raise Arm64CountError(f"Expected a core in {sorted(CORES)} to count on. Received: {cpu!r}")
    midr, features = CORES[cpu]
    core = (f"BogoMIPS\t: 108.00\nFeatures\t: {features}\nCPU implementer\t: {midr >> 24:#x}\n"
            f"CPU architecture: 8\nCPU variant\t: {(midr >> 20) & 0xF:#x}\nCPU part\t: {(midr >> 4) & 0xFFF:#05x}\n"
            f"CPU revision\t: {midr & 0xF}\n\n")
    return "".join(f"processor\t: {n}\n{core}" for n in range(NUM_BOARD_CPUS))


# ---------------------------------------------------------------------------------------------------------
# running in the root


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "no output"


def in_root(root: Path, argv: list, *, env: dict, cwd: str = "/", binds: tuple = (),
            timeout: float = RUN_TIMEOUT) -> subprocess.CompletedProcess:
    """Run ``argv`` chrooted in ``root`` with /proc, /dev and a minimal /sys, in a private mount namespace."""
    require_root(root)
    command = ["unshare", "--mount", "--propagation", "private", sys.executable, "-m", "cbnet_tl.toolchain.arm64.jail",
               str(root), cwd]
    for source, dest in binds:
        command += ["--bind", f"{source}:{dest}"]
    try:
        return subprocess.run([*command, "--", *argv], capture_output=True, text=True, errors="replace", env=env,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise Arm64CountError(f"`{' '.join(argv[:6])} ...` in {root} timed out after {timeout:.0f} s") from None


def guest_env(extra: Optional[dict] = None) -> dict:
    return {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
            "LANG": "C.UTF-8", "PYTHONHASHSEED": "0", **(extra or {})}


@contextlib.contextmanager
def setup_lock(root: Path):
    """One set-up of a root at a time (two `bench --arm64` at once share it once it is made)."""
    lock_path = count_dir(root).parent / "cbnet-tl-count.lock"  # beside the folder set-up makes
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


# ---------------------------------------------------------------------------------------------------------
# set-up


def _host_libraries(binary: Path) -> tuple:
    """(loader, [libraries]) the dynamic binary needs, from ldd."""
    result = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise Arm64CountError(f"ldd {binary} failed: {last_line(result.stderr)}")
    loader, libraries = None, []
    for line in result.stdout.splitlines():
        words = line.split()
        if "=>" in words and len(words) >= 3 and words[2].startswith("/"):
            libraries.append(Path(words[2]))
        elif words and words[0].startswith("/"):
            loader = Path(words[0])
    if loader is None:
        raise Arm64CountError(f"ldd {binary} names no loader")
    return loader, libraries


def build_plugin(out: Path) -> Path:
    """Compile the counting plugin (data/insncount.c) to ``out``."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise Arm64CountError("no C compiler to build the counting plugin: apt-get install gcc libc6-dev")
    result = subprocess.run([compiler, "-shared", "-fPIC", "-O2", "-fvisibility=hidden", "-Wall", "-o", str(out),
                             str(PLUGIN_SOURCE)], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise Arm64CountError(f"compiling {PLUGIN_SOURCE.name} failed: {last_line(result.stderr)}")
    return out


def qemu_version() -> str:
    result = subprocess.run([str(QEMU), "--version"], capture_output=True, text=True, check=False)
    return result.stdout.split("\n", 1)[0].strip() if result.returncode == 0 else "?"


def _host_stamp() -> str:
    return json.dumps({"qemu": qemu_version(), "plugin": PLUGIN_SOURCE.read_text()})


def _venv_stamp(requirements: str) -> str:
    return json.dumps(sorted(line.strip() for line in requirements.splitlines()
                             if line.strip() and not line.lstrip().startswith("#")))


def _stamped(path: Path, stamp: str) -> bool:
    return path.is_file() and path.read_text() == stamp


def is_prepared(root: Path, requirements: str) -> bool:
    base = count_dir(root)
    return _stamped(base / "host" / "stamp.json", _host_stamp()) \
        and _stamped(base / "venv" / "stamp.json", _venv_stamp(requirements))


def _install_host(base: Path) -> None:
    """qemu-aarch64 (dynamic), its loader and libraries, and the plugin compiled from source, into BASE/host."""
    if not QEMU.is_file():
        raise Arm64CountError(f"{QEMU} is missing: apt-get install qemu-user (scripts/setup.sh --tests)")
    host = base / "host"
    if host.exists():
        shutil.rmtree(host)
    (host / "lib").mkdir(parents=True)
    loader, libraries = _host_libraries(QEMU)
    shutil.copy2(loader, host / "ld.so")
    for library in libraries:
        shutil.copy2(library, host / "lib" / library.name)
    shutil.copy2(QEMU, host / "qemu-aarch64")
    build_plugin(host / "insncount.so")
    (host / "stamp.json").write_text(_host_stamp())


def _install_venv(root: Path, base: Path, requirements: str, pip_cache: Optional[Path]) -> None:
    """A venv in BASE/venv with ``requirements`` from the registry (the one step that needs the network)."""
    if (base / "venv").exists():
        shutil.rmtree(base / "venv")
    (base / "requirements.txt").write_text(requirements)
    extra = {k: v for k, v in os.environ.items() if k.lower() in ("http_proxy", "https_proxy", "no_proxy")}
    ca = next((Path(c) for c in (os.environ.get("PIP_CERT"), ssl.get_default_verify_paths().cafile,
                                 "/etc/ssl/certs/ca-certificates.crt") if c and Path(c).is_file()), None)
    if ca is not None:
        shutil.copy(ca, base / "ca.crt")
        extra["PIP_CERT"] = f"{IN_ROOT}/ca.crt"
    if Path("/etc/resolv.conf").is_file():
        (root / "etc/resolv.conf").unlink(missing_ok=True)
        shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
    env = guest_env({**extra, "QEMU_CPU": "cortex-a72", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
                      "PIP_ROOT_USER_ACTION": "ignore"})
    binds = ((str(pip_cache), "/root/.cache/pip"),) if pip_cache else ()
    for argv in (["/usr/bin/python3", "-m", "venv", f"{IN_ROOT}/venv"],
                 [f"{IN_ROOT}/venv/bin/python", "-m", "pip", "install", "-q", "-r", f"{IN_ROOT}/requirements.txt"]):
        result = in_root(root, argv, env=env, binds=binds)
        if result.returncode != 0:
            raise Arm64CountError(f"`{' '.join(argv)}` in {root} failed: {last_line(result.stderr)}")
    (base / "venv" / "stamp.json").write_text(_venv_stamp(requirements))


def require_root(root: Path) -> None:
    """Refuse in one line unless this process may chroot and ``root`` is a Debian arm64 root."""
    if os.geteuid() != 0:
        raise Arm64CountError("counting on arm64 needs root (mount, chroot into the arm64 root): run it with sudo")
    if not (root / "usr/bin/python3").exists() or not (root / "opt").is_dir():
        raise Arm64CountError(f"no Debian arm64 root at {root}: make it with `sudo python3 scripts/arm64_check.py "
                              "--only bookworm-litert` (it caches its roots in /var/cache/cbnet-tl/arm64)")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def prepare(root: Path, requirements: str, pip_cache: Optional[Path] = None, log: Callable = _stderr) -> None:
    """Put qemu, its libraries and the compiled plugin, and a venv with ``requirements``, into ``root`` (each
    only when missing or stale; the venv needs the network)."""
    require_root(root)
    base = count_dir(root)
    if not _stamped(base / "host" / "stamp.json", _host_stamp()):
        log(f"arm64 count: copying qemu-aarch64 and building the counting plugin in {base / 'host'}")
        _install_host(base)
    if not _stamped(base / "venv" / "stamp.json", _venv_stamp(requirements)):
        log(f"arm64 count: making a venv with the bundle's requirements in {base / 'venv'} (once; needs the network)")
        _install_venv(root, base, requirements, pip_cache)
