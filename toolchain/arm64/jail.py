"""Run one command in an arm64 root with the /proc, /dev and minimal /sys the arm64 check gives it.

    unshare --mount --propagation private python -m cbnet_tl.toolchain.arm64.jail ROOT CWD [--bind SRC:DEST]... -- ARGV...

Started by ``toolchain/arm64/cost.py`` in a private mount namespace, so every mount here ends with the
command, even when it is killed. /sys is a tmpfs holding only ``devices/system/cpu/{possible,present,online}``
(four cores, as on a Raspberry Pi 4 or 5): the host's real /sys describes x86 CPUs and makes the interpreter's
CPU detection crash under qemu (see scripts/arm64_check.py). A bind goes after /proc is mounted, so a file can
cover one of its files (the count puts the emulated core's ``/proc/cpuinfo`` over the host's, which qemu 7.2
passes through). Needs root. Only the standard library.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

BOARD_CPUS = "0-3\n"


def _mount(*args: str) -> None:
    result = subprocess.run(["mount", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"arm64 jail: `mount {' '.join(args)}` failed: {result.stderr.strip()}")


def enter(root: Path, binds: list) -> None:
    """Mount /proc, /dev, a minimal /sys and ``binds`` into ``root``, then chroot into it."""
    _mount("-t", "proc", "proc", str(root / "proc"))
    _mount("-t", "tmpfs", "-o", "size=1m,mode=0755", "tmpfs", str(root / "sys"))
    _mount("--bind", "/dev", str(root / "dev"))
    for source, dest in binds:  # a directory onto a directory (made if missing), a file onto a file that exists
        if Path(source).is_dir():
            (root / dest.lstrip("/")).mkdir(parents=True, exist_ok=True)
        _mount("--bind", source, str(root / dest.lstrip("/")))
    cpu = root / "sys/devices/system/cpu"
    cpu.mkdir(parents=True)
    for name in ("possible", "present", "online"):
        (cpu / name).write_text(BOARD_CPUS)
    os.chroot(root)


def main(argv) -> int:
    split = argv.index("--")
    head, command = argv[:split], argv[split + 1 :]
    root, cwd, rest = Path(head[0]), head[1], head[2:]
    binds = [tuple(value.split(":", 1)) for flag, value in zip(rest[::2], rest[1::2]) if flag == "--bind"]
    enter(root, binds)
    os.chdir(cwd)
    os.execve(command[0], command, dict(os.environ))
    return 127  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
