"""The frame loop (issue 30, item 2) with real parts: the tiny build's pipelines, a folder replay and the stand-in
rpicam-vid at 30 fps from Fashion-MNIST and MNIST images, DVFS sessions on fake cpufreq trees, real files for the log
and the kept frames. Every frame the loop classified gets the class ``classify_paths`` gives the same file; the log's
arrivals show the source's rate; a slow model drops frames instead of queueing them; EENet decides per frame; a
camera that dies is reopened with backoff; ``stop`` ends the loop, the camera process and the DVFS session's hold.
Waits are on the loop's own events (``wait_until``, ``wait_for_record``), never fixed sleeps."""

from __future__ import annotations

import gzip
import io
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from frame_helpers import install_fake_rpicam, process_gone
from test_cpufreq import PI_OS_KHZ, make_tree, snapshot

from cbnet_tl.runtime.api import classify_paths, open_pipeline
from cbnet_tl.runtime.dvfs.run import dvfs_session
from cbnet_tl.runtime.errors import ConfigError
from cbnet_tl.runtime.frames import FrameSource, open_source
from cbnet_tl.runtime.live import LiveConfig, LiveLoop

FPS = 30.0
NUM_FRAMES = 90
WAIT_S = 30.0  # the longest any wait on the loop may take on a loaded machine before the test fails


def strict_json(value) -> dict:
    return json.loads(json.dumps(value, allow_nan=False))


@pytest.fixture(scope="module")
def images(samples_dir, mnist_dir) -> list:
    """NUM_FRAMES images of 28x28 (L): the 40 samples (Fashion-MNIST and MNIST), then MNIST test images."""
    samples = [Image.open(path).convert("L") for path in sorted(samples_dir.glob("*.png"))]
    raw = gzip.open(mnist_dir / "t10k-images-idx3-ubyte.gz").read()
    extra = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)[:NUM_FRAMES - len(samples)]
    return samples + [Image.fromarray(pixels) for pixels in extra]


def write_frames(folder: Path, images: list, suffix: str) -> list:
    folder.mkdir(parents=True)
    paths = [folder / f"{k:04d}{suffix}" for k in range(len(images))]
    for image, path in zip(images, paths):
        image.save(path, quality=90) if suffix == ".jpg" else image.save(path)
    return paths


def read_log(path: Path) -> list:
    return [json.loads(line) for line in path.read_text().splitlines()]


def source_period(records: list) -> float:
    """The source's frame period the records show: the median of arrival gaps over seq gaps."""
    return float(np.median([(b["arrival"] - a["arrival"]) / (b["seq"] - a["seq"])
                            for a, b in zip(records, records[1:])]))


def assert_as_classify_gives(records: list, pipeline, paths: list) -> None:
    expected = classify_paths(pipeline, paths)
    for record in records:
        want = expected[record["seq"] % len(paths)]
        got = {key: record[key] for key in ("label", "class_name", "confidence", "path")}
        assert got == {key: want[key] for key in got}, (record["seq"], got, want)


class Running:
    """``loop.run(stop)`` in a thread; ``finish()`` sets stop and waits for it (``run``'s own error raised)."""

    def __init__(self, loop: LiveLoop) -> None:
        self.loop, self.stop, self.outcome = loop, threading.Event(), {}
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.outcome["status"] = self.loop.run(self.stop)
        except BaseException as error:
            self.outcome["error"] = error

    def finish(self, timeout: float = WAIT_S) -> dict:
        self.stop.set()
        return self.join(timeout)

    def join(self, timeout: float = WAIT_S) -> dict:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "run() did not return"
        if "error" in self.outcome:
            raise self.outcome["error"]
        return self.outcome["status"]

    def __enter__(self) -> "Running":
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop.set()
        self.thread.join(WAIT_S)


class ListSource(FrameSource):
    """Frames from a list, each read once the loop has handled the one before (no drop), then None."""

    description = "a list of frames"

    def __init__(self, images: list) -> None:
        super().__init__()
        self.images, self.loop, self._index = images, None, 0

    def open(self) -> None:
        self._index = 0

    def read(self):
        if self._index == len(self.images):
            return None
        seq = self._index
        self.loop.wait_until(lambda s: s["frames_classified"] + s["frames_failed"] >= seq, WAIT_S)
        self._index += 1
        return self._deliver(self.images[seq], time.monotonic())

    def close(self) -> None:
        pass


class WaitingPipeline:
    """A pipeline made slower than its source without a clock: each call waits until the source has read two more
    frames (or has ended), so at least one frame is replaced in the mailbox meanwhile."""

    def __init__(self, pipeline) -> None:
        self._pipeline, self.loop = pipeline, None

    def __getattr__(self, name):
        return getattr(self._pipeline, name)

    def classify(self, images, hook=None):
        read = self.loop.status()["frames_read"]
        self.loop.wait_until(lambda s: s["frames_read"] >= read + 2 or s["source_state"] == "ended", WAIT_S)
        return self._pipeline.classify(images, hook=hook)


@pytest.fixture(scope="module")
def cbnet(tiny_bundle):
    return open_pipeline(tiny_bundle, "cbnet", tuning=None)


@pytest.fixture(scope="module")
def branchynet(tiny_bundle):
    return open_pipeline(tiny_bundle, "branchynet", tuning=None)


@pytest.fixture
def fake_rpicam(tmp_path, monkeypatch) -> Path:
    """PATH with the stand-in rpicam-vid first; the file it records its argv and pid in."""
    install_fake_rpicam(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    record = tmp_path / "rpicam.json"
    monkeypatch.setenv("FAKE_RPICAM_RECORD", str(record))
    return record


@pytest.fixture
def off():
    with dvfs_session("off", deadline_ms=None) as session:
        yield session


# --- what each frame gets --------------------------------------------------------------------------------------

def test_a_folder_replay_is_classified_frame_by_frame_as_classify_does_at_its_rate(cbnet, off, images, tmp_path):
    paths = write_frames(tmp_path / "frames", images, ".png")
    loop = LiveLoop(cbnet, open_source(str(tmp_path / "frames"), fps=FPS), off, LiveConfig(log=tmp_path / "live.log"))
    status = strict_json(loop.run(threading.Event()))  # a folder plays out: run returns
    lines = read_log(tmp_path / "live.log")
    records = [line for line in lines if "seq" in line]
    assert [line["event"] for line in lines if "event" in line] == ["opened", "ended"]
    assert status["source_state"] == "ended" and status["frames_read"] == NUM_FRAMES
    assert status["frames_classified"] == len(records) >= NUM_FRAMES // 2
    assert status["frames_read"] == status["frames_classified"] + status["frames_dropped"]  # the last one too
    assert_as_classify_gives(records, cbnet, paths)
    assert abs(source_period(records) - 1 / FPS) < 0.05 / FPS
    assert status["deadline_ms"] == pytest.approx(1e3 / FPS)  # no deadline given: the frame period
    assert status["dvfs"] == "off" and status["khz"] is None and status["energy_source"] == "modelled"
    assert status["path_shares"] == {"ae+classifier": 1.0} and status["latest"] == records[-1]
    assert all(r["arrival"] <= r["start"] < r["end"] and r["khz"] is None and r["energy_j"] > 0 for r in records)
    record, jpeg = loop.latest()
    assert record == records[-1]
    assert Image.open(io.BytesIO(jpeg)).size == (28, 28)  # a PNG frame, encoded as JPEG to be shown


def test_the_stand_in_camera_at_30_fps_is_classified_as_classify_does_its_jpeg_files(cbnet, off, fake_rpicam, images,
                                                                                     tmp_path, monkeypatch):
    paths = write_frames(tmp_path / "frames", images[:30], ".jpg")
    monkeypatch.setenv("FAKE_RPICAM_JPEG_DIR", str(tmp_path / "frames"))  # sent in order, round again
    loop = LiveLoop(cbnet, open_source("rpicam", fps=FPS, size=(28, 28)), off, LiveConfig(log=tmp_path / "live.log"))
    with Running(loop) as running:
        assert loop.wait_for_record(NUM_FRAMES, WAIT_S) is not None
        status = strict_json(running.finish())
    records = [line for line in read_log(tmp_path / "live.log") if "seq" in line]
    assert status["source_state"] == "stopped" and status["frames_classified"] == len(records) > NUM_FRAMES // 2
    assert_as_classify_gives(records, cbnet, paths)
    assert abs(source_period(records) - 1 / FPS) < 0.05 / FPS
    record, jpeg = loop.latest()
    assert jpeg == paths[record["seq"] % len(paths)].read_bytes()  # the camera's own JPEG bytes
    assert process_gone(json.loads(fake_rpicam.read_text())["pid"])


def test_a_model_slower_than_its_source_drops_frames_and_no_queue_grows(cbnet, off, images, tmp_path):
    write_frames(tmp_path / "frames", images[:40], ".png")
    slow = WaitingPipeline(cbnet)
    loop = LiveLoop(slow, open_source(str(tmp_path / "frames"), fps=FPS), off, LiveConfig(deadline_s=0.001))
    slow.loop = loop
    records = []
    with Running(loop) as running:
        while (record := loop.wait_for_record(records[-1]["seq"] if records else -1, WAIT_S)) is not None:
            records.append(record)
        status = running.join()
    assert status["frames_read"] == 40 and status["frames_dropped"] >= status["frames_classified"] - 2 > 5
    assert status["frames_read"] == status["frames_classified"] + status["frames_dropped"]
    # each frame taken was the newest: two or more read while the one before it ran (the last: when the folder ended)
    assert all(b["seq"] - a["seq"] >= 2 for a, b in zip(records, records[1:-1]))
    assert abs(source_period(records) - 1 / FPS) < 0.05 / FPS
    # each but the last (the folder had ended: nothing to wait for) waited for two frames, against a 1 ms deadline
    assert status["deadline_misses"] >= status["frames_classified"] - 1


def test_a_frame_the_input_spec_refuses_is_counted_and_the_loop_goes_on(cbnet, off, capfd):
    good = Image.new("L", (28, 28), 128)
    source = ListSource([good, Image.new("1", (8001, 8001)), good, good])  # over the 64,000,000-pixel limit
    loop = LiveLoop(cbnet, source, off, LiveConfig())
    source.loop = loop
    status = loop.run(threading.Event())
    assert (status["frames_read"], status["frames_classified"], status["frames_failed"]) == (4, 3, 1)
    assert status["latest"]["seq"] == 3 and status["frames_dropped"] == 0
    assert capfd.readouterr().err.count("frame 1: over the pixel limit") == 1


# --- DVFS per frame --------------------------------------------------------------------------------------------

# A fake tree does not change the CPU's speed: a frame late there is the test machine's hiccup, not the policy's plan.
# Three frame periods keep a loaded machine's hiccups out of the comparison of misses.
DEADLINE_MS = 3e3 / FPS


def _replay_under(policy: str, pipeline, folder: Path, tree: Path) -> tuple:
    log = tree.with_suffix(".log")
    with dvfs_session(policy, deadline_ms=DEADLINE_MS, period_ms=1e3 / FPS, sysfs_root=tree) as session:
        loop = LiveLoop(pipeline, open_source(str(folder), fps=FPS), session, LiveConfig(log=log))
        status = strict_json(loop.run(threading.Event()))
    return status, session.totals(), [line for line in read_log(log) if "seq" in line]


def test_eenet_decides_per_frame_with_no_more_misses_than_performance_and_gives_the_tree_back(branchynet, images,
                                                                                            tmp_path):
    write_frames(tmp_path / "frames", images[:40], ".png")
    results = {}
    for policy in ("performance", "eenet"):
        make_tree(tmp_path / policy)
        before = snapshot(tmp_path / policy)
        results[policy] = _replay_under(policy, branchynet, tmp_path / "frames", tmp_path / policy)
        assert snapshot(tmp_path / policy) == before  # governor, limits and setspeed given back
    (status, totals, records), (top, _, top_records) = results["eenet"], results["performance"]
    assert {r["khz"] for r in top_records} == {PI_OS_KHZ[-1]}
    assert {r["khz"] for r in records} <= set(PI_OS_KHZ) and status["khz"] == records[-1]["khz"]
    assert len({r["khz"] for r in records}) > 1  # frames ended at different frequencies: decided frame by frame
    assert len(totals["time_at_frequency"]) > 1 and totals["switches"] > 0  # it left the top for some frames
    assert totals["idle_s"] > sum(totals["time_at_frequency"].values())  # waiting for a frame is idle, not busy
    assert status["dvfs"] == "eenet" and status["energy_source"] == "modelled"
    assert status["energy_j_per_frame"] == pytest.approx(status["energy_j_total"] / status["frames_classified"])
    assert sum(r["energy_j"] for r in records) == pytest.approx(status["energy_j_total"])
    late = {policy: {r["seq"] for r in rows if r["end"] - r["arrival"] > DEADLINE_MS / 1e3} for policy, (_, _, rows) in
            results.items()}
    same = {r["seq"] for r in records} & {r["seq"] for r in top_records}  # a loaded machine may drop one
    assert len(same) >= 30 and len(late["eenet"] & same) <= len(late["performance"] & same)
    assert (status["deadline_misses"], top["deadline_misses"]) == (len(late["eenet"]), len(late["performance"]))
    assert status["deadline_ms"] == pytest.approx(DEADLINE_MS)


# --- a source that fails, and stop ------------------------------------------------------------------------------

def test_a_camera_that_dies_is_reopened_with_backoff_and_seq_counts_on(cbnet, off, fake_rpicam, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setenv("FAKE_RPICAM_EXIT_AFTER", "5")  # each camera process: 5 frames, then status 1
    config = LiveConfig(log=tmp_path / "live.log", backoff_s=(0.05, 0.4))
    loop = LiveLoop(cbnet, open_source("rpicam", fps=FPS, size=(32, 32)), off, config)
    with Running(loop) as running:
        lost = loop.wait_until(lambda s: s["source_state"] in ("lost", "reopening"), WAIT_S)
        back = loop.wait_until(lambda s: s["source_state"] == "open" and s["events"][-1]["event"] == "reopened",
                               WAIT_S)
        record = loop.wait_for_record(11, WAIT_S)  # from the third camera process: seq counts on
        status = strict_json(running.finish())
    assert lost is not None and back is not None and record is not None and record["seq"] >= 12
    assert lost["events"][-1]["event"] == "lost" and "rpicam-vid exited with status 1" in lost["events"][-1]["error"]
    events = status["events"]
    assert [e["event"] for e in events[:5]] == ["opened", "lost", "reopened", "lost", "reopened"]
    assert all(b["time"] - a["time"] >= 0.05 for a, b in zip(events, events[1:]) if a["event"] == "lost")
    assert status["frames_read"] >= 12 and status["source_state"] == "stopped"
    logged = read_log(tmp_path / "live.log")
    assert [line for line in logged if "event" in line][-len(events):] == events
    assert all("seq" not in line for line in logged if "event" in line)
    assert process_gone(json.loads(fake_rpicam.read_text())["pid"])


def test_the_backoff_doubles_up_to_the_longest_while_the_source_stays_lost(cbnet, off, fake_rpicam, monkeypatch):
    monkeypatch.setenv("FAKE_RPICAM_EXIT_AFTER", "0")  # every camera process dies before its first frame
    loop = LiveLoop(cbnet, open_source("rpicam", fps=FPS, size=(32, 32)), off, LiveConfig(backoff_s=(0.05, 0.2)))
    with Running(loop) as running:
        status = loop.wait_until(lambda s: sum(e["event"] == "lost" for e in s["events"]) >= 5, WAIT_S)
        running.finish()
    events = status["events"]
    waits = [b["time"] - a["time"] for a, b in zip(events, events[1:]) if a["event"] == "lost"]
    assert len(waits) >= 4 and all(wait >= backoff for wait, backoff in zip(waits, (0.05, 0.1, 0.2, 0.2)))
    assert status["frames_read"] == 0  # each camera process started (opened), then died before a frame
    assert [e["event"] for e in status["events"]][:6] == ["opened", "lost", "reopened", "lost", "reopened", "lost"]


@pytest.mark.parametrize("moment", ["streaming", "blocked in a read", "waiting to reopen"])
def test_stop_ends_run_promptly_ends_the_camera_and_gives_the_cpu_back(branchynet, fake_rpicam, tmp_path,
                                                                       monkeypatch, moment):
    if moment == "blocked in a read":
        monkeypatch.setenv("FAKE_RPICAM_STALL_AFTER", "2")  # then silent, for longer than the test
    elif moment == "waiting to reopen":
        monkeypatch.setenv("FAKE_RPICAM_EXIT_AFTER", "2")
    make_tree(tmp_path / "sys")
    before = snapshot(tmp_path / "sys")
    with dvfs_session("eenet", deadline_ms=1e3 / FPS, period_ms=1e3 / FPS, sysfs_root=tmp_path / "sys") as session:
        loop = LiveLoop(branchynet, open_source("rpicam", fps=FPS, size=(32, 32)), session,
                        LiveConfig(log=tmp_path / "live.log", backoff_s=(600.0, 600.0)))
        with Running(loop) as running:
            assert loop.wait_for_record(-1, WAIT_S) is not None
            if moment == "blocked in a read":
                assert loop.wait_until(lambda s: s["frames_read"] == 2, WAIT_S)
            elif moment == "waiting to reopen":
                assert loop.wait_until(lambda s: s["source_state"] == "lost", WAIT_S)
            began = time.monotonic()
            status = running.finish()
            took = time.monotonic() - began
    assert took < 5.0, took  # the camera's read timeout is 10 s, the backoff 600 s
    assert status["source_state"] == "stopped" and snapshot(tmp_path / "sys") == before
    assert process_gone(json.loads(fake_rpicam.read_text())["pid"])
    assert len(read_log(tmp_path / "live.log")) == status["frames_classified"] + len(status["events"])  # flushed


class ReleasingPipeline(WaitingPipeline):
    """On its third frame, before its first stage, the CPU is given back and stop is set: what SIGTERM does to a
    service whose handler sets stop, behind the DVFS controller's own handler."""

    stop = None

    def classify(self, images, hook=None):
        if self.loop.status()["frames_classified"] == 2:
            self.loop.session.controller.release()
            self.stop.set()
        return self._pipeline.classify(images, hook=hook)


def test_the_cpu_given_back_in_the_middle_of_a_frame_ends_run_as_a_stop(branchynet, images, tmp_path):
    write_frames(tmp_path / "frames", images[:40], ".png")
    make_tree(tmp_path / "sys")
    before = snapshot(tmp_path / "sys")
    pipeline = ReleasingPipeline(branchynet)
    with dvfs_session("eenet", deadline_ms=1e3 / FPS, period_ms=1e3 / FPS, sysfs_root=tmp_path / "sys") as session:
        pipeline.loop = LiveLoop(pipeline, open_source(str(tmp_path / "frames"), fps=FPS), session, LiveConfig())
        pipeline.stop = threading.Event()
        status = pipeline.loop.run(pipeline.stop)  # no DvfsError: the next stage's frequency is not set, and no more
    assert (status["source_state"], status["frames_classified"]) == ("stopped", 2)
    assert snapshot(tmp_path / "sys") == before


# --- the log and the kept frames -------------------------------------------------------------------------------

def test_the_log_rotates_by_size_and_keeps_the_newest_lines(cbnet, off, images, tmp_path):
    write_frames(tmp_path / "frames", images[:40], ".png")
    log = tmp_path / "logs" / "live.log"
    config = LiveConfig(log=log, log_max_bytes=1000, log_keep=3)  # about four lines a file
    status = LiveLoop(cbnet, open_source(str(tmp_path / "frames"), fps=200.0), off, config).run(threading.Event())
    files = [log.with_name("live.log.3"), log.with_name("live.log.2"), log.with_name("live.log.1"), log]
    assert sorted(p.name for p in log.parent.iterdir()) == ["live.log", "live.log.1", "live.log.2", "live.log.3"]
    assert all(0 < p.stat().st_size <= 1000 for p in files)
    lines = [line for path in files for line in read_log(path)]
    seqs = [line["seq"] for line in lines if "seq" in line]
    assert seqs == sorted(seqs) and len(seqs) < status["frames_classified"]  # the oldest went
    # the newest: the last record, and the folder's end, which the reader logs while the last frames are classified
    assert [line for line in lines if "seq" in line][-1] == status["latest"]
    assert "ended" in {line.get("event") for line in lines[-3:]}


def test_a_log_or_a_keep_folder_that_cannot_be_written_is_said_once_and_the_loop_goes_on(cbnet, off, images,
                                                                                        tmp_path, capfd):
    write_frames(tmp_path / "frames", images[:10], ".png")
    (tmp_path / "a-folder").mkdir()
    (tmp_path / "a-file").write_text("")
    config = LiveConfig(log=tmp_path / "a-folder", keep_uncertain=tmp_path / "a-file", below=1.0)
    status = LiveLoop(cbnet, open_source(str(tmp_path / "frames"), fps=200.0), off, config).run(threading.Event())
    assert status["frames_read"] == 10 and status["source_state"] == "ended"
    assert status["log_errors"] == status["frames_classified"] + 2  # every record, and the two events
    assert status["keep_errors"] >= 1
    said = [line for line in capfd.readouterr().err.splitlines() if "cannot write" in line]
    assert len(said) == 2
    assert said[0].startswith(f"warning: cannot write the log {tmp_path / 'a-folder'} (Is a directory: ")
    assert said[1].startswith(f"warning: cannot write uncertain frames to {tmp_path / 'a-file'} (File exists: ")


def _kept(folder: Path) -> list:
    return sorted(p.name for p in folder.iterdir())


def test_uncertain_frames_are_kept_whole_within_count_and_bytes_oldest_first(cbnet, off, images, tmp_path):
    paths = write_frames(tmp_path / "frames", images[:40], ".jpg")
    keep, seen, problems = tmp_path / "uncertain", set(), []
    done = threading.Event()

    def watch() -> None:  # while the loop writes: every file visible (not a hidden temporary one) is whole
        while not done.is_set():
            for path in list(keep.glob("[!.]*")) if keep.is_dir() else []:
                try:
                    data = path.read_bytes()
                    Image.open(io.BytesIO(data)).load() if path.suffix == ".jpg" else json.loads(data)
                    seen.add(path.name)
                except FileNotFoundError:
                    pass  # made room for a newer frame meanwhile
                except Exception as error:
                    problems.append((path.name, error))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    config = LiveConfig(log=tmp_path / "live.log", keep_uncertain=keep, below=1.0, keep_max_files=5)
    LiveLoop(cbnet, open_source(str(tmp_path / "frames"), fps=100.0), off, config).run(threading.Event())
    done.set()
    watcher.join(WAIT_S)
    assert problems == [] and len(seen) > 10  # frames went by, each seen whole
    uncertain = [r for r in read_log(tmp_path / "live.log") if "seq" in r and r["confidence"] < 1.0]
    names = _kept(keep)
    assert len(names) == 10 and not [n for n in names if n.startswith(".")]  # 5 frames, 5 sidecars, no temporary
    sidecars = [json.loads((keep / n).read_text()) for n in names if n.endswith(".json")]
    assert [s["seq"] for s in sidecars] == [r["seq"] for r in uncertain[-5:]]  # the newest five
    for sidecar, record in zip(sidecars, uncertain[-5:]):
        assert sidecar == {**record, "jpeg": sidecar["jpeg"]}
        assert (keep / sidecar["jpeg"]).read_bytes() == paths[record["seq"]].read_bytes()  # the source's bytes
    # a second run counts what the first kept: within 3 frames' bytes, its own newest frames, none of the first's
    budget = sum((keep / n).stat().st_size for n in names) * 3 // 5
    config = LiveConfig(keep_uncertain=keep, below=1.0, keep_max_bytes=budget)
    LiveLoop(cbnet, open_source(str(tmp_path / "frames"), fps=100.0), off, config).run(threading.Event())
    again = _kept(keep)
    assert sum((keep / n).stat().st_size for n in again) <= budget and 2 <= len(again) // 2 <= 3
    assert not set(again) & set(names)


def test_only_frames_below_the_confidence_are_kept(cbnet, off, images, tmp_path):
    write_frames(tmp_path / "frames", images[:40], ".png")
    records = {}
    for below in (0.0, 0.9):
        keep = tmp_path / f"below-{below}"
        config = LiveConfig(log=tmp_path / f"{below}.log", keep_uncertain=keep, below=below)
        LiveLoop(cbnet, open_source(str(tmp_path / "frames"), fps=100.0), off, config).run(threading.Event())
        records[below] = [r for r in read_log(tmp_path / f"{below}.log") if "seq" in r]
        kept = sorted(json.loads(p.read_text())["seq"] for p in keep.glob("*.json")) if keep.is_dir() else []
        assert kept == [r["seq"] for r in records[below] if r["confidence"] < below]
    assert 0 < sum(r["confidence"] < 0.9 for r in records[0.9]) < len(records[0.9])  # some kept, not all


# --- the contract's edges ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("options, message", [
    ({"below": 1.5}, "Expected --below a confidence between 0 and 1. Received: 1.5"),
    ({"deadline_s": 0.0}, "Expected a deadline > 0 s and finite. Received: 0.0"),
    ({"log_max_bytes": 0}, "Expected log_max_bytes a whole number >= 1. Received: 0"),
    ({"keep_max_files": 2.5}, "Expected keep_max_files a whole number >= 1. Received: 2.5"),
    ({"backoff_s": (2.0, 1.0)}, "Expected backoff_s (first, longest) with 0 < first <= longest, in seconds. "
                                "Received: (2.0, 1.0)"),
])
def test_a_bad_option_is_one_clear_line(options, message):
    with pytest.raises(ConfigError) as error:
        LiveConfig(**options)
    assert str(error.value) == message


def test_a_deadline_the_session_does_not_share_is_refused(cbnet, tmp_path):
    source = ListSource([])
    with dvfs_session("off", deadline_ms=20.0) as session:
        with pytest.raises(ConfigError) as error:
            LiveLoop(cbnet, source, session, LiveConfig(deadline_s=0.05))
        assert str(error.value) == ("Expected the loop's deadline and the DVFS session's to agree: the policy plans "
                                    "for the session's. Received: 50 ms and 20 ms")
        assert LiveLoop(cbnet, source, session, LiveConfig()).status()["deadline_ms"] == 20.0


def test_status_before_run_is_strict_json_with_every_key(cbnet, off):
    loop = LiveLoop(cbnet, ListSource([]), off, LiveConfig(), fps=25.0)
    status = strict_json(loop.status())
    assert set(status) >= {"source", "source_state", "events", "frames_read", "frames_classified", "frames_dropped",
                           "deadline_ms", "deadline_misses", "fps", "source_fps", "dvfs", "khz", "energy_j_per_frame",
                           "energy_j_total", "energy_source", "path_shares", "latest", "started", "uptime_s"}
    assert (status["source_state"], status["deadline_ms"], status["source_fps"], status["latest"]) == \
        ("opening", 40.0, 25.0, None)
    assert loop.latest() == (None, None) and loop.wait_for_record(-1, 0.01) is None


def test_keeping_uncertain_frames_never_touches_the_users_own_files_in_the_folder(tmp_path):
    """The keeper counts and removes only the names it gives: a user's photos, notes and hidden temporary files in
    the same folder stay, whatever the bounds."""
    from cbnet_tl.runtime.frames import Frame
    from cbnet_tl.runtime.live_log import UncertainKeeper

    folder = tmp_path / "uncertain"
    folder.mkdir()
    users = {"holiday1.jpg": b"\xff\xd8 not ours", "config.json": b"{}", ".editor.swp.tmp": b"x", "notes.txt": b"y"}
    for name, data in users.items():
        (folder / name).write_bytes(data)
    keeper = UncertainKeeper(folder, max_files=2, max_bytes=10**6)
    for seq in range(4):
        keeper.keep({"seq": seq, "confidence": 0.1}, Frame(Image.new("RGB", (8, 8), (200, 10, 10)), seq, 0.0, None))
    assert {name: (folder / name).read_bytes() for name in users} == users
    kept = sorted(p.name for p in folder.iterdir() if p.name not in users)
    assert len(kept) == 4  # the newest two frames, each a JPEG and its sidecar
    assert sorted({name.split("-")[1].split(".")[0] for name in kept}) == ["000000002", "000000003"]


def test_work_under_the_pipelines_lock_is_added_up_so_the_loop_does_not_book_it_as_idle(cbnet, off, images, tmp_path):
    """A posted image's classification holds the loop's lock while the loop waits for a frame: that time is the
    CPU's work, so the loop books only the rest of its wait as idle (the session counts the other part as busy)."""
    from cbnet_tl.runtime.live_log import WorkLock

    clock = [0.0]
    lock = WorkLock(lambda: clock[0])
    with lock:
        clock[0] += 0.25
    assert lock.acquire(blocking=False) and lock.locked()
    clock[0] += 0.5
    lock.release()
    assert lock.held_seconds == pytest.approx(0.75) and not lock.locked()

    write_frames(tmp_path / "frames", images[:6], ".png")
    loop = LiveLoop(cbnet, open_source(str(tmp_path / "frames"), fps=5.0), off, LiveConfig())
    held = threading.Event()

    def post_while_waiting() -> None:  # as the server does for a posted image, between two frames
        assert loop.wait_for_record(0, WAIT_S) is not None
        with loop.lock:
            time.sleep(0.15)  # the posted image's work (a wait here: the frames' pacing is the loop's)
        held.set()

    poster = threading.Thread(target=post_while_waiting, daemon=True)
    poster.start()
    status = loop.run(threading.Event())
    poster.join(WAIT_S)
    assert held.is_set() and status["frames_classified"] >= 5
    waited = off.idle_seconds + sum(off.busy_seconds.values())
    assert loop.lock.held_seconds >= 0.15 and off.idle_seconds <= waited - 0.15 + 1e-3
