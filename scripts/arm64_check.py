#!/usr/bin/env python3
"""Run real cbnet-tl bundles on Debian arm64 under qemu-user emulation, as a new user would on the board.

    sudo python3 scripts/arm64_check.py            # what .ci/run does after the unit tests

1. Checks this machine can execute aarch64 binaries (mounts binfmt_misc and enables qemu-aarch64 if needed);
   if it cannot, prints one line and exits 1.
2. Builds four tiny real bundles with the CLI: targets rpi4, rpi5 and coral-usb on MNIST, and an RGB rpi4 bundle from
   real drawings with transparency (tuxpaint-stamps-default), whose combination also classifies images of every
   mode (tests/edge_images.py) in the root and on the host and requires the same model-input bytes and classes.
3. Makes Debian arm64 roots with ``debootstrap --arch=arm64 --variant=minbase`` plus python3, python3-venv and
   python3-pip (bookworm: Python 3.11; bullseye: Python 3.9), cached in ``--cache-dir`` and rebuilt only when
   missing. pip downloads are cached there too (bind-mounted into each root).
4. For each combination below: copies the bundle into the root, makes a venv, ``pip install -r requirements.txt``
   (real aarch64 wheels from the registry), then ``run.py selftest`` and ``run.py classify samples/`` in a chroot,
   with qemu emulating the board's CPU (``QEMU_CPU=cortex-a72``, the Raspberry Pi 4's; ``cortex-a76`` for the
   Raspberry Pi 5's bundle, whose int8 dot-product instructions make XNNPACK run other kernels). qemu's default ``max`` CPU
   has SVE/SME, which no target board has, and there ai-edge-litert 2.3.0's XNNPACK gives wrong int8 results
   (self-test agreement 10-40 %); with SME off, or on cortex-a72 / neoverse-n1, it is right.
5. Counts arm64 instructions per image of every pipeline of the rpi4 and rpi5 bundles on their cores
   (``cbnet-tl bench --arm64``, scripts/arm64_counts.py), fails unless the counts look real (twice the MACs counts
   clearly more, the empty model about one bare call), and prints them beside the last recorded ones.
6. Prints a table and writes ``toolchain/data/device_checks.json``, which bundle READMEs render as "Checked on",
   with the instruction counts (a change in any pipeline's cost shows in its diff).

Exit 0 when every combination passes (tflite-runtime may also pass by refusing in one line with exit 1) and the counts
look real, else 1.
Only the standard library is used; it needs root (debootstrap, mount, chroot).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import datetime as _dt
import fcntl
import importlib.util
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = Path(os.environ.get("CBNET_ARM64_CACHE", "/var/cache/cbnet-tl/arm64"))
MIRROR_ENV = "CBNET_ARM64_MIRROR"  # overrides the Debian mirror read from apt sources (debian_mirror)
ROOT_PACKAGES = ("python3", "python3-venv", "python3-pip")
SUITES = {"bookworm": "Debian 12 (bookworm)", "bullseye": "Debian 11 (bullseye)"}
# The alternative interpreter the rpi4 bundle README offers: tflite-runtime's last release, which needs numpy<2.
TFLITE_RUNTIME_REQUIREMENTS = ("tflite-runtime==2.14.*", "numpy<2")
# 5,000 training images: at least toolchain/training/schedule.py's FEW_IMAGES, so the counted bundles keep the dense
# fast recipe of the default builds (below it the fast recipe is convolutional)
BUILD_ARGS = ("--dataset", "mnist", "--data-dir", str(REPO / "tests" / "data" / "mnist-8k"),
              "--max-train-images", "5000", "--blenet-epochs", "2", "--autoencoder-epochs", "3", "--steps", "100",
              "--time-budget-minutes", "2", "--max-accuracy-drop", "100", "--force")
# The RGB bundle: real drawings with transparency (Debian's tuxpaint-stamps-default) through the input spec.
STAMPS = Path("/usr/share/tuxpaint/stamps")
STAMP_CLASSES = ("animals/birds", "food/fruit", "plants/flowers", "town/houses", "vehicles")
RGB_BUILD_ARGS = ("--image-size", "16", "--blenet-epochs", "2", "--steps", "100", "--time-budget-minutes", "2",
                  "--max-accuracy-drop", "100", "--force")
IN_ROOT = "/opt/cbnet-check"  # everything this check puts into a root lives here (removed before and after)
PIP_TIMEOUT, RUN_TIMEOUT = 900, 600


@dataclass(frozen=True)
class Combo:
    name: str
    suite: str
    target: str  # which bundle: rpi4, rpi5, coral-usb or rpi4-rgb (an RGB image-folder build for the Pi 4)
    requirements: str  # "bundle" (its requirements.txt as shipped) or "tflite-runtime"
    classify_args: tuple = ()
    may_refuse: bool = False  # a one-line refusal with exit 1 is an accepted outcome
    expect_stderr: str | None = None  # classify must print this (the CPU fallback warning)
    cpu: str = "cortex-a72"  # the qemu CPU model: the board's (toolchain/targets.py qemu_cpu; a test keeps them equal)
    parity: bool = False  # also classify images of every mode here and on the host: same input bytes, same classes


COMBOS = (
    Combo("bookworm-litert", "bookworm", "rpi4", "bundle"),
    Combo("bullseye-litert", "bullseye", "rpi4", "bundle"),
    Combo("bookworm-tflite-runtime", "bookworm", "rpi4", "tflite-runtime", may_refuse=True),
    Combo("bookworm-coral-usb", "bookworm", "coral-usb", "bundle", classify_args=("--device", "edgetpu"),
          expect_stderr="running on the CPU"),
    Combo("bookworm-litert-rgb", "bookworm", "rpi4-rgb", "bundle", parity=True),
    Combo("bookworm-litert-rpi5", "bookworm", "rpi5", "bundle", cpu="cortex-a76"),  # the Raspberry Pi 5's core
)


@dataclass
class Step:
    name: str
    status: str = "-"  # ok, refused, crash, fail, timeout
    detail: str = ""
    seconds: float = 0.0


@dataclass
class Outcome:
    combo: Combo
    steps: list = field(default_factory=list)
    versions: dict = field(default_factory=dict)
    debian_version: str = ""
    result: str = "fail"
    seconds: float = 0.0
    cpu: str = ""
    xnnpack: bool = False  # the interpreter said it created the XNNPACK delegate (ai-edge-litert does)


class CheckError(Exception):
    """A reason the check cannot run at all: printed as one line, exit 1."""


# ---------------------------------------------------------------------------------------------------------
# the Debian mirror: this machine's own apt sources (or $CBNET_ARM64_MIRROR), never a host named here

# The main archive's source names a plain suite (not -security, -updates). Codenames are Debian's own; the
# generic names are also used by other vendors' repositories ("stable main"), so they count only when apt's
# cached Release file says Origin Debian.
DEBIAN_CODENAMES = frozenset({"buster", "bullseye", "bookworm", "trixie", "forky", "duke", "sid"})
DEBIAN_GENERIC_SUITES = frozenset({"oldoldstable", "oldstable", "stable", "testing", "unstable"})


@dataclass(frozen=True)
class AptSource:
    types: tuple  # "deb", "deb-src"
    uris: tuple
    suites: tuple
    components: tuple
    where: str  # the file it came from


def _one_line_sources(text: str, where: str) -> list:
    """``deb [option=value ...] URI SUITE COMPONENT...`` lines (sources.list, sources.list.d/*.list)."""
    sources = []
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if words[1:2] and words[1].startswith("["):  # options: up to the word that ends with "]"
            end = next((i for i, w in enumerate(words) if w.endswith("]")), len(words) - 1)
            words = words[:1] + words[end + 1:]
        if len(words) >= 3 and words[0] in ("deb", "deb-src"):
            sources.append(AptSource((words[0],), (words[1],), (words[2],), tuple(words[3:]), where))
    return sources


def _deb822_sources(text: str, where: str) -> list:
    """Stanzas of ``Types:``, ``URIs:``, ``Suites:``, ``Components:`` fields (sources.list.d/*.sources)."""
    stanzas, fields, key = [], {}, None
    for line in text.splitlines() + [""]:
        if not line.strip():  # a blank line ends a stanza
            if fields:
                stanzas.append(fields)
            fields, key = {}, None
        elif line.startswith("#"):
            continue
        elif line[0] in " \t" and key:  # a continuation line
            fields[key] += " " + line.strip()
        elif ":" in line:
            key, value = line.split(":", 1)
            key = key.strip().lower()
            fields[key] = value.strip()
    return [AptSource(*(tuple(fields.get(k, "").split()) for k in ("types", "uris", "suites", "components")), where)
            for fields in stanzas if fields.get("enabled", "yes").lower() != "no"]


def apt_sources(root: Path = Path("/")) -> list:
    """Every source in ``root``'s /etc/apt: sources.list, sources.list.d/*.list and sources.list.d/*.sources."""
    apt = root / "etc" / "apt"
    files = [apt / "sources.list"] + sorted((apt / "sources.list.d").glob("*.list")) \
        + sorted((apt / "sources.list.d").glob("*.sources"))
    sources = []
    for path in files:
        if path.is_file():
            parse = _deb822_sources if path.suffix == ".sources" else _one_line_sources
            sources += parse(path.read_text(errors="replace"), str(path))
    return sources


def _cached_release(root: Path, uri: str, suite: str) -> str | None:
    """The Release file apt last fetched for URI and SUITE (/var/lib/apt/lists), if there is one."""
    path = uri.split("://", 1)[-1].split("@", 1)[-1].rstrip("/") + f"/dists/{suite}/"
    name = "".join(f"%{ord(c):02x}" if c in '\\|{}[]<>"^~_=!@#$%&*' else c for c in path).replace("/", "_")
    for release in ("InRelease", "Release"):
        cached = root / "var" / "lib" / "apt" / "lists" / (name + release)
        if cached.is_file():
            return cached.read_text(errors="replace")
    return None


def _release_field(release: str, name: str) -> str:
    return next((line.split(":", 1)[1].strip() for line in release.splitlines() if line.startswith(name + ":")), "")


def debian_mirror(environ=os.environ, root: Path = Path("/")) -> str:
    """The Debian mirror debootstrap fetches arm64 roots from: $CBNET_ARM64_MIRROR, else the machine's own.

    The first ``deb`` source of the main archive (a Debian suite such as bookworm, component main) served over
    http(s) or from a file. When apt has fetched its Release file, that must say Origin Debian and list arm64.
    """
    if environ.get(MIRROR_ENV, "").strip():
        return environ[MIRROR_ENV].strip()
    sources = apt_sources(root)
    for source in sources:
        suites = [s for s in source.suites if s in DEBIAN_CODENAMES | DEBIAN_GENERIC_SUITES]
        if "deb" not in source.types or "main" not in source.components or not suites:
            continue
        for uri in source.uris:
            if not uri.startswith(("http://", "https://", "file:/")):
                continue  # cdrom:, mirror+file:, tor+http: and the like are not for debootstrap
            release = _cached_release(root, uri, suites[0])
            if release is None and suites[0] in DEBIAN_CODENAMES:
                return uri.rstrip("/")
            if release is not None and _release_field(release, "Origin") == "Debian" \
                    and "arm64" in _release_field(release, "Architectures").split():
                return uri.rstrip("/")
    seen = "; ".join(sorted({f"{u} {' '.join(s.suites)}" for s in sources if "deb" in s.types for u in s.uris}))
    raise CheckError(
        f"no Debian archive that serves arm64 in this machine's apt sources ({root / 'etc/apt'}/sources.list, "
        f"sources.list.d/*.list, *.sources); found: {seen or 'none'}. An Ubuntu archive has no Debian suites; set "
        f"{MIRROR_ENV} (or --mirror) to a Debian mirror with arm64")


# ---------------------------------------------------------------------------------------------------------
# processes, cleaned up on any exit

_children: set = set()
_children_lock = threading.Lock()


def run(cmd, *, timeout: float, log: Path | None = None, env: dict | None = None, cwd=None):
    """Run a command, capture its output (also to ``log``), kill it on timeout. Returns (rc, stdout, stderr)."""
    process = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               errors="replace", env=env, cwd=cwd, start_new_session=True)
    with _children_lock:
        _children.add(process)
    try:
        out, err = process.communicate(timeout=timeout)
        rc = process.returncode
    except subprocess.TimeoutExpired:
        _kill(process)
        out, err = process.communicate()
        rc = None
    finally:
        with _children_lock:
            _children.discard(process)
    if log is not None:
        log.write_text(f"$ {' '.join(map(str, cmd))}\n# exit {rc}\n--- stdout\n{out}\n--- stderr\n{err}\n")
    return rc, out, err


def _kill(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


def kill_children() -> None:
    with _children_lock:
        for process in list(_children):
            _kill(process)


def _on_signal(signum, _frame):
    raise SystemExit(128 + signum)


# ---------------------------------------------------------------------------------------------------------
# binfmt / qemu

# A 132-byte static aarch64 ELF that exits with status 42 (movz x0, #42; movz x8, #93; svc #0).
_AARCH64_EXIT42 = (
    bytes.fromhex("7f454c46020101000000000000000000") + bytes.fromhex("0200b7000100000078004000000000004000000000000000")
    + bytes(8) + bytes.fromhex("00000000400038000100000000000000")
    + bytes.fromhex("0100000005000000") + bytes(8) + bytes.fromhex("0000400000000000") * 2
    + bytes.fromhex("8400000000000000") * 2 + bytes.fromhex("0000010000000000")
    + bytes.fromhex("400580d2a80b80d2010000d4")
)
BINFMT = Path("/proc/sys/fs/binfmt_misc")


def _can_run_aarch64() -> tuple:
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "exit42"
        probe.write_bytes(_AARCH64_EXIT42)
        probe.chmod(0o755)
        try:
            rc = subprocess.run([str(probe)], timeout=30, check=False).returncode
        except OSError as error:
            return False, error.strerror or str(error)
    return rc == 42, f"the probe exited with {rc}, expected 42"


def ensure_binfmt() -> str:
    """Make qemu-aarch64 handle aarch64 ELF files; return a short description, or raise CheckError."""
    ok, why = _can_run_aarch64()
    if ok:
        return "already enabled"
    if not (BINFMT / "register").exists():
        rc, _, err = run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT)], timeout=30)
        if rc != 0:
            raise CheckError(f"this machine cannot run aarch64 binaries: `mount -t binfmt_misc binfmt_misc {BINFMT}` "
                             f"failed: {err.strip().splitlines()[-1] if err.strip() else rc}")
    if shutil.which("update-binfmts"):
        run(["update-binfmts", "--enable", "qemu-aarch64"], timeout=60)
    if not (BINFMT / "qemu-aarch64").exists():
        qemu = next((p for p in ("/usr/libexec/qemu-binfmt/aarch64-binfmt-P", "/usr/bin/qemu-aarch64-static")
                     if Path(p).exists()), None)
        if qemu is None:
            raise CheckError("this machine cannot run aarch64 binaries: qemu-user-static is not installed "
                             "(run scripts/setup.sh)")
        flags = "PF" if qemu.endswith("-P") else "F"
        rule = (":qemu-aarch64:M::\\x7fELF\\x02\\x01\\x01\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02\\x00\\xb7"
                "\\x00:\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\x00\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xff\\xfe\\xff\\xff"
                f"\\xff:{qemu}:{flags}")
        try:
            (BINFMT / "register").write_text(rule)
        except OSError as error:
            raise CheckError(f"this machine cannot run aarch64 binaries: registering qemu-aarch64 in "
                             f"{BINFMT}/register failed: {error.strerror or error}") from None
    ok, why = _can_run_aarch64()
    if not ok:
        raise CheckError(f"this machine cannot run aarch64 binaries even with qemu-aarch64 registered: {why}")
    return "enabled now"


# ---------------------------------------------------------------------------------------------------------
# roots and mounts


def _mounts_under(path: Path) -> list:
    prefix = str(path.resolve())
    points = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        point = line.split()[1].encode().decode("unicode_escape")
        if point == prefix or point.startswith(prefix + "/"):
            points.append(point)
    return sorted(points, key=len, reverse=True)


def unmount_under(path: Path) -> None:
    for point in _mounts_under(path):
        if run(["umount", point], timeout=60)[0] != 0:
            run(["umount", "-l", point], timeout=60)


def ensure_root(cache: Path, suite: str, mirror: str, log_dir: Path, rebuild: bool = False) -> tuple:
    """The cached root of ``suite`` (made by debootstrap when missing). Returns (path, seconds spent making it)."""
    root = cache / suite
    stamp = root / ".cbnet-tl-root"
    wanted = json.dumps({"suite": suite, "arch": "arm64", "variant": "minbase", "include": ROOT_PACKAGES})
    if not rebuild and stamp.is_file() and stamp.read_text() == wanted:
        return root, 0.0
    start = time.monotonic()
    partial = cache / f"{suite}.partial"
    for stale in (partial, root):
        if stale.exists():
            unmount_under(stale)
            if _mounts_under(stale):
                raise CheckError(f"cannot rebuild {stale}: something is still mounted inside it")
            shutil.rmtree(stale)
    rc, _, err = run(["debootstrap", "--arch=arm64", "--variant=minbase", f"--include={','.join(ROOT_PACKAGES)}",
                      suite, partial, mirror], timeout=3600, log=log_dir / f"debootstrap-{suite}.log")
    if rc != 0:
        last = err.strip().splitlines()[-1] if err.strip() else f"exit {rc}"
        raise CheckError(f"debootstrap of {suite} arm64 failed ({last}); see {log_dir}/debootstrap-{suite}.log")
    (partial / stamp.name).write_text(wanted)
    partial.rename(root)
    return root, time.monotonic() - start


class RootMounts:
    """/proc, /dev, the pip cache and a minimal /sys mounted into a root; always unmounted on exit.

    /sys is a tmpfs holding only ``devices/system/cpu/{possible,present}``, as a board exposes them. The
    host's real /sys describes x86 CPUs: under qemu it makes ai-edge-litert 2.3.0's cpuinfo crash (SIGSEGV in
    every model), and with no /sys at all cpuinfo fails and XNNPACK is silently not used, so neither would
    test what runs on the board.
    """

    def __init__(self, root: Path, pip_cache: Path):
        self.root, self.pip_cache, self.points = root, pip_cache, []

    def __enter__(self):
        unmount_under(self.root)  # left by a killed earlier run
        plan = [(["mount", "-t", "proc", "proc"], self.root / "proc"),
                (["mount", "-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs"], self.root / "sys"),
                (["mount", "--bind", "/dev"], self.root / "dev"),
                (["mount", "--bind", str(self.pip_cache)], self.root / "root/.cache/pip")]
        try:
            for cmd, point in plan:
                point.mkdir(parents=True, exist_ok=True)
                rc, _, err = run([*cmd, point], timeout=60)
                if rc != 0:
                    raise CheckError(f"`{' '.join(cmd)} {point}` failed: {err.strip()}")
                self.points.append(point)
            cpu = self.root / "sys/devices/system/cpu"
            cpu.mkdir(parents=True)
            for name in ("possible", "present", "online"):
                count = max(1, os.cpu_count() or 1)
                (cpu / name).write_text("0\n" if count == 1 else f"0-{count - 1}\n")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        for point in reversed(self.points):
            if run(["umount", point], timeout=60)[0] != 0:
                run(["umount", "-l", point], timeout=60)
        self.points = []
        return False


def _host_ca_bundle() -> Path | None:
    """The CA bundle this host's pip trusts (needed behind TLS-inspecting proxies), to copy into the roots."""
    candidates = [os.environ.get(k) for k in ("PIP_CERT", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE")]
    candidates += [ssl.get_default_verify_paths().cafile, "/etc/ssl/certs/ca-certificates.crt"]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


def chroot_env(has_ca: bool) -> dict:
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/root",
           "LANG": "C.UTF-8", "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1",
           "PIP_ROOT_USER_ACTION": "ignore", "PIP_DEFAULT_TIMEOUT": "120"}
    if has_ca:
        env["PIP_CERT"] = f"{IN_ROOT}/ca-certificates.crt"
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy"):
        if os.environ.get(key):
            env[key] = os.environ[key]
    return env


# ---------------------------------------------------------------------------------------------------------
# one combination


_VERSIONS = """import json, platform, importlib.metadata as md
def v(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None
print(json.dumps({"python": platform.python_version(), "machine": platform.machine(), "numpy": v("numpy"),
                  "pillow": v("pillow"), "ai-edge-litert": v("ai-edge-litert"), "tflite-runtime": v("tflite-runtime")}))
"""


def _classify_rc(rc, err: str) -> tuple:
    """(status, detail) of a finished run.py command."""
    lines = [line for line in err.strip().splitlines() if line.strip()]
    if rc is None:
        return "timeout", "timed out"
    if rc < 0 or rc >= 128:
        signum = -rc if rc < 0 else rc - 128
        with contextlib.suppress(ValueError):
            return "crash", f"killed by {signal.Signals(signum).name}"
        return "crash", f"exit {rc}"
    if any(line.startswith("Traceback") for line in lines):  # even beside exit 0 ("Exception ignored in ...")
        return "fail", f"traceback on stderr: {lines[-1][:160]}"
    if rc == 0:
        return "ok", ""
    errors = [line for line in lines if line.startswith("error:")]
    if rc == 1 and len(errors) == 1 and not any("Traceback" in line for line in lines):
        return "refused", errors[0]
    return "fail", (lines[-1] if lines else f"exit {rc}")[:200]


def requirements_for(combo: Combo, bundle: Path) -> str:
    shipped = (bundle / "requirements.txt").read_text()
    if combo.requirements == "bundle":
        return shipped
    kept = [line for line in shipped.splitlines()
            if line.strip() and not line.lstrip().startswith("#") and not line.lower().startswith("ai-edge-litert")]
    return "\n".join([*kept, *TFLITE_RUNTIME_REQUIREMENTS]) + "\n"


def run_combo(combo: Combo, root: Path, bundle: Path, env: dict, log_dir: Path) -> Outcome:
    outcome = Outcome(combo)
    env = {**env, "QEMU_CPU": env.get("QEMU_CPU") or combo.cpu}  # read by qemu-aarch64 (binfmt) in the chroot
    outcome.cpu = env["QEMU_CPU"]
    start = time.monotonic()
    host_dir = root / IN_ROOT.lstrip("/") / combo.name
    in_root = f"{IN_ROOT}/{combo.name}"
    if host_dir.exists():
        shutil.rmtree(host_dir)
    shutil.copytree(bundle, host_dir / "bundle", symlinks=True)
    (host_dir / "requirements.txt").write_text(requirements_for(combo, bundle))
    outcome.debian_version = (root / "etc/debian_version").read_text().strip()
    samples = sorted(p for p in (bundle / "samples").iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))

    def chroot(name: str, argv: list, timeout: float, cwd: str = f"{in_root}/bundle"):
        step = Step(name)
        t0 = time.monotonic()
        script = f"cd {cwd} && exec " + " ".join(_quote(a) for a in argv)
        rc, out, err = run(["chroot", root, "/bin/sh", "-c", script], timeout=timeout, env=env,
                           log=log_dir / f"{combo.name}-{name}.log")
        step.seconds = time.monotonic() - t0
        with open(log_dir / f"{combo.name}-{name}.log", "a") as log:
            log.write(f"# {step.seconds:.1f} s\n")
        step.status, step.detail = _classify_rc(rc, err)
        outcome.steps.append(step)
        return step, out, err

    venv_py = f"{in_root}/venv/bin/python"
    step, _, _ = chroot("venv", ["python3", "-m", "venv", f"{in_root}/venv"], RUN_TIMEOUT, cwd=in_root)
    if step.status == "ok":
        step, _, _ = chroot("pip", [venv_py, "-m", "pip", "install", "-q", "-r", f"{in_root}/requirements.txt"],
                            PIP_TIMEOUT, cwd=in_root)
    if step.status == "ok":
        step, out, _ = chroot("versions", [venv_py, "-c", _VERSIONS], RUN_TIMEOUT, cwd=in_root)
        with contextlib.suppress(ValueError, IndexError):
            outcome.versions = json.loads(out.strip().splitlines()[-1])
        if outcome.versions.get("machine") != "aarch64":
            step.status, step.detail = "fail", f"python reports machine {outcome.versions.get('machine')!r}"
    if step.status == "ok":
        step, out, err = chroot("selftest", [venv_py, "run.py", "selftest"], RUN_TIMEOUT)
        outcome.xnnpack = "XNNPACK delegate" in err
        if step.status == "ok":
            try:
                report = json.loads(out)
                if report.get("passed") is not True:
                    step.status, step.detail = "fail", "selftest did not report passed"
                else:
                    step.detail = ", ".join(f"{k} {v['agreement']:.0%}" for k, v in report["pipelines"].items())
            except (ValueError, KeyError, TypeError):
                step.status, step.detail = "fail", "selftest printed no JSON report"
        # classify one image at a time also when the self-test refused, to show what still works
        step, out, err = chroot("classify", [venv_py, "run.py", "classify", "samples/", *combo.classify_args],
                                RUN_TIMEOUT)
        if step.status == "ok":
            rows = [line for line in out.splitlines() if line.count("\t") >= 4]
            if len(rows) != len(samples):
                step.status, step.detail = "fail", f"{len(rows)} results for {len(samples)} samples"
            elif combo.expect_stderr and combo.expect_stderr not in err:
                step.status, step.detail = "fail", f"no {combo.expect_stderr!r} warning on stderr"
            else:
                warning = next((line for line in err.splitlines() if line.startswith("warning:")), "")
                step.detail = f"{len(rows)} images" + (f"; {warning[:90]}..." if warning else "")
    if combo.parity and step.status == "ok":
        step = _parity_step(chroot, host_dir, in_root, venv_py, log_dir / f"{combo.name}-parity-host.log")
        outcome.steps.append(step)
    statuses = {s.status for s in outcome.steps}
    if statuses == {"ok"}:
        outcome.result = "pass"
    elif combo.may_refuse and statuses <= {"ok", "refused"}:
        outcome.result = "refused"
    else:
        outcome.result = "FAIL"
    outcome.seconds = time.monotonic() - start
    shutil.rmtree(host_dir, ignore_errors=True)
    return outcome


def _digests(stdout: str) -> dict:
    """file name -> (input sha256, label) from ``run.py classify --json --input-sha256``."""
    try:
        results = json.loads(stdout)["results"]
        return {Path(r["file"]).name: (r["input_sha256"], r["label"]) for r in results}
    except (ValueError, KeyError, TypeError):
        return {}


def _parity_step(chroot, host_dir: Path, in_root: str, venv_py: str, host_log: Path) -> "Step":
    """Images of every mode users have (tests/edge_images.py) classified here and in the root: the model
    input bytes (sha256) and the classes must be the same."""
    edge = host_dir / "edge"
    python = str(REPO / ".venv" / "bin" / "python")
    rc, _, err = run([python, str(REPO / "tests" / "edge_images.py"), str(edge)], timeout=RUN_TIMEOUT, log=host_log)
    if rc != 0:
        return Step("parity", "fail", f"could not make the test images: {err.strip()[-120:]}")
    rc, host_out, err = run([python, str(host_dir / "bundle" / "run.py"), "classify", str(edge), "--json",
                             "--input-sha256"], timeout=RUN_TIMEOUT, log=host_log)
    host = _digests(host_out)
    if rc != 0 or not host:
        return Step("parity", "fail", f"host classify failed: {err.strip()[-120:]}")
    step, out, _ = chroot("parity", [venv_py, "run.py", "classify", f"{in_root}/edge", "--json", "--input-sha256"],
                          RUN_TIMEOUT)
    if step.status != "ok":
        return step
    device = _digests(out)
    differ = sorted(name for name in host if device.get(name) != host[name])
    if differ or set(device) != set(host):
        step.status, step.detail = "fail", f"input bytes or class differ from the host's for {differ or 'the file set'}"
    else:
        step.detail = f"{len(host)} images of every mode: same input bytes and classes as the host"
    return step


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(str(arg))


# ---------------------------------------------------------------------------------------------------------
# report


def interpreter_of(versions: dict) -> tuple:
    for package in ("ai-edge-litert", "tflite-runtime"):
        if versions.get(package):
            return package, versions[package]
    return "?", "?"


def table(outcomes: list) -> str:
    header = ("combination", "base", "cpu", "python", "interpreter", "numpy", "selftest", "classify", "result", "time")
    rows = [header]
    for o in outcomes:
        package, version = interpreter_of(o.versions)
        steps = {s.name: s for s in o.steps}
        failed = next((s for s in o.steps if s.status not in ("ok",)), None)

        def cell(name, steps=steps):
            s = steps.get(name)
            return s.status if s else "-"

        rows.append((o.combo.name, f"{o.combo.suite} {o.debian_version}", o.cpu, o.versions.get("python", "?"),
                     f"{package} {version}", o.versions.get("numpy") or "?", cell("selftest"), cell("classify"),
                     o.result if not failed else f"{o.result} ({failed.name}: {failed.status})",
                     f"{o.seconds:.0f} s"))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = [f"  {o.combo.name} {s.name}: {s.detail}" for o in outcomes for s in o.steps
             if s.detail and (s.status != "ok" or s.name in ("classify",) and "warning" in s.detail)]
    return "\n".join(lines + notes)


def device_checks(outcomes: list, checked_at: str, counts: list = ()) -> dict:
    combos = []
    for o in outcomes:
        package, version = interpreter_of(o.versions)
        combos.append({
            "name": o.combo.name, "suite": o.combo.suite, "base": SUITES[o.combo.suite],
            "debian_version": o.debian_version, "python": o.versions.get("python"), "interpreter": package,
            "interpreter_version": version, "numpy": o.versions.get("numpy"), "pillow": o.versions.get("pillow"),
            "qemu_cpu": o.cpu, "xnnpack_delegate_reported": o.xnnpack, "target": o.combo.target, "commands": ["run.py selftest",
                                                   " ".join(["run.py classify samples/", *o.combo.classify_args])]
            + (["run.py classify EDGE_IMAGES --json --input-sha256 (same bytes and classes as on the host)"]
               if o.combo.parity else []),
            "result": o.result,
            "note": "; ".join(f"{s.name}: {s.detail}" for s in o.steps if s.status != "ok" and s.detail)
                    or ("no Edge TPU under emulation: the delegate failed to load and the CPU fallback ran, "
                        "with its warning" if o.combo.expect_stderr and o.result == "pass" else ""),
        })
    return {
        "checked_at": checked_at,
        "method": "Debian arm64 roots (debootstrap --variant=minbase) run under qemu-user-static aarch64 emulation "
                  "(binfmt) of the board's CPU model on an x86-64 host; each bundle's requirements.txt installed from "
                  "PyPI as aarch64 wheels. Not a physical board.",
        "script": "scripts/arm64_check.py",
        "combos": combos,
        "instruction_counts": list(counts),
    }


# ---------------------------------------------------------------------------------------------------------


def _stamps(folder: Path) -> Path:
    if not STAMPS.is_dir():
        raise CheckError(f"{STAMPS} is missing: apt-get install tuxpaint-stamps-default (scripts/setup.sh --tests)")
    for category in STAMP_CLASSES:
        target = folder / category.split("/")[-1]
        target.mkdir(parents=True, exist_ok=True)
        for source in sorted((STAMPS / category).rglob("*.png"))[:9]:
            (target / source.name).unlink(missing_ok=True)
            (target / source.name).symlink_to(source)
    return folder


def _load_counts():
    spec = importlib.util.spec_from_file_location("arm64_counts", Path(__file__).with_name("arm64_counts.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


COUNTS = _load_counts()


def count_instructions(cbnet_tl: Path, bundles: dict, root: Path | None, log_dir: Path) -> tuple:
    """(records, problems): every pipeline of each bundle counted on its target's core by `cbnet-tl bench --arm64`."""
    records, found = [], []
    for target, bundle in bundles.items():
        start = time.monotonic()
        rc, out, err = run(COUNTS.count_command(cbnet_tl, bundle, root), timeout=COUNTS.COUNT_TIMEOUT,
                           log=log_dir / f"count-{target}.log")
        try:
            report = json.loads(out)
        except ValueError:
            report = None
        if rc != 0 or not isinstance(report, dict) or "arm64" not in report:
            last = err.strip().splitlines()[-1] if err.strip() else f"exit {rc}"
            found.append(f"{target}: cbnet-tl bench --arm64 failed ({last}); see {log_dir}/count-{target}.log")
            continue
        manifest = json.loads((bundle / "manifest.json").read_text())
        found += [f"{target}: {problem}" for problem in COUNTS.problems(report, manifest)]
        records.append(COUNTS.record(target, report))
        print(f"arm64 check: counted the {target} bundle's pipelines on {report['arm64_setup']['cpu']} in "
              f"{time.monotonic() - start:.0f} s", flush=True)
    return records, found


def build_bundle(cbnet_tl: Path, out: Path, target: str, log_dir: Path) -> Path:
    if target == "rpi4-rgb":
        args = ["--data-dir", str(_stamps(out.parent / "stamps")), *RGB_BUILD_ARGS, "--target", "rpi4"]
    else:
        args = [*BUILD_ARGS, "--target", target]
    rc, _, err = run([cbnet_tl, "build", *args, "--out", out], timeout=1800, log=log_dir / f"build-{target}.log")
    bundle = out / "bundle"
    if rc != 0 or not (bundle / "run.py").is_file():
        last = err.strip().splitlines()[-1] if err.strip() else f"exit {rc}"
        raise CheckError(f"cbnet-tl build --target {target} failed ({last}); see {log_dir}/build-{target}.log")
    return bundle


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help=f"roots and pip cache ({DEFAULT_CACHE})")
    parser.add_argument("--mirror", help=f"Debian mirror for debootstrap (default: ${MIRROR_ENV}, else the "
                        "Debian archive in this machine's apt sources)")
    parser.add_argument("--cbnet-tl", type=Path, default=REPO / ".venv" / "bin" / "cbnet-tl")
    parser.add_argument("--bundle", type=Path, help="use this rpi4 bundle instead of building one")
    parser.add_argument("--coral-bundle", type=Path, help="use this coral-usb bundle instead of building one")
    parser.add_argument("--rgb-bundle", type=Path, help="use this RGB rpi4 bundle instead of building one")
    parser.add_argument("--rpi5-bundle", type=Path, help="use this rpi5 bundle instead of building one")
    parser.add_argument("--no-count", action="store_true", help="skip the instruction counts (bench --arm64)")
    parser.add_argument("--only", nargs="+", choices=[c.name for c in COMBOS], help="run only these combinations")
    parser.add_argument("--cpu", help="qemu CPU model for every combination (default: each target board's, cortex-a72 or cortex-a76)")
    parser.add_argument("--jobs", type=int, default=2, help="combinations run at once (default 2)")
    parser.add_argument("--json-out", type=Path, default=REPO / "toolchain" / "data" / "device_checks.json",
                        help="where to write the results for bundle READMEs")
    parser.add_argument("--no-json", action="store_true", help="do not write --json-out")
    parser.add_argument("--rebuild-roots", action="store_true", help="debootstrap the roots again")
    parser.add_argument("--keep-logs", type=Path, help="copy every command's log here")
    args = parser.parse_args(argv)
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _on_signal)
    combos = [c for c in COMBOS if not args.only or c.name in args.only]
    started = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="cbnet-arm64-"))
    log_dir = work / "logs"
    log_dir.mkdir()
    try:
        args.mirror = args.mirror or debian_mirror()
        if os.geteuid() != 0:
            raise CheckError("needs root (debootstrap, mount, chroot): run it with sudo")
        missing = [t for t in ("debootstrap", "chroot", "mount") if not shutil.which(t)]
        if missing:
            raise CheckError(f"missing {', '.join(missing)}: run scripts/setup.sh")
        binfmt = ensure_binfmt()
        args.cache_dir.mkdir(parents=True, exist_ok=True)
        lock = open(args.cache_dir / ".lock", "w")  # noqa: SIM115 (held until the process exits)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CheckError(f"another arm64 check is using {args.cache_dir}") from None
        pip_cache = args.cache_dir / "pip"
        pip_cache.mkdir(exist_ok=True)
        print(f"arm64 check: qemu-aarch64 binfmt {binfmt}; cache {args.cache_dir}; logs {log_dir}", flush=True)

        suites = sorted({c.suite for c in combos})
        targets = sorted({c.target for c in combos})
        given = {"rpi4": args.bundle, "coral-usb": args.coral_bundle, "rpi4-rgb": args.rgb_bundle,
                 "rpi5": args.rpi5_bundle}
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            root_jobs = {s: pool.submit(ensure_root, args.cache_dir, s, args.mirror, log_dir, args.rebuild_roots)
                         for s in suites}
            bundle_jobs = {t: pool.submit(build_bundle, args.cbnet_tl, work / t, t, log_dir)
                           for t in targets if not given.get(t)}
            roots, made = {}, {}
            for suite, job in root_jobs.items():
                roots[suite], made[suite] = job.result()
            bundles = {t: (given[t].resolve() if given.get(t) else bundle_jobs[t].result()) for t in targets}
        prepared = time.monotonic() - started
        made_note = ", ".join(f"{s} made in {t:.0f} s" for s, t in made.items() if t) or "roots cached"
        print(f"arm64 check: prepared in {prepared:.0f} s ({made_note})", flush=True)

        ca = _host_ca_bundle()
        env = chroot_env(ca is not None)
        if args.cpu:
            env["QEMU_CPU"] = args.cpu
        with contextlib.ExitStack() as stack:
            for suite in suites:
                root = roots[suite]
                shutil.rmtree(root / IN_ROOT.lstrip("/"), ignore_errors=True)
                (root / IN_ROOT.lstrip("/")).mkdir(parents=True)
                stack.callback(shutil.rmtree, root / IN_ROOT.lstrip("/"), True)
                if ca is not None:
                    shutil.copy(ca, root / IN_ROOT.lstrip("/") / "ca-certificates.crt")
                if Path("/etc/resolv.conf").exists():
                    (root / "etc/resolv.conf").unlink(missing_ok=True)
                    shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
                stack.enter_context(RootMounts(root, pip_cache))
            stack.callback(kill_children)
            with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
                jobs = [pool.submit(run_combo, c, roots[c.suite], bundles[c.target], env, log_dir) for c in combos]
                outcomes = [job.result() for job in jobs]
        counted = {t: bundles[t] for t in COUNTS.COUNT_TARGETS if t in bundles and COUNTS.COUNT_SUITE in roots}
        records, count_problems = ([], []) if args.no_count else count_instructions(
            args.cbnet_tl, counted, roots.get(COUNTS.COUNT_SUITE), log_dir)
        total = time.monotonic() - started
        checked_at = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d")
        print(table(outcomes))
        if records:
            print(COUNTS.table(records, COUNTS.previous_counts(args.json_out)))
        for problem in count_problems:
            print(f"arm64 check: instruction count: {problem}")
        passed = all(o.result in ("pass", "refused") for o in outcomes) and not count_problems
        print(f"arm64 check: {'passed' if passed else 'FAILED'} in {total:.0f} s "
              f"({'cold: ' + made_note if any(made.values()) else 'warm: roots cached'})")
        if not args.no_json and not args.only:
            args.json_out.parent.mkdir(parents=True, exist_ok=True)
            args.json_out.write_text(json.dumps(device_checks(outcomes, checked_at, records), indent=2) + "\n")
            print(f"arm64 check: wrote {args.json_out}")
        if passed:
            shutil.rmtree(work / "rpi4", ignore_errors=True)
            shutil.rmtree(work / "coral-usb", ignore_errors=True)
            shutil.rmtree(work / "rpi4-rgb", ignore_errors=True)
            shutil.rmtree(work / "rpi5", ignore_errors=True)
        else:
            print(f"arm64 check: logs of every command are in {log_dir}", file=sys.stderr)
        return 0 if passed else 1
    except CheckError as error:
        print(f"arm64 check: {error} (logs: {log_dir})", file=sys.stderr)
        return 1
    finally:
        kill_children()
        if args.keep_logs:
            shutil.copytree(log_dir, args.keep_logs, dirs_exist_ok=True)


if __name__ == "__main__":
    sys.exit(main())
