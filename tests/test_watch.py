"""The inbox contract of ``run.py watch``, with real files and real ``watch`` processes (see runtime/inbox.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image

SETTLE = "0.4"
# Without these capabilities root obeys file modes like any user: a mode-000 file is unreadable.
NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--inh-caps=-dac_override,-dac_read_search"]


def wait_for(predicate, timeout: float = 60.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def write_bomb(path: Path, width: int = 20000, height: int = 20000) -> None:
    """A 1-bit PNG of width x height zeros: about 50 KB on disk, 400 megapixels decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    row = b"\x00" * (1 + (width + 7) // 8)
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def drop(source: Path, inbox: Path, name: str) -> Path:
    """The safe way: copy under an ignored name, then rename."""
    part = inbox / f"{name}.part"
    shutil.copyfile(source, part)
    os.replace(part, inbox / name)
    return inbox / name


class Watch:
    def __init__(self, bundle: Path, root: Path, *extra: str, prefix=()):
        self.root, self.inbox, self.outbox = root, root / "inbox", root / "outbox"
        self.args = [*prefix, sys.executable, str(bundle / "run.py"), "watch", "--inbox", str(self.inbox),
                     "--outbox", str(self.outbox), "--settle-seconds", SETTLE, "--poll-seconds", "0.05", *extra]
        self.inbox.mkdir(parents=True, exist_ok=True)
        self.process = None

    def start(self) -> "Watch":
        log = open(self.root / "watch.log", "ab")
        self.process = subprocess.Popen(self.args, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                        start_new_session=True)
        return self

    def results(self) -> dict:
        return {p.name: json.loads(p.read_text()) for p in self.outbox.glob("*.json")}

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)


@pytest.fixture
def watcher(tiny_bundle, tmp_path):
    started = []

    def make(*extra, prefix=()):
        started.append(Watch(tiny_bundle, tmp_path, *extra, prefix=prefix))
        return started[-1]

    yield make
    for w in started:
        w.stop()


def test_every_failure_kind_affects_only_its_input(watcher, samples_dir, tmp_path):
    w = watcher(prefix=NO_DAC if os.geteuid() == 0 else ())
    good = samples_dir / "mnist_00_7.png"
    w.start()
    wait_for(lambda: (tmp_path / "state" / "watch-state.json").exists(), what="the service to start")
    drop(good, w.inbox, "a.png")
    drop(good, w.inbox, "a.jpg")  # same stem: two results
    (w.inbox / "empty.png").write_bytes(b"")
    (w.inbox / "truncated.png").write_bytes(good.read_bytes()[:120])
    (w.inbox / "notes.png").write_text("not an image")
    Image.open(good).convert("RGB").resize((40, 40)).save(tmp_path / "rgb.png")
    drop(tmp_path / "rgb.png", w.inbox, "rgb.png")  # any size and mode: through the bundle's input spec
    (w.inbox / "folder").mkdir()
    drop(good, w.inbox, "secret.png").chmod(0o000)
    write_bomb(tmp_path / "bomb.png")
    drop(tmp_path / "bomb.png", w.inbox, "bomb.png")
    (w.inbox / ".hidden.png").write_bytes(good.read_bytes())
    (w.inbox / "upload.png.part").write_bytes(good.read_bytes())
    failures = {"empty.png": "empty file (0 bytes)", "truncated.png": "truncated",
                "notes.png": "not an image Pillow can read",
                "folder": "is a directory", "secret.png": "permission denied",
                "bomb.png": "over the pixel limit of 64,000,000"}
    results = wait_for(lambda: r if len(r := w.results()) == 9 else None, what="nine results")
    drop(good, w.inbox, "after-bomb.png")  # the service keeps going
    wait_for(lambda: "after-bomb.png.json" in w.results(), what="the image after the bomb")
    assert w.alive()
    for name, message in failures.items():
        assert results[f"{name}.json"]["status"] == "failed" and message in results[f"{name}.json"]["error"], name
        assert os.path.lexists(tmp_path / "failed" / name) and results[f"{name}.json"]["moved_to"] == str(tmp_path / "failed" / name)
    for name in ("a.png", "a.jpg", "rgb.png"):
        assert results[f"{name}.json"]["status"] == "done" and results[f"{name}.json"]["label"] == 7
        assert (tmp_path / "done" / name).is_file()
    assert sorted(p.name for p in w.inbox.iterdir()) == [".hidden.png", "upload.png.part"]
    assert not list(w.outbox.glob(".*"))  # no half-written result left behind
    run_py = w.args[w.args.index("watch") - 1]
    status = subprocess.run([sys.executable, run_py, "status", "--inbox", str(w.inbox)],
                            capture_output=True, text=True, check=True)
    report = json.loads(status.stdout)
    assert report["running"] and report["processed"] == 4 and report["failed"] == 6 and report["queued"] == 0
    assert report["uptime_s"] > 0 and report["last_error"]["file"] in failures


def test_slow_writer_is_classified_not_failed(watcher, samples_dir):
    w = watcher().start()
    data = (samples_dir / "mnist_02_1.png").read_bytes()

    def slow_copy():
        with open(w.inbox / "slow.png", "wb") as handle:
            for start in range(0, len(data), 16):
                handle.write(data[start : start + 16])
                handle.flush()
                time.sleep(0.05)

    writer = threading.Thread(target=slow_copy)
    writer.start()
    writer.join()
    result = wait_for(lambda: w.results().get("slow.png.json"), what="the slow file's result")
    assert result["status"] == "done" and result["label"] == 1


def test_vanished_between_listing_and_reading(tiny_bundle, tmp_path, samples_dir):
    from cbnet_tl.runtime.api import open_pipeline
    from cbnet_tl.runtime.inbox import Inbox, InboxConfig
    from cbnet_tl.runtime.settle import Settler

    config = InboxConfig(tmp_path / "inbox", tmp_path / "outbox", settle_seconds=0.01)
    inbox = Inbox(open_pipeline(tiny_bundle, "cbnet"), config)
    shutil.copy(samples_dir / "mnist_00_7.png", config.inbox / "gone.png")
    shutil.copy(samples_dir / "mnist_00_7.png", config.inbox / "kept.png")
    settler = Settler(0.01)
    settler.scan(config.inbox)
    time.sleep(0.02)  # the settle interval itself, not a wait for an event
    ready = settler.scan(config.inbox)
    (config.inbox / "gone.png").unlink()
    assert inbox.process(ready) == 2
    gone = json.loads((config.outbox / "gone.png.json").read_text())
    assert gone["status"] == "failed" and "vanished between listing and reading" in gone["error"]
    assert json.loads((config.outbox / "kept.png.json").read_text())["status"] == "done"


def _fill(inbox: Path, samples_dir: Path, count: int, prefix: str = "img") -> list:
    samples = sorted(samples_dir.glob("*.png"))
    names = []
    for i in range(count):
        name = f"{prefix}{i:05d}.png"
        shutil.copyfile(samples[i % len(samples)], inbox / name)
        names.append(name)
    return names


def _check_exactly_once(root: Path, names: list) -> None:
    results = sorted(p.name for p in (root / "outbox").glob("*.json"))
    assert results == sorted(f"{n}.json" for n in names)  # one each, no NAME.2.json
    assert sorted(p.name for p in (root / "done").iterdir()) == sorted(names)
    assert not list((root / "inbox").iterdir()) and not list((root / "failed").iterdir())
    for name in names[:: max(1, len(names) // 50)]:
        assert json.loads((root / "outbox" / f"{name}.json").read_text())["status"] == "done"


def test_sigkill_mid_batch_then_restart_loses_nothing(watcher, samples_dir, tmp_path):
    w = watcher("--batch-size", "8")
    names = _fill(w.inbox, samples_dir, 400)
    for round_ in range(3):  # kill it three times while it works
        w.start()
        target = 60 * (round_ + 1)
        wait_for(lambda: len(list(w.outbox.glob("*.json"))) >= target, what=f"{target} results")
        w.process.send_signal(signal.SIGKILL)
        w.process.wait(timeout=30)
    w.start()
    wait_for(lambda: not any(w.inbox.iterdir()), timeout=120, what="an empty inbox")
    wait_for(lambda: len(list((tmp_path / "done").iterdir())) == 400, what="400 inputs in done/")
    _check_exactly_once(tmp_path, names)


def _burst(watcher, samples_dir, tmp_path, count: int) -> dict:
    w = watcher("--batch-size", "64")
    names = _fill(w.inbox, samples_dir, count, prefix="burst")
    start = time.monotonic()
    w.start()
    pid, peak_kib = w.process.pid, 0

    def finished():
        nonlocal peak_kib
        with open(f"/proc/{pid}/status") as handle:
            peak_kib = max(peak_kib, next(int(l.split()[1]) for l in handle if l.startswith("VmHWM:")))
        return (tmp_path / "done").is_dir() and len(os.listdir(tmp_path / "done")) == count

    wait_for(finished, timeout=600, what=f"{count} inputs in done/")
    seconds = time.monotonic() - start
    _check_exactly_once(tmp_path, names)
    report = {"images": count, "seconds": round(seconds, 2), "images_per_s": round(count / seconds, 1),
              "peak_rss_mib": round(peak_kib / 1024, 1)}
    print(json.dumps(report))
    return report


def test_burst_of_2000_files(watcher, samples_dir, tmp_path):
    report = _burst(watcher, samples_dir, tmp_path, 2000)
    assert report["peak_rss_mib"] < 384  # the unit's MemoryMax


@pytest.mark.slow
def test_burst_of_10000_files(watcher, samples_dir, tmp_path):
    report = _burst(watcher, samples_dir, tmp_path, 10_000)
    assert report["peak_rss_mib"] < 384
