"""An inbox on one filesystem and done/ and failed/ on another (two tmpfs mounts): ``os.rename`` fails with EXDEV and
``inbox._move`` copies to a hidden name beside the destination, renames it into place, then unlinks the input. Every
input ends in done/ or failed/ with its own bytes, once, and nothing half-written is left, even after a crash in the
middle of a copy."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

import cbnet_tl.runtime.inbox as inbox_module
from cbnet_tl.runtime.api import open_pipeline
from cbnet_tl.runtime.inbox import InboxConfig, watch_inbox


def _shared_memory_pair(tmp_path):
    """(a folder on /dev/shm, one under tmp_path) when they are two filesystems, else None: no mount needed."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        return None
    return Path(tempfile.mkdtemp(prefix="cbnet-inbox-", dir=shm)), tmp_path / "done-fs"


@pytest.fixture
def two_filesystems(tmp_path):
    """(inbox side, done side) on two filesystems: two tmpfs mounts (unmounted afterwards), or, where nothing can be
    mounted, /dev/shm and the test's folder. A machine with neither fails here: the test needs two filesystems."""
    mounted, made = [], None
    try:
        for name in ("inbox-fs", "done-fs"):
            folder = tmp_path / name
            folder.mkdir()
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(folder)],
                                  capture_output=True, text=True) if shutil.which("mount") else None
            if done is None or done.returncode != 0:
                break
            mounted.append(folder)
        if len(mounted) == 2:
            sides = tuple(mounted)
        else:
            made = _shared_memory_pair(tmp_path)
            if made is None:
                pytest.fail("two filesystems cannot be had here: no tmpfs mount, and /dev/shm is on the test's own")
            made[1].mkdir(exist_ok=True)
            sides = made
        assert os.stat(sides[0]).st_dev != os.stat(sides[1]).st_dev
        yield sides
    finally:
        for folder in reversed(mounted):
            subprocess.run(["umount", str(folder)], check=True)
        if made is not None:
            shutil.rmtree(made[0], ignore_errors=True)


def _config(inbox_fs, done_fs) -> InboxConfig:
    config = InboxConfig(inbox_fs / "inbox", done_fs / "outbox", done=done_fs / "done", failed=done_fs / "failed",
                         state_dir=done_fs / "state", settle_seconds=0.05, poll_seconds=0.02)
    config.inbox.mkdir()
    return config


def _leftovers(*folders) -> list:
    return [str(p) for folder in folders if folder.exists() for p in folder.rglob(".*")]


def test_inputs_cross_filesystems_whole(tiny_bundle, samples_dir, two_filesystems):
    config = _config(*two_filesystems)
    probe = config.inbox / "probe"
    probe.write_bytes(b"x")
    with pytest.raises(OSError) as raised:
        os.rename(probe, config.done.parent / "probe")
    assert raised.value.errno == errno.EXDEV  # what sends _move down its copy path
    probe.unlink()
    image = (samples_dir / "mnist_00_7.png").read_bytes()
    (config.inbox / "seven.png").write_bytes(image)
    (config.inbox / "notes.png").write_text("not an image")
    (config.inbox / "folder").mkdir()
    (config.inbox / "folder" / "inside.png").write_bytes(image)
    os.utime(config.inbox / "seven.png", (1_000_000_000, 1_000_000_000))
    assert watch_inbox(open_pipeline(tiny_bundle, "cbnet"), config, drain=True, max_images=3) == 3  # no endless loop
    assert list(config.inbox.iterdir()) == []
    assert (config.done / "seven.png").read_bytes() == image
    assert (config.done / "seven.png").stat().st_mtime == 1_000_000_000  # copied with its metadata
    assert (config.failed / "notes.png").read_text() == "not an image"
    assert (config.failed / "folder" / "inside.png").read_bytes() == image  # a folder moves whole
    assert sorted(p.name for p in config.outbox.iterdir()) == ["folder.json", "notes.png.json", "seven.png.json"]
    assert _leftovers(config.done, config.failed, config.outbox) == []


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_a_crash_mid_copy_leaves_the_input_and_a_restart_finishes_it(tiny_bundle, samples_dir, two_filesystems,
                                                                     monkeypatch, kind):
    """The copy dies halfway (a full disk, a kill): the input is still whole in the inbox and its destination has
    no entry of its name; the restart moves it (its result already written: not classified again) and leaves no
    staging copy. A folder (an input that fails) goes to failed/ the same way."""
    config = _config(*two_filesystems)
    image = (samples_dir / "mnist_00_7.png").read_bytes()
    if kind == "file":
        name, final = "seven.png", config.done / "seven.png"
        (config.inbox / name).write_bytes(image)
    else:
        name, final = "folder", config.failed / "folder"
        (config.inbox / name).mkdir()
        for inside in ("a.png", "b.png"):
            (config.inbox / name / inside).write_bytes(image)

    def half_copy(source, target, **options):
        with open(source, "rb") as reader, open(target, "wb") as writer:
            writer.write(reader.read()[: len(image) // 2])
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    def half_copytree(source, target, **options):
        os.mkdir(target)
        half_copy(source / "a.png", target / "a.png")

    monkeypatch.setattr(inbox_module.shutil, "copy2", half_copy)
    monkeypatch.setattr(inbox_module.shutil, "copytree", half_copytree)
    pipeline = open_pipeline(tiny_bundle, "cbnet")
    with pytest.raises(OSError, match="No space left"):
        watch_inbox(pipeline, config, drain=True)
    before = _contents(config.inbox / name)
    assert not os.path.lexists(final)
    result = (config.outbox / f"{name}.json").read_text()
    monkeypatch.undo()
    assert watch_inbox(pipeline, config, drain=True, max_images=1) == 1
    assert _contents(final) == before and list(config.inbox.iterdir()) == []
    assert (config.outbox / f"{name}.json").read_text() == result and len(list(config.outbox.iterdir())) == 1
    assert _leftovers(config.done, config.failed, config.outbox) == []


def _contents(path) -> dict:
    """{relative name: bytes} of a file or of every file in a folder."""
    if path.is_file():
        return {"": path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
