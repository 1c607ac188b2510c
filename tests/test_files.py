"""Atomic artifacts (runtime/files.py): a failed swap leaves the old directory where it was."""

from __future__ import annotations

import os

import pytest

from cbnet_tl.runtime.files import move_into_place, staged_directory


def _fail_on_call(monkeypatch, number: int):
    """Make the ``number``-th os.rename raise, as a full disk or a vanished directory would."""
    real, calls = os.rename, []

    def rename(source, target, *args, **kwargs):
        calls.append((source, target))
        if len(calls) == number:
            raise OSError(28, "No space left on device")
        return real(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "rename", rename)
    return calls


def _directory(path, text):
    path.mkdir()
    (path / "file.txt").write_text(text)
    return path


def test_move_into_place_restores_the_old_directory_when_the_second_rename_fails(tmp_path, monkeypatch):
    final = _directory(tmp_path / "bundle", "old")
    staging = _directory(tmp_path / ".bundle.partial", "new")
    calls = _fail_on_call(monkeypatch, 2)  # 1: old final aside, 2: staging into place
    with pytest.raises(OSError, match="No space left"):
        move_into_place(staging, final)
    assert len(calls) == 3  # the third puts the old one back
    assert (final / "file.txt").read_text() == "old"
    assert (staging / "file.txt").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".bundle.partial", "bundle"]  # no stranded backup


def test_staged_directory_keeps_the_old_output_when_the_swap_fails(tmp_path, monkeypatch):
    final = _directory(tmp_path / "build", "old")
    _fail_on_call(monkeypatch, 2)
    with pytest.raises(OSError):
        with staged_directory(final) as work:
            (work / "file.txt").write_text("new")
    assert (final / "file.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["build"]


def test_move_into_place_replaces_and_cleans_up(tmp_path):
    final = _directory(tmp_path / "bundle", "old")
    move_into_place(_directory(tmp_path / "new", "new"), final)
    assert (final / "file.txt").read_text() == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]
    with pytest.raises(FileExistsError):
        move_into_place(_directory(tmp_path / "other", "x"), final, replace=False)
