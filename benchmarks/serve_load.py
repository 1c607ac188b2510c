"""Load on ``run.py serve``: concurrent clients posting an image to ``/api/classify`` for a while.

    .venv/bin/python benchmarks/serve_load.py build/fmnist/bundle                    # 16 clients, 20 s
    .venv/bin/python benchmarks/serve_load.py tests/data/tiny-build/bundle --clients 32 --seconds 60 --json

Starts the bundle's own ``run.py serve`` on a free loopback port (a process of its own, so that its memory is its
own), posts one image (``--image``, default the bundle's first sample) from ``--clients`` threads, each on a
keep-alive connection (a new one after an error closes it), for ``--seconds``; then stops the server with SIGTERM.
Reports requests per second, the latency median and p99 of the answered requests, the answers by status code (503,
the server's backpressure beyond ``--max-in-flight``, is the only error allowed: any other makes the exit status 1),
and the server's resident memory (``VmRSS`` of ``/proc/PID/status``) before the load, at its end, and its peak
(``VmHWM``). A benchmark, not a test: the figures depend on the machine; RESULTS.md keeps them.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

ALLOWED = {200, 503}


def memory_kib(pid: int) -> dict:
    """``VmRSS`` and ``VmHWM`` of ``pid``, in KiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0])
    return fields


def start_server(bundle: Path, max_in_flight: int, extra: list) -> tuple:
    process = subprocess.Popen([sys.executable, str(bundle / "run.py"), "serve", "--listen", "127.0.0.1:0",
                                "--max-in-flight", str(max_in_flight), *extra],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = process.stdout.readline()
    if not line.startswith("serving http://"):
        process.kill()
        raise SystemExit(f"error: run.py serve did not start: {line}{process.stderr.read()}")
    host, _, port = line.split()[1].removeprefix("http://").rstrip("/").rpartition(":")
    return process, (host, int(port))


def post(connection: http.client.HTTPConnection, body: bytes) -> int:
    connection.request("POST", "/api/classify", body=body, headers={"Content-Type": "application/octet-stream"})
    response = connection.getresponse()
    response.read()
    if response.getheader("Connection", "").lower() == "close":
        connection.close()
    return response.status


def client(address: tuple, body: bytes, until: float, results: list) -> None:
    """Post until ``until``; (status or error name, seconds) per request into ``results``."""
    connection = http.client.HTTPConnection(*address, timeout=60)
    while (began := time.perf_counter()) < until:
        try:
            outcome = post(connection, body)
        except (OSError, http.client.HTTPException) as error:
            outcome = f"connection error: {type(error).__name__}"
            connection.close()
        results.append((outcome, time.perf_counter() - began))
    connection.close()


def percentile(values: list, share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))] if ordered else float("nan")


def run(args: argparse.Namespace) -> dict:
    image = args.image or sorted((args.bundle / "samples").glob("*"))[0]
    body = Path(image).read_bytes()
    process, address = start_server(args.bundle, args.max_in_flight, args.serve_option or [])
    try:
        first = http.client.HTTPConnection(*address, timeout=60)
        if post(first, body) != 200:
            raise SystemExit(f"error: {image} is not classified by the server")
        first.close()
        before = memory_kib(process.pid)
        results: list = []
        until = time.perf_counter() + args.seconds
        threads = [threading.Thread(target=client, args=(address, body, until, results)) for _ in range(args.clients)]
        began = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        seconds = time.perf_counter() - began
        after = memory_kib(process.pid)
    finally:
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    codes = collections.Counter(str(outcome) for outcome, _ in results)
    answered = [latency for outcome, latency in results if outcome == 200]
    errors = {code: count for code, count in codes.items() if code != "200"}
    return {
        "bundle": str(args.bundle), "image": str(image), "image_bytes": len(body), "clients": args.clients,
        "seconds": round(seconds, 3), "max_in_flight": args.max_in_flight, "requests": len(results),
        "classified_per_s": round(len(answered) / seconds, 1), "answers_per_s": round(len(results) / seconds, 1),
        "latency_ms_p50": round(percentile(answered, 0.50) * 1e3, 3),
        "latency_ms_p99": round(percentile(answered, 0.99) * 1e3, 3),
        "answers": dict(sorted(codes.items())), "errors": errors,
        "only_backpressure": all(code in {str(c) for c in ALLOWED} for code in codes),
        "rss_mib_before": round(before["VmRSS"] / 1024, 2), "rss_mib_after": round(after["VmRSS"] / 1024, 2),
        "rss_mib_growth": round((after["VmRSS"] - before["VmRSS"]) / 1024, 2),
        "rss_mib_peak": round(after["VmHWM"] / 1024, 2),
        "server_exit": process.returncode, "server_summary": (out.strip().splitlines() or [""])[-1],
        "server_stderr_tail": err.strip().splitlines()[-20:],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path, help="a bundle directory (its run.py is started)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--seconds", type=float, default=20.0, help="how long they post (default 20)")
    parser.add_argument("--image", type=Path, default=None,
                        help="the image posted (default: the bundle's first sample)")
    parser.add_argument("--max-in-flight", type=int, default=4, help="the server's --max-in-flight (default 4)")
    parser.add_argument("--serve-option", action="append", default=None, metavar="OPTION",
                        help="another option for run.py serve (repeatable, e.g. --serve-option=--threads=2)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    report = run(args)
    if args.json:
        print(json.dumps(report, indent=2, allow_nan=False))
    else:
        print(f"{report['clients']} clients for {report['seconds']:.1f} s: {report['classified_per_s']} images "
              f"classified/s ({report['answers_per_s']} answers/s), latency p50 {report['latency_ms_p50']} ms, "
              f"p99 {report['latency_ms_p99']} ms; answers {report['answers']}")
        print(f"server memory: {report['rss_mib_before']} MiB before, {report['rss_mib_after']} MiB after "
              f"({report['rss_mib_growth']:+} MiB), peak {report['rss_mib_peak']} MiB; exit {report['server_exit']}: "
              f"{report['server_summary']}")
    return 0 if report["only_backpressure"] and report["server_exit"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
