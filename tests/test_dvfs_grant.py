"""``run.py dvfs-grant`` (the unit's root ``ExecStartPre=+``) on a fake cpufreq tree, with the user's own group: the
files DVFS writes, and only those, get the group and group write; everything else stays as it was. A group that does
not exist is one line and exit 1, with nothing changed."""

from __future__ import annotations

import grp
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cbnet_tl.runtime.dvfs.cpufreq import WRITTEN_FILES
from test_cpufreq import make_tree

OWN_GROUP = grp.getgrgid(os.getgid())


def tree_state(root: Path) -> dict:
    """{path: (mode, uid, gid, content)} of every file and directory under ``root``."""
    return {str(p.relative_to(root)): (stat.S_IMODE(p.lstat().st_mode), p.lstat().st_uid, p.lstat().st_gid,
                                       p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.fixture
def tree(tmp_path) -> Path:
    """Two policies, like a big.LITTLE board; policy4 without ``scaling_setspeed`` (a driver without userspace).
    Every file 0644; as root, every file first given another group, so that a grant that changed no group fails."""
    root = tmp_path / "sysfs"
    make_tree(root, policy="policy0")
    (make_tree(root, policy="policy4") / "scaling_setspeed").unlink()
    other = next((g.gr_gid for g in grp.getgrall() if g.gr_gid != OWN_GROUP.gr_gid), None)
    for path in root.rglob("*"):
        if path.is_file():
            path.chmod(0o644)
            if os.geteuid() == 0 and other is not None:
                os.chown(path, -1, other)
    return root


def grant(bundle: Path, group: str, root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(bundle / "run.py"), "dvfs-grant", "--group", group,
                           "--sysfs-root", str(root)], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=120)


def test_grant_gives_the_group_write_on_exactly_the_written_files(tiny_bundle, tree):
    before = tree_state(tree)
    done = grant(tiny_bundle, OWN_GROUP.gr_name, tree)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert done.stdout == f"group {OWN_GROUP.gr_name} may write 7 cpufreq files\n"  # 4 + 3 (no setspeed in policy4)
    after = tree_state(tree)
    assert after.keys() == before.keys()
    granted = {f"sys/devices/system/cpu/cpufreq/{policy}/{name}" for policy in ("policy0", "policy4")
               for name in WRITTEN_FILES} & set(before)
    assert len(granted) == 7
    for path, (mode, uid, gid, content) in before.items():
        if path in granted:
            assert after[path] == (mode | 0o020, uid, OWN_GROUP.gr_gid, content), path
        else:
            assert after[path] == (mode, uid, gid, content), path  # read-only files, directories: untouched


def test_a_group_that_does_not_exist_is_one_line(tiny_bundle, tree):
    before = tree_state(tree)
    done = grant(tiny_bundle, "no-such-group-cbnet", tree)
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr == ("error: Expected an existing group. Received: --group 'no-such-group-cbnet'. Create it with "
                           "the service's user (sudo useradd --system --user-group no-such-group-cbnet), or name "
                           "another\n")
    assert tree_state(tree) == before
