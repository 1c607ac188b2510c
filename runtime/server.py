"""The HTTP server of ``run.py serve``: a page and an API on ``http.server`` (stdlib only), over a pipeline and, with a
source, the frame loop (``live.LiveLoop``) that classifies it.

    server = make_server(pipeline, ServerConfig(port=0), loop=None)   # port 0: any free port
    threading.Thread(target=server.serve_forever, daemon=True).start()
    ... server.shutdown(); server.server_close()

Tokens: ``Authorization: Bearer TOKEN``, or HTTP Basic with the token as the password (any user name), which is
what a browser sends after its password prompt; compared in constant time (``hmac.compare_digest``).

Endpoints: ``GET /`` (the page, ``server_page``), ``GET /api/status``, ``GET /api/latest``, ``GET /api/latest.jpg``,
``POST /api/classify`` (the body is an image; the answer is ``run.py classify --json``'s object for one file),
``GET /metrics`` (Prometheus text, ``server_metrics``) and ``GET /healthz``. Every error is one JSON object with its
code (``server_http``). Bounds: ``max_in_flight`` classifications at once (beyond: ``503`` with ``Retry-After``;
a posted body is read before it takes a place, and the GETs, cheap, take none, so slow clients starve nothing),
``max_connections`` open connections, the body and pixel limits, the read timeout and minimum body rate. No file
named by a request is ever opened: the routes are fixed strings, and a posted body goes to a private temporary file.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import ipaddress
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Optional
from urllib.parse import urlsplit

from cbnet_tl.runtime.classify import classify_json
from cbnet_tl.runtime.errors import ConfigError
from cbnet_tl.runtime.images import MAX_PIXELS_DEFAULT
from cbnet_tl.runtime.server_http import RETRY_AFTER_S, BoundedHTTPServer, JsonRequestHandler
from cbnet_tl.runtime.server_metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE, ServerStats, render_metrics
from cbnet_tl.runtime.server_page import PAGE, PAGE_HEADERS

# path -> {method: handler method}; nothing else is served
ROUTES = {"/": {"GET": "get_page"}, "/api/status": {"GET": "get_status"}, "/api/latest": {"GET": "get_latest"},
          "/api/latest.jpg": {"GET": "get_latest_jpeg"}, "/api/classify": {"POST": "post_classify"},
          "/metrics": {"GET": "get_metrics"}, "/healthz": {"GET": "get_health"}}
LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})
POSTED_FILE = "-"  # the "file" of a posted image's record: it had no file name
# a 401's: API clients send the bearer token; a browser prompts for Basic credentials (the token as the password)
CHALLENGES = (("WWW-Authenticate", 'Bearer realm="cbnet-tl"'),
              ("WWW-Authenticate", 'Basic realm="cbnet-tl", charset="UTF-8"'))


@dataclass(frozen=True)
class ServerConfig:
    """Where the server listens and its bounds; checked on construction (``ConfigError``)."""

    host: str = "127.0.0.1"
    port: int = 8080
    token: Optional[str] = field(default=None, repr=False)
    max_body_bytes: int = 16 * 2**20
    max_pixels: int = MAX_PIXELS_DEFAULT
    max_in_flight: int = 4
    read_timeout_s: float = 10.0
    max_connections: int = 64

    def __post_init__(self):
        for name in ("max_body_bytes", "max_pixels", "max_in_flight"):
            if getattr(self, name) < 1:
                raise ConfigError(f"Expected --{name.replace('_', '-')} >= 1. Received: {getattr(self, name)}")
        if not 0 < self.read_timeout_s <= 3600:
            raise ConfigError(f"Expected --read-timeout between 0 and 3600 seconds. Received: {self.read_timeout_s}")
        if self.max_connections < self.max_in_flight:
            raise ConfigError(f"Expected max_connections >= --max-in-flight ({self.max_in_flight}). "
                              f"Received: {self.max_connections}")
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"Expected a port from 0 to 65535. Received: {self.port}")


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bearer_token(header: Optional[str]) -> str:
    """The token an ``Authorization`` header carries: ``Bearer TOKEN``, or Basic ``user:TOKEN``; "" for none."""
    scheme, _, value = (header or "").strip().partition(" ")
    if scheme.lower() == "bearer":
        return value.strip()
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return ""
    return ""


def token_matches(header: Optional[str], token: str) -> bool:
    return hmac.compare_digest(bearer_token(header).encode("utf-8"), token.encode("utf-8"))


class _Locked:
    """A pipeline whose ``classify`` holds ``lock`` (TFLite interpreters are not thread-safe); the rest is the
    pipeline's. Decoding a posted image happens outside the lock, beside the frame loop."""

    def __init__(self, pipeline, lock) -> None:
        self._pipeline, self._lock = pipeline, lock

    def classify(self, images, hook=None):
        with self._lock:
            return self._pipeline.classify(images, hook)

    def __getattr__(self, name):
        return getattr(self._pipeline, name)


class LiveServer(BoundedHTTPServer):
    """The server: the pipeline, the frame loop (or None), the bounds and the counts of what it answered."""

    def __init__(self, pipeline, config: ServerConfig, loop=None) -> None:
        self.pipeline, self.loop, self.config = pipeline, loop, config
        self.lock = loop.lock if loop is not None else threading.Lock()
        self.stats = ServerStats(config.max_in_flight)
        self._slots = threading.BoundedSemaphore(config.max_in_flight)
        try:
            self.posted_dir = Path(tempfile.mkdtemp(prefix="cbnet-serve-"))
        except OSError as error:
            raise ConfigError(f"Cannot make a folder for posted images in {tempfile.gettempdir()}: "
                              f"{error.strerror or error}; set TMPDIR to a writable folder") from None
        try:
            super().__init__((config.host, config.port), ServeHandler, config.max_connections)
        except OSError as error:
            shutil.rmtree(self.posted_dir, ignore_errors=True)
            raise ConfigError(f"Cannot listen on {config.host}:{config.port}: {error.strerror or error}") from None

    def host_allowed(self, header: Optional[str]) -> bool:
        """Without a token, on loopback: only a Host header naming loopback (a page of another site, reaching this
        server through DNS rebinding, may not read the camera)."""
        if self.config.token is not None or not is_loopback(self.config.host) or not header:
            return True
        host = header.strip()
        host = host[1:host.index("]")] if host.startswith("[") and "]" in host else host.rpartition(":")[0] or host
        return is_loopback(host)

    @contextlib.contextmanager
    def slot(self):
        """One of ``max_in_flight`` places for a classification: yields False when all are taken."""
        if not self._slots.acquire(blocking=False):
            yield False
            return
        self.stats.entered(+1)
        try:
            yield True
        finally:
            self.stats.entered(-1)
            self._slots.release()

    def refused_connection(self) -> None:
        self.stats.answered("other", HTTPStatus.SERVICE_UNAVAILABLE)

    def server_close(self) -> None:
        super().server_close()
        shutil.rmtree(self.posted_dir, ignore_errors=True)

    def status(self) -> dict:
        live = self.loop.status() if self.loop is not None else {"source": None, "source_state": None}
        return {"pipeline": self.pipeline.name, "bundle_version": self.pipeline.bundle.manifest.version, **live,
                "server": self.stats.snapshot(self.url, self.config.token is not None)}

    def classify_body(self, body: bytes) -> tuple:
        """(code, JSON object) for a posted image: ``run.py classify --json``'s object for one file, its
        ``file`` "-"; or 422 with the reason an unreadable one was refused."""
        from cbnet_tl.runtime.api import classify_paths

        handle, name = tempfile.mkstemp(dir=self.posted_dir)
        try:
            with os.fdopen(handle, "wb") as file:
                file.write(body)
            record, = classify_paths(_Locked(self.pipeline, self.lock), [Path(name)],
                                     max_pixels=self.config.max_pixels, collect_errors=True)
        finally:
            os.unlink(name)
        if "error" in record:  # its reason, without the temporary file's name
            self.stats.posted(False)
            reason = record["error"].replace(name, "the body")
            return HTTPStatus.UNPROCESSABLE_ENTITY, {"error": f"Expected an image the bundle reads. Received: "
                                                              f"{reason}", "status": 422}
        self.stats.posted(True)
        return HTTPStatus.OK, classify_json(self.pipeline, [{**record, "file": POSTED_FILE}])


class ServeHandler(JsonRequestHandler):
    server: LiveServer

    def setup(self) -> None:
        self.read_timeout_s = self.server.config.read_timeout_s
        self.max_body_bytes = self.server.config.max_body_bytes
        self.route_name = "other"
        super().setup()

    def answered(self, code: int) -> None:
        self.server.stats.answered(self.route_name, code)

    def route(self) -> None:
        path = urlsplit(self.path).path
        methods = ROUTES.get(path)
        self.route_name = path if methods is not None else "other"
        if path == "/healthz" and self.command == "GET":
            return self.get_health()  # never needs a token, nor a slot
        if not self.server.host_allowed(self.headers.get("Host")):
            return self.send_error(HTTPStatus.FORBIDDEN, "Expected a Host header naming loopback (localhost, "
                                   f"127.0.0.1, [::1]). Received: {self.headers.get('Host')!r}")
        token = self.server.config.token
        if token is not None and not token_matches(self.headers.get("Authorization"), token):
            return self.send_error(HTTPStatus.UNAUTHORIZED, "Expected Authorization: Bearer TOKEN (the token in "
                                   "the server's --token-file). Received " +
                                   ("a wrong token" if self.headers.get("Authorization") else "none"),
                                   headers=CHALLENGES)
        if methods is None:
            return self.send_error(HTTPStatus.NOT_FOUND, f"Expected one of {sorted(ROUTES)}. Received: {path[:200]!r}")
        if self.command not in methods:
            return self.send_error(HTTPStatus.METHOD_NOT_ALLOWED, f"Expected {' or '.join(methods)} for {path}. "
                                   f"Received: {self.command[:20]}", headers={"Allow": ", ".join(methods)})
        getattr(self, methods[self.command])()  # no slot: only post_classify takes one, once it has the body

    def get_health(self) -> None:
        self.send_body(HTTPStatus.OK, b"ok\n", "text/plain; charset=utf-8")

    def get_page(self) -> None:
        self.send_body(HTTPStatus.OK, PAGE, "text/html; charset=utf-8", PAGE_HEADERS)

    def get_status(self) -> None:
        self.send_json(HTTPStatus.OK, self.server.status())

    def get_metrics(self) -> None:
        self.send_body(HTTPStatus.OK, render_metrics(self.server.status()).encode("utf-8"), METRICS_CONTENT_TYPE)

    def _latest(self) -> tuple:
        if self.server.loop is None:
            self.send_error(HTTPStatus.NOT_FOUND, "Expected a server with a source (run.py serve --source SRC). "
                            "Received none: this one classifies only what it is sent (POST /api/classify)")
            return None, None
        record, jpeg = self.server.loop.latest()
        if record is None:
            state = self.server.loop.status().get("source_state")
            self.send_error(HTTPStatus.NOT_FOUND, f"Expected a classified frame. Received none yet (source {state})")
        return record, jpeg

    def get_latest(self) -> None:
        record, _ = self._latest()
        if record is not None:
            self.send_json(HTTPStatus.OK, record)

    def get_latest_jpeg(self) -> None:
        record, jpeg = self._latest()
        if record is not None and jpeg is None:
            self.send_error(HTTPStatus.NOT_FOUND, "Expected the latest frame as JPEG. Received none for it")
        elif record is not None:
            self.send_body(HTTPStatus.OK, jpeg, "image/jpeg", {"X-Frame-Seq": str(record.get("seq"))})

    def post_classify(self) -> None:
        if (length := self.body_length()) is None:
            return
        content_type = self.headers.get("Content-Type", "")
        if content_type.lower().startswith("multipart/"):
            return self.send_error(HTTPStatus.UNSUPPORTED_MEDIA_TYPE, "Expected the image bytes as the body (curl "
                                   f"--data-binary @IMAGE). Received: a form ({content_type[:60]})")
        body = self.read_body(length)  # before a slot: a slow client holds its connection (and thread), no slot
        if body is None:
            return
        with self.server.slot() as granted:
            if not granted:
                return self.send_error(HTTPStatus.SERVICE_UNAVAILABLE, f"Expected at most "
                                       f"{self.server.config.max_in_flight} requests at once (--max-in-flight). "
                                       "Received one more; retry", headers={"Retry-After": str(RETRY_AFTER_S)})
            began = time.perf_counter()
            code, payload = self.server.classify_body(body)
            self.send_json(code, payload, {"Server-Timing": f"classify;dur={(time.perf_counter() - began) * 1e3:.3f}"})


def make_server(pipeline, config: ServerConfig, loop=None) -> LiveServer:
    """A bound server (``config.port`` 0: a free port, see ``server.url``); run ``serve_forever`` to answer."""
    return LiveServer(pipeline, config, loop)
