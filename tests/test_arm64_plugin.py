"""The counting plugin of `bench --arm64` (toolchain/data/insncount.c) counts exactly what an aarch64 program runs.

Built from source here and loaded by Debian's dynamic qemu-aarch64 (scripts/setup.sh --tests installs qemu-user
and gcc) running two tiny static aarch64 programs, so no arm64 root and no root user are needed.
"""

from __future__ import annotations

import struct
import subprocess
from pathlib import Path

from cbnet_tl.toolchain.arm64.setup import QEMU, build_plugin

MOVZ_X0_42, MOVZ_X8_93, SVC_0 = 0xD2800540, 0xD2800BA8, 0xD4000001  # exit(42)
SUBS_X1_1, BNE_BACK_1 = 0xF1000421, 0x54FFFFE1  # x1 -= 1; loop while x1 != 0
SUBS_X3_1 = 0xF1000463
# the mark arm64_probe.py makes: lseek(-1, 0x4D41524B, SEEK_SET)
MARK = (0x92800000, 0xD2800000 | (0x524B << 5) | 1, 0xF2A00000 | (0x4D41 << 5) | 1, 0xD2800002, 0xD28007C8, SVC_0)


def _movz_x1(value: int) -> int:
    return 0xD2800000 | (value << 5) | 1


def aarch64_program(*instructions: int) -> bytes:
    """A static aarch64 ELF whose one segment is the ELF header, one program header and ``instructions``."""
    code = b"".join(struct.pack("<I", i) for i in instructions)
    base, header_size = 0x400000, 64 + 56
    size = header_size + len(code)
    elf = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    elf += struct.pack("<HHIQQQIHHHHHH", 2, 0xB7, 1, base + header_size, 64, 0, 0, 64, 56, 1, 0, 0, 0)
    elf += struct.pack("<IIQQQQQQ", 1, 5, 0, base, base, size, size, 0x10000)
    return elf + code


def count(tmp_path: Path, program: bytes, marks: bool = False) -> tuple:
    """(exit status, instructions counted[, the count at each mark]) of ``program`` under qemu-aarch64."""
    plugin = build_plugin(tmp_path / "insncount.so")
    binary, out = tmp_path / "program", tmp_path / "count"
    binary.write_bytes(program)
    binary.chmod(0o755)
    result = subprocess.run([str(QEMU), "-cpu", "cortex-a72", "-plugin", f"{plugin},out={out}", str(binary)],
                            capture_output=True, text=True, timeout=60, check=False)
    total, *at_marks = [int(line) for line in out.read_text().split()]
    return (result.returncode, total, at_marks) if marks else (result.returncode, total)


def test_the_plugin_counts_every_instruction_executed(tmp_path):
    assert count(tmp_path, aarch64_program(MOVZ_X0_42, MOVZ_X8_93, SVC_0)) == (42, 3)
    # one movz, then 1,000 rounds of subs + b.ne, then the three of exit: 2,004
    loop = aarch64_program(_movz_x1(1000), SUBS_X1_1, BNE_BACK_1, MOVZ_X0_42, MOVZ_X8_93, SVC_0)
    assert count(tmp_path, loop) == (42, 1 + 2 * 1000 + 3)
    longer = aarch64_program(_movz_x1(4000), SUBS_X1_1, BNE_BACK_1, MOVZ_X0_42, MOVZ_X8_93, SVC_0)
    assert count(tmp_path, longer) == (42, 1 + 2 * 4000 + 3)


def test_marks_count_what_runs_between_them(tmp_path):
    def _movz_x3(value: int) -> int:
        return 0xD2800000 | (value << 5) | 3

    program = aarch64_program(*MARK, _movz_x3(1000), SUBS_X3_1, BNE_BACK_1, *MARK, MOVZ_X0_42, MOVZ_X8_93, SVC_0)
    status, total, marks = count(tmp_path, program, marks=True)
    assert status == 42 and marks == [6, 6 + 1 + 2 * 1000 + 6] and total == marks[1] + 3
    # other lseek calls are no marks: the mark's offset changed
    other = aarch64_program(0x92800000, 0xD2800021, 0xD2800002, 0xD28007C8, SVC_0, MOVZ_X0_42, MOVZ_X8_93, SVC_0)
    assert count(tmp_path, other, marks=True) == (42, 8, [])


def test_a_bad_plugin_argument_stops_qemu(tmp_path):
    plugin = build_plugin(tmp_path / "insncount.so")
    binary = tmp_path / "program"
    binary.write_bytes(aarch64_program(MOVZ_X0_42, MOVZ_X8_93, SVC_0))
    binary.chmod(0o755)
    result = subprocess.run([str(QEMU), "-plugin", f"{plugin},outfile=x", str(binary)], capture_output=True,
                            text=True, timeout=60, check=False)
    assert result.returncode != 0 and "insncount" in result.stderr + result.stdout
