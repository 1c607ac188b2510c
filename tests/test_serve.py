"""``run.py serve`` (issue 30, item 3) with real parts: real HTTP over loopback to the server built in-process on the
tiny build's pipeline (and once ``run.py serve`` as a process, stopped by SIGTERM), the frame loop over a folder and
the stand-in rpicam-vid, the page in headless chromium (driven over the DevTools protocol), ``/metrics`` read by
Prometheus' own parser. Each bad request gets one 4xx JSON error, and the next normal request still succeeds.
Waits are on events or on polled conditions with a deadline, never fixed sleeps."""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from frame_helpers import install_fake_rpicam, process_gone
from test_cpufreq import PI_OS_KHZ, make_tree, snapshot

from cbnet_tl.runtime.api import open_pipeline
from cbnet_tl.runtime.bundle import open_manifest
from cbnet_tl.runtime.cli import main
from cbnet_tl.runtime.dvfs.run import dvfs_session
from cbnet_tl.runtime.frames import open_source
from cbnet_tl.runtime.live import LiveConfig, LiveLoop
from cbnet_tl.runtime.serve import parse_listen
from cbnet_tl.runtime.server import ServerConfig, make_server
from cbnet_tl.runtime.server_metrics import ServerStats, render_metrics
from cbnet_tl.runtime.specs import default_pipeline

WAIT_S = 30.0  # the longest any wait may take on a loaded machine before the test fails
CHROMIUM = Path("/usr/bin/chromium")
TOKEN = "s3cret-token-for-the-tests-0123456789"


# --- the server, in-process --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pipeline(tiny_bundle):
    return open_pipeline(tiny_bundle, default_pipeline(open_manifest(tiny_bundle)[1]))


@contextlib.contextmanager
def serving(pipeline, loop=None, **config):
    server = make_server(pipeline, ServerConfig(port=0, **config), loop)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(WAIT_S)


@contextlib.contextmanager
def live(pipeline, spec: str, fps: float, config: LiveConfig = LiveConfig(), **server_config):
    """The frame loop over ``spec`` at ``fps`` (DVFS off) in a thread, and the server over it."""
    stop = threading.Event()
    with dvfs_session("off", deadline_ms=1e3 / fps, period_ms=1e3 / fps) as session:
        loop = LiveLoop(pipeline, open_source(spec, fps=fps), session, config, fps=fps)
        thread = threading.Thread(target=loop.run, args=(stop,), daemon=True)
        thread.start()
        try:
            with serving(pipeline, loop, **server_config) as server:
                yield server, loop
        finally:
            stop.set()
            thread.join(WAIT_S)


class Answer:
    def __init__(self, status: int, headers: dict, body: bytes):
        self.status, self.headers, self.body = status, headers, body

    def json(self):
        return json.loads(self.body)


def call(server, method: str, path: str, body: bytes = None, headers: dict = None) -> Answer:
    """One request on a new connection to ``server`` (a server, or its (host, port))."""
    host, port = getattr(server, "server_address", server)[:2]
    connection = http.client.HTTPConnection(host, port, timeout=WAIT_S)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


def raw(server, data: bytes) -> Answer:
    """``data`` as sent, on a new connection; the answer read until the server closes it."""
    with socket.create_connection(server.server_address[:2], timeout=WAIT_S) as connection:
        connection.sendall(data)
        return read_answer(connection)


def read_answer(connection: socket.socket) -> Answer:
    received = b""
    while chunk := connection.recv(65536):
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return Answer(int(lines[0].split()[1]), headers, body)


def assert_json_error(answer: Answer, status: int, words: str) -> dict:
    assert answer.status == status, (answer.status, answer.body)
    assert answer.headers["content-type"] == "application/json"
    payload = answer.json()
    assert payload["status"] == status and words in payload["error"], payload
    return payload


def assert_still_serving(server, image: bytes) -> None:
    assert call(server, "GET", "/api/status").status == 200
    assert call(server, "POST", "/api/classify", image).status == 200


def classify_json(capsys, bundle: Path, path: Path) -> dict:
    capsys.readouterr()
    assert main(["--bundle", str(bundle), "classify", str(path), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def without_file(payload: dict) -> dict:
    """``classify --json``'s object without what depends on the file's name and the time it took."""
    return {**payload, "results": [{k: v for k, v in r.items() if k not in ("file", "ms")} for r in payload["results"]]}


@pytest.fixture(scope="module")
def sample(samples_dir) -> bytes:
    return (samples_dir / "mnist_00_7.png").read_bytes()


def png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header says ``width`` x ``height`` (a decompression bomb's first bytes) and whose data is tiny."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


# --- every endpoint ------------------------------------------------------------------------------------------

def test_posted_images_of_every_format_get_what_classify_json_gives_their_files(pipeline, tiny_bundle, samples_dir,
                                                                                  tmp_path, capsys):
    gray = Image.open(samples_dir / "mnist_00_7.png")
    colour = Image.open(samples_dir / "mnist_02_1.png").convert("RGB")
    files = [samples_dir / "mnist_00_7.png", samples_dir / "fashionMNIST_00_9.png"]
    for name, image, options in (("a.jpg", colour, {"quality": 90}), ("b.bmp", gray, {}), ("c.webp", colour, {}),
                                 ("d.tif", gray, {}), ("e.gif", gray, {}), ("f.png", gray.convert("LA"), {}),
                                 ("g.png", gray.convert("I;16"), {})):
        image.save(tmp_path / name, **options)
        files.append(tmp_path / name)
    with serving(pipeline) as server:
        for path in files:
            answer = call(server, "POST", "/api/classify", path.read_bytes(), {"Content-Type": "image/x-anything"})
            assert answer.status == 200, answer.body
            posted, expected = answer.json(), classify_json(capsys, tiny_bundle, path)
            assert without_file(posted) == without_file(expected), path.name
            assert posted["results"][0]["file"] == "-"
        assert call(server, "GET", "/api/status").json()["server"]["posted"] == {"classified": len(files), "refused": 0}


def test_without_a_source_status_latest_metrics_page_and_health_answer(pipeline, sample):
    with serving(pipeline) as server:
        health = call(server, "GET", "/healthz")
        assert (health.status, health.body) == (200, b"ok\n")
        assert call(server, "POST", "/api/classify", sample).status == 200
        status = call(server, "GET", "/api/status").json()
        assert status["pipeline"] == pipeline.name and status["source"] is None and status["source_state"] is None
        assert status["server"]["posted"] == {"classified": 1, "refused": 0}
        assert status["server"]["requests_by_route"] == {"/healthz": {"200": 1}, "/api/classify": {"200": 1}}
        assert_json_error(call(server, "GET", "/api/latest"), 404, "Expected a server with a source")
        assert_json_error(call(server, "GET", "/api/latest.jpg"), 404, "Expected a server with a source")
        page = call(server, "GET", "/")
        assert page.status == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
        assert b"http://" not in page.body and b"https://" not in page.body and b"<link" not in page.body  # offline
        assert "default-src 'none'" in page.headers["content-security-policy"]
        metrics = call(server, "GET", "/metrics")
        assert metrics.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
        families = {f.name: f for f in text_string_to_metric_families(metrics.body.decode())}
        requests = {(s.labels["route"], s.labels["code"]): s.value for s in families["cbnet_requests"].samples}
        assert requests[("/api/classify", "200")] == 1 and requests[("/api/latest", "404")] == 1
        assert families["cbnet_requests"].type == "counter"
        assert [s.value for s in families["cbnet_posted_images"].samples if s.labels["result"] == "classified"] == [1]
        assert "cbnet_frames_classified" not in families  # no source: no made-up frame counts


def test_with_a_folder_source_every_endpoint_shows_the_loop(pipeline, samples_dir, tiny_bundle, tmp_path, capsys,
                                                             sample):
    with live(pipeline, str(samples_dir), fps=20) as (server, loop):
        assert loop.wait_for_record(0, WAIT_S) is not None
        status = call(server, "GET", "/api/status").json()
        assert status["source_state"] == "open" and status["frames_classified"] >= 1
        assert status["source"] == loop.status()["source"] and status["server"]["auth"] == "none"
        latest = call(server, "GET", "/api/latest").json()
        assert {"seq", "arrival", "start", "end", "label", "class_name", "confidence", "path", "khz",
                "energy_j"} <= set(latest)
        frame = call(server, "GET", "/api/latest.jpg")
        assert frame.status == 200 and frame.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(frame.body)).format == "JPEG" and int(frame.headers["x-frame-seq"]) >= 0
        posted = call(server, "POST", "/api/classify", sample)  # beside the loop, on its lock
        assert without_file(posted.json()) == without_file(
            classify_json(capsys, tiny_bundle, samples_dir / "mnist_00_7.png"))
        text = call(server, "GET", "/metrics").body.decode()
        now = loop.status()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    kinds = {name: families[name].type for name in ("cbnet_frames_read", "cbnet_frames_classified",
                                                    "cbnet_frames_dropped", "cbnet_deadline_misses",
                                                    "cbnet_energy_joules", "cbnet_energy_joules_per_frame",
                                                    "cbnet_source_state", "cbnet_path_share")}
    assert kinds["cbnet_frames_classified"] == "counter" and kinds["cbnet_energy_joules"] == "counter"
    assert kinds["cbnet_source_state"] == "gauge"
    classified = families["cbnet_frames_classified"].samples[0].value
    assert 1 <= classified <= now["frames_classified"]
    assert families["cbnet_energy_joules"].samples[0].labels == {"source": "modelled"}
    assert {s.labels["state"]: s.value for s in families["cbnet_source_state"].samples}["open"] == 1
    assert abs(sum(s.value for s in families["cbnet_path_share"].samples) - 1.0) < 1e-5
    assert families["cbnet_deadline_seconds"].samples[0].value == pytest.approx(0.05)


def test_metric_labels_are_escaped_so_that_the_parser_reads_them_back():
    stats = ServerStats(4)
    stats.answered('odd "route"\\with\nnewline', 200)
    status = {"pipeline": "cbnet", "bundle_version": "v1", "source_state": "open", "frames_read": 3,
              "path_shares": {'a "b"\\c\nd': 1.0}, "server": stats.snapshot("http://x/", False)}
    families = {f.name: f for f in text_string_to_metric_families(render_metrics(status))}
    assert families["cbnet_requests"].samples[0].labels["route"] == 'odd "route"\\with\nnewline'
    assert families["cbnet_path_share"].samples[0].labels["path"] == 'a "b"\\c\nd'
    assert families["cbnet_frames_read"].samples[0].value == 3
    assert "cbnet_cpu_frequency_khz" not in families  # not in the status: left out, not reported as 0


# --- bad requests ------------------------------------------------------------------------------------------

def test_each_bad_request_gets_one_json_error_and_the_server_goes_on(pipeline, sample):
    head = "POST /api/classify HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    with serving(pipeline, max_body_bytes=4096) as server:
        cases = [
            (raw(server, (head + "\r\n").encode()), 411, "Received no Content-Length"),
            (raw(server, (head + "Content-Length: 0\r\n\r\n").encode()), 400, "Received an empty body"),
            (raw(server, (head + "Content-Length: 4097\r\n\r\n").encode() + b"x" * 4097), 413,
             "at most 4,096 bytes (--max-body-bytes). Received: Content-Length 4,097"),
            (raw(server, (head + "Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n").encode()), 411,
             "Transfer-Encoding chunked (not accepted)"),
            (raw(server, (head + "Content-Length: 12abc\r\n\r\n").encode()), 400, "Expected one Content-Length"),
            (call(server, "POST", "/api/classify", b"this is no image at all"), 422,
             "Received: not an image Pillow can read"),
            (call(server, "POST", "/api/classify", png_declaring(20000, 20000)), 422,
             "400,000,000 pixels; refused before decoding"),
            (call(server, "POST", "/api/classify", sample, {"Content-Type": "multipart/form-data; boundary=x"}), 415,
             "Received: a form"),
            (call(server, "GET", "/etc/passwd"), 404, "Received: '/etc/passwd'"),
            (call(server, "GET", "/../../etc/passwd"), 404, "Expected one of"),
            (call(server, "DELETE", "/api/status"), 405, "Expected GET for /api/status. Received: DELETE"),
            (call(server, "BREW", "/api/classify"), 405, "Expected POST for /api/classify"),
            (raw(server, b"NONSENSE\r\n\r\n"), 400, "Bad request"),
            (call(server, "GET", "/api/status", headers={"Host": "attacker.example:8080"}), 403,
             "Expected a Host header naming loopback"),
        ]
        for answer, status, words in cases:
            assert_json_error(answer, status, words)
            assert_still_serving(server, sample)
        assert call(server, "GET", "/api/classify").headers["allow"] == "POST"
        assert "cbnet-serve-" not in call(server, "POST", "/api/classify", b"GIF89a nothing").json()["error"]
        assert call(server, "GET", "/api/status").json()["server"]["posted"]["refused"] == 3


def test_a_content_length_of_a_gigabyte_is_refused_before_any_of_it_is_read(pipeline, sample):
    with serving(pipeline) as server, socket.create_connection(server.server_address[:2], timeout=WAIT_S) as client:
        client.sendall(b"POST /api/classify HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1073741824\r\n"
                       b"Expect: 100-continue\r\n\r\n" + sample)
        answer = read_answer(client)  # the server answers and closes without waiting for the gigabyte
        assert_json_error(answer, 413, "Received: Content-Length 1,073,741,824")
        assert_still_serving(server, sample)


def test_a_client_sending_one_byte_a_second_gets_408_while_others_are_served(pipeline, sample):
    """With --read-timeout 2.5: a body that trickles in at a byte a second (and, apart, a request line that does) is
    answered 408 and its connection closed 2.5 s in, although no single read waits that long; meanwhile another
    client is answered at once."""
    with serving(pipeline, read_timeout_s=2.5) as server:
        for opening, trickle in ((b"POST /api/classify HTTP/1.1\r\nHost: localhost\r\nContent-Length: 100\r\n\r\n",
                                  sample[:100]), (b"", b"GET /api/status HTTP/1.1\r\n\r\n")):
            client = socket.create_connection(server.server_address[:2], timeout=WAIT_S)
            client.sendall(opening)
            answered = threading.Event()

            def send_slowly():
                for byte in trickle:
                    with contextlib.suppress(OSError):
                        client.send(bytes([byte]))
                    if answered.wait(1.0):
                        return

            sender = threading.Thread(target=send_slowly, daemon=True)
            began = time.monotonic()
            sender.start()
            assert call(server, "POST", "/api/classify", sample).status == 200  # served meanwhile
            answer = read_answer(client)  # until the server closes the connection
            answered.set()
            assert_json_error(answer, 408, "within")
            assert answer.headers["connection"] == "close" and 2.4 < time.monotonic() - began < 10
            sender.join(WAIT_S)
            client.close()
            assert_still_serving(server, sample)


def test_more_requests_than_max_in_flight_get_503_with_retry_after(pipeline, sample):
    """Two classifications hold both places while the pipeline's lock is held; a third gets 503 at once, while
    /api/status and /healthz (which take no place) are still answered; once the lock is let go the two are answered
    and the server serves as before."""
    with serving(pipeline, max_in_flight=2) as server:
        answers = []
        with server.lock:
            posting = [threading.Thread(target=lambda: answers.append(call(server, "POST", "/api/classify", sample)))
                       for _ in range(2)]
            for thread in posting:
                thread.start()
            until = time.monotonic() + WAIT_S
            while server.stats.snapshot("", False)["in_flight"] < 2:
                assert time.monotonic() < until, "the two requests never got in"
                time.sleep(0.01)
            busy = call(server, "POST", "/api/classify", sample)
            assert_json_error(busy, 503, "at most 2 requests at once (--max-in-flight)")
            assert busy.headers["retry-after"] == "1"
            assert call(server, "GET", "/api/status").json()["server"]["in_flight"] == 2
            assert call(server, "GET", "/healthz").status == 200
        for thread in posting:
            thread.join(WAIT_S)
        assert [a.status for a in answers] == [200, 200]
        assert_still_serving(server, sample)


def test_slow_clients_claiming_big_bodies_hold_no_place_and_get_408_soon(pipeline, sample):
    """Issue 30: --max-in-flight clients each claim a 16,000,000-byte body, are told 100 Continue, then send a byte a
    second. The body may take the read timeout plus a second per 64 KiB actually received, so each gets 408 and its
    connection closed about --read-timeout in (not the ~250 s its Content-Length would allow); and as a body is read
    before it takes a place, while they trickle GET /api/status answers 200 (not 503) and a posted image is
    classified."""
    read_timeout = 2.0
    with serving(pipeline, read_timeout_s=read_timeout) as server, contextlib.ExitStack() as stack:
        stop = threading.Event()
        clients, senders, began = [], [], []

        def trickle(client: socket.socket) -> None:  # a byte a second, until the answer arrives
            while not stop.is_set():
                with contextlib.suppress(OSError):
                    client.send(b"x")
                if select.select([client], [], [], 1.0)[0]:
                    return

        for _ in range(server.config.max_in_flight):
            client = stack.enter_context(socket.create_connection(server.server_address[:2], timeout=WAIT_S))
            client.sendall(b"POST /api/classify HTTP/1.1\r\nHost: localhost\r\nContent-Length: 16000000\r\n"
                           b"Expect: 100-continue\r\n\r\n")
            interim = b""
            while not interim.endswith(b"\r\n\r\n"):  # the server is reading this body now
                assert (byte := client.recv(1)), interim
                interim += byte
            assert interim.startswith(b"HTTP/1.1 100 "), interim
            clients.append(client)
            began.append(time.monotonic())
            senders.append(threading.Thread(target=trickle, args=(client,), daemon=True))
            senders[-1].start()
        stack.callback(lambda: [stop.set(), *(sender.join(WAIT_S) for sender in senders)])
        status = call(server, "GET", "/api/status")
        assert status.status == 200, (status.status, status.body)
        assert call(server, "POST", "/api/classify", sample).status == 200
        assert not select.select(clients, [], [], 0)[0], "a slow client was answered before the others were served"
        for client, start in zip(clients, began):
            answer = read_answer(client)  # until the server closes the connection
            assert_json_error(answer, 408, "plus a second per 64 KiB received")
            assert answer.headers["connection"] == "close"
            assert read_timeout - 0.2 < time.monotonic() - start < read_timeout + 5
        assert_still_serving(server, sample)


def test_connections_beyond_the_limit_are_refused_with_503_and_served_again_once_others_close(pipeline, sample):
    with serving(pipeline, max_in_flight=1, max_connections=2) as server:
        idle = [socket.create_connection(server.server_address[:2], timeout=WAIT_S) for _ in range(2)]
        refused = raw(server, b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert_json_error(refused, 503, "Expected fewer open connections")
        assert refused.headers["retry-after"] == "1"
        for connection in idle:
            connection.close()
        until = time.monotonic() + WAIT_S
        while server.num_connections:  # until the idle connections' threads have seen them go
            assert time.monotonic() < until, "the closed connections are still counted"
            time.sleep(0.01)
        assert call(server, "POST", "/api/classify", sample).status == 200
        assert server.stats.snapshot("", False)["requests"] == {"200": 1, "503": 1}


def test_with_a_token_every_endpoint_but_healthz_needs_it(pipeline, sample):
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    basic = {"Authorization": "Basic " + base64.b64encode(f"anyone:{TOKEN}".encode()).decode()}
    with serving(pipeline, token=TOKEN) as server:
        assert call(server, "GET", "/healthz").status == 200
        for path in ("/", "/api/status", "/metrics", "/api/latest", "/nowhere"):
            missing = assert_json_error(call(server, "GET", path), 401, "Received none")
            assert missing["status"] == 401
            assert_json_error(call(server, "GET", path, headers={"Authorization": "Bearer wrong"}), 401,
                              "Received a wrong token")
        answer = call(server, "POST", "/api/classify", sample)
        assert_json_error(answer, 401, "Expected Authorization: Bearer TOKEN")
        assert answer.headers["www-authenticate"].startswith("Basic")  # the last of the two; a browser prompts
        assert call(server, "POST", "/api/classify", sample, bearer).status == 200
        assert call(server, "GET", "/", headers=basic).status == 200  # what a browser sends after its prompt
        assert call(server, "GET", "/api/status", headers=bearer).json()["server"]["auth"] == "token"
        assert call(server, "GET", "/api/status", headers={"Host": "board.example"} | bearer).status == 200


# --- the command line -----------------------------------------------------------------------------------------

def test_a_listen_address_others_can_reach_is_refused_without_a_token(tiny_bundle, tmp_path, capsys):
    def refused(*options) -> str:
        capsys.readouterr()
        assert main(["--bundle", str(tiny_bundle), "serve", *options]) == 1
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, lines
        return lines[0]

    line = refused("--listen", "0.0.0.0:8080")
    assert line.startswith("error: Expected a loopback --listen (127.0.0.1, localhost, ::1) without a token. "
                           "Received: 0.0.0.0, which other machines can reach: pass --token-file FILE")
    assert "--no-token" in refused("--listen", "192.0.2.7:0")
    (tmp_path / "short").write_text("abc\n")
    assert "Expected a token of at least 16 characters" in refused("--listen", "0.0.0.0:0", "--token-file",
                                                                   str(tmp_path / "short"))
    (tmp_path / "token").write_text(TOKEN + "\n")
    assert "Received both" in refused("--token-file", str(tmp_path / "token"), "--no-token")
    assert "Expected --listen HOST:PORT" in refused("--listen", "8080")
    assert "Expected --source with --fps, --dvfs" in refused("--fps", "30", "--dvfs", "eenet")
    assert parse_listen("[::1]:8080") == ("::1", 8080) and parse_listen("localhost:0") == ("localhost", 0)


@contextlib.contextmanager
def run_py_serve(bundle: Path, options: list, cwd: Path, env: dict = None):
    """``python BUNDLE/run.py serve --listen 127.0.0.1:0 OPTIONS`` as a process: yields (the process, its (host,
    port), a list that gets its (stdout, stderr) once the block has sent it SIGTERM and it has ended)."""
    process = subprocess.Popen([sys.executable, str(bundle / "run.py"), "serve", "--listen", "127.0.0.1:0", *options],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, env=env)
    output: list = []
    try:
        first = process.stdout.readline()
        assert first.startswith("serving http://127.0.0.1:"), (first, process.stderr.read())
        yield process, parse_listen(first.split()[1].removeprefix("http://").rstrip("/")), output
        process.send_signal(signal.SIGTERM)
        output.extend(process.communicate(timeout=WAIT_S))
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0 and "Traceback" not in output[1], output[1]


def test_run_py_serve_with_a_camera_stops_cleanly_on_sigterm(tiny_bundle, tmp_path, sample):
    """The bundle's own run.py, as a process: the stand-in rpicam-vid at 30 fps under --dvfs performance on a fake
    cpufreq tree; SIGTERM ends it with status 0 and a summary line, the camera process gone, the tree given back."""
    install_fake_rpicam(tmp_path / "bin")
    make_tree(tmp_path / "sys")
    before = snapshot(tmp_path / "sys")
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:/usr/bin:/bin", "FAKE_RPICAM_RECORD": str(tmp_path / "cam.json")}
    options = ["--source", "rpicam", "--fps", "30", "--size", "32x32", "--dvfs", "performance", "--sysfs-root",
               str(tmp_path / "sys"), "--log", str(tmp_path / "live.log")]
    with run_py_serve(tiny_bundle, options, tmp_path, env) as (process, server, output):
        until = time.monotonic() + WAIT_S
        while (status := call(server, "GET", "/api/status").json())["frames_classified"] < 5:
            assert time.monotonic() < until, status
            time.sleep(0.05)
        assert status["dvfs"] == "performance" and status["khz"] == max(PI_OS_KHZ)
        assert call(server, "POST", "/api/classify", sample).status == 200
    out = output[0]
    assert out.strip().splitlines()[-1].startswith("serve summary: ")
    assert "posted images: 1 classified, 0 refused" in out and "dvfs performance" in out
    assert process_gone(json.loads((tmp_path / "cam.json").read_text())["pid"])
    assert snapshot(tmp_path / "sys") == before
    assert any("seq" in json.loads(line) for line in (tmp_path / "live.log").read_text().splitlines())


def test_run_py_serve_without_a_source_stops_cleanly_on_sigterm(tiny_bundle, tmp_path):
    with run_py_serve(tiny_bundle, [], tmp_path) as (process, server, output):
        assert call(server, "POST", "/api/classify", b"no image").status == 422
    assert output[0].strip().splitlines()[-1].startswith("serve summary: HTTP requests: 1 (422: 1); posted images: "
                                                         "0 classified, 1 refused; up ")


# --- the page, in a browser ------------------------------------------------------------------------------------

class Browser:
    """Headless chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: it reads
    NUL-terminated JSON on fd 3 and writes on fd 4)."""

    def __init__(self, profile: Path) -> None:
        if not CHROMIUM.is_file():
            pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (scripts/setup.sh --tests does)")
        to_browser, self._from_browser = os.pipe(), os.pipe()
        # a wrapper puts the pipes on fds 3 and 4, where chromium looks for them
        wrapper = "import os, sys; os.dup2(int(sys.argv[1]), 3); os.dup2(int(sys.argv[2]), 4); " \
                  "os.execv(sys.argv[3], sys.argv[3:])"
        self.process = subprocess.Popen(
            [sys.executable, "-c", wrapper, str(to_browser[0]), str(self._from_browser[1]), str(CHROMIUM),
             "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe", "--no-first-run",
             f"--user-data-dir={profile}", "about:blank"],
            pass_fds=(to_browser[0], self._from_browser[1]), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_browser[0])
        os.close(self._from_browser[1])
        self._out, self._in = self._from_browser[0], os.fdopen(to_browser[1], "wb")
        self._buffer, self._id, self.session = b"", 0, None

    def send(self, method: str, params: dict = None) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params or {}}
        if self.session is not None:
            message["sessionId"] = self.session
        self._in.write(json.dumps(message).encode() + b"\0")
        self._in.flush()
        until = time.monotonic() + WAIT_S
        while True:
            while b"\0" not in self._buffer:
                ready, _, _ = select.select([self._out], [], [], max(0.0, until - time.monotonic()))
                chunk = os.read(self._out, 1 << 16) if ready else b""
                assert chunk, f"chromium did not answer {method}"
                self._buffer += chunk
            line, self._buffer = self._buffer.split(b"\0", 1)
            answer = json.loads(line)
            if answer.get("id") == self._id:
                assert "error" not in answer, answer
                return answer["result"]

    def open(self, url: str) -> None:
        target = self.send("Target.createTarget", {"url": url})["targetId"]
        self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]

    def text(self, element: str) -> str:
        expression = f"(document.getElementById({element!r}) || {{}}).textContent || ''"
        return self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})["result"]["value"]

    def wait_for_text(self, element: str, predicate, timeout: float = WAIT_S) -> str:
        until = time.monotonic() + timeout
        while not predicate(text := self.text(element)):
            assert time.monotonic() < until, f"#{element} still says {text!r}"
            time.sleep(0.02)
        return text

    def close(self) -> None:
        self.session = None
        with contextlib.suppress(Exception):
            self.send("Browser.close")
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(WAIT_S)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        os.close(self._out)
        self._in.close()


@pytest.fixture
def browser(tmp_path):
    browser = Browser(tmp_path / "chromium-profile")
    yield browser
    browser.close()


def logged_record(log: Path, seq: int) -> dict:
    """The loop's record of frame ``seq`` in its log (written just after the record is decided)."""
    until = time.monotonic() + WAIT_S
    while True:
        for line in log.read_text().splitlines():
            record = json.loads(line)
            if record.get("seq") == seq:
                return record
        assert time.monotonic() < until, f"frame {seq} is not in {log}"
        time.sleep(0.02)


def shown_seq(text: str) -> int:
    return int(text.split()[-1]) if text.startswith("frame ") else -1


def test_the_page_shows_each_decided_class_within_two_seconds(pipeline, samples_dir, tmp_path, browser):
    """The page, in chromium, over a folder replayed at 4 frames/s: each record the loop decides is on the page
    (its frame number, and the class of the number shown, as the loop's log has it) within 2 s of its decision."""
    with live(pipeline, str(samples_dir), fps=4, config=LiveConfig(log=tmp_path / "live.log")) as (server, loop):
        browser.open(server.url)
        browser.wait_for_text("seq", lambda text: shown_seq(text) >= 0)  # the page is up
        record = loop.status()["latest"]
        for _ in range(3):
            record = loop.wait_for_record(record["seq"], WAIT_S)
            browser.wait_for_text("seq", lambda text: shown_seq(text) >= record["seq"])
            assert time.monotonic() - record["end"] < 2.0
            seq, shown_class = shown_seq(browser.text("seq")), browser.text("class")
            assert shown_class == logged_record(tmp_path / "live.log", seq)["class_name"]
        assert "modelled" in browser.text("energy") and "frames/s" in browser.text("fps")
        assert "ae+classifier" in browser.text("paths") and "(open)" in browser.text("source")
        assert browser.text("alert") == ""


class LostSource:
    """A frame loop whose source is lost and being reopened: what the page says then."""

    lock = threading.Lock()

    def status(self) -> dict:
        return {"source": "rpicam-vid 640x480 at 30 fps", "source_state": "reopening", "events": [],
                "frames_read": 10, "frames_classified": 9, "frames_dropped": 1, "deadline_ms": 33.3,
                "deadline_misses": 0, "fps": 0.0, "source_fps": 30.0, "dvfs": "eenet", "khz": 600000,
                "energy_j_per_frame": 0.01, "energy_j_total": 0.09, "energy_source": "measured",
                "path_shares": {"ae+classifier": 1.0}, "latest": None, "started": 0.0, "uptime_s": 5.0}

    def latest(self) -> tuple:
        return None, None


class Broken(LostSource):
    def status(self) -> dict:
        raise RuntimeError("a bug in the frame loop")


def test_a_bug_is_answered_500_and_the_server_goes_on(pipeline, sample):
    with serving(pipeline, Broken()) as server:
        assert_json_error(call(server, "GET", "/api/status"), 500, "its error output has the traceback")
        assert call(server, "GET", "/healthz").status == 200
        assert call(server, "POST", "/api/classify", sample).status == 200


def test_the_page_says_when_the_source_is_lost_and_when_there_is_none(pipeline, browser):
    with serving(pipeline, LostSource()) as server:
        browser.open(server.url)
        assert browser.wait_for_text("alert", bool).startswith("Source lost: reopening")
        assert browser.text("khz") == "600 MHz (dvfs eenet)" and "(measured)" in browser.text("energy")
    with serving(pipeline) as server:
        browser.open(server.url)
        browser.wait_for_text("source", lambda text: text == "none")
        assert "POST the image bytes to api/classify" in browser.text("nosource")
