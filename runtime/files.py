"""Atomic writes: a reader (or a crash) sees the old artifact or the new one, never half of one.

Files are written to a temporary name in the same directory, flushed, then renamed over the target;
directories are built under a temporary name and renamed into place.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from cbnet_tl.runtime.errors import BundleError


def write_bytes_atomic(path: Path, data: bytes, *, durable: bool = False) -> None:
    """Write ``data`` to ``path`` through a temporary sibling and a rename.

    ``durable``: fsync the file before the rename, so a power cut cannot leave an empty file behind a
    completed rename (the device's outbox and state files want this; build artifacts do not).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False) as tmp:
        try:
            tmp.write(data)
            if durable:
                tmp.flush()
                os.fsync(tmp.fileno())
        except BaseException:
            tmp.close()
            os.unlink(tmp.name)
            raise
    move_file_into_place(Path(tmp.name), path)


def read_json(path: Path, fix: str):
    """The JSON value in ``path``; unreadable or invalid JSON is one ``BundleError`` line ending in ``fix``."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise BundleError(f"{path} is not valid JSON ({error}); {fix}") from None
    except OSError as error:
        raise BundleError(f"Cannot read {path}: {error.strerror}") from None


def write_json_atomic(path: Path, payload, *, durable: bool = False) -> None:
    write_bytes_atomic(path, (json.dumps(payload, indent=2) + "\n").encode(), durable=durable)


@contextlib.contextmanager
def staged_directory(final: Path, *, replace: bool = True) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``final``; on success rename it to ``final``.

    An existing ``final`` is replaced only after the new one is complete (``replace=False`` refuses
    instead). On any failure the temporary directory is removed and ``final`` is left as it was.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{final.name}.partial-", dir=final.parent))
    try:
        yield staging
        move_into_place(staging, final, replace=replace)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def move_into_place(staging: Path, final: Path, *, replace: bool = True) -> None:
    """Rename ``staging`` to ``final``; an old ``final`` is moved aside first and removed after.

    If ``staging`` cannot take its place, the old ``final`` is put back before the error propagates.
    """
    staging, final = Path(staging), Path(final)
    if not (final.exists() or final.is_symlink()):
        os.rename(staging, final)
        return
    if not replace:
        raise FileExistsError(f"{final} exists")
    backup = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
    os.rename(final, backup / final.name)
    try:
        os.rename(staging, final)
    except BaseException:
        try:
            os.rename(backup / final.name, final)
        except OSError as error:
            raise OSError(f"Could not put {final} back after a failed swap ({error.strerror}); "
                          f"the old copy is {backup / final.name}") from error
        backup.rmdir()
        raise
    shutil.rmtree(backup, ignore_errors=True)


def move_file_into_place(tmp: Path, final: Path) -> None:
    """Rename a complete temporary file over ``final`` (same filesystem), removing it if that fails."""
    try:
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
