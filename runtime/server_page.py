"""The page ``run.py serve`` answers ``GET /`` with: one self-contained HTML document (inline style and script, nothing
from another site, so it works on a board with no internet), that polls ``api/status`` every ``POLL_MS`` and shows
the latest frame (``api/latest.jpg``), its class and confidence, frames per second, drops, deadline misses, the CPU
frequency, the energy per frame (modelled or measured, said), the pipeline's path shares and the source's state (a
lost source is said while it is reopened). Values reach the page through ``textContent`` only, never as HTML; the
Content-Security-Policy allows exactly this script and style (by hash) and requests to this server.
"""

from __future__ import annotations

import base64
import hashlib
from types import MappingProxyType

POLL_MS = 500

STYLE = """
body { font: 16px/1.4 system-ui, sans-serif; margin: 0; background: #f4f5f7; color: #1d2330; }
header { background: #1d2330; color: #fff; padding: .6em 1em; display: flex; gap: 1em; align-items: baseline; }
header h1 { font-size: 1.1em; margin: 0; }
main { display: flex; flex-wrap: wrap; gap: 1.5em; padding: 1em; }
#frame { width: 320px; max-width: 90vw; image-rendering: pixelated; background: #000; min-height: 120px; }
#class { font-size: 2.4em; font-weight: 600; margin: 0; }
.alert { background: #b3261e; color: #fff; padding: .5em 1em; font-weight: 600; }
.note { background: #fff3c4; padding: .5em 1em; }
table { border-collapse: collapse; } td { padding: .15em .8em .15em 0; } td:first-child { color: #5a6270; }
footer { color: #5a6270; font-size: .85em; padding: 0 1em 1em; }
"""

SCRIPT = """
"use strict";
const $ = (id) => document.getElementById(id);
let shownSeq = null;
const STATES = {opening: "Opening the source\\u2026", lost: "Source lost: reopening\\u2026",
                reopening: "Source lost: reopening\\u2026", ended: "The source has ended.", stopped: "Stopped."};
function put(id, value) { $(id).textContent = value; }
function number(value, digits, unit) {
  return (typeof value === "number" && isFinite(value)) ? value.toFixed(digits) + (unit || "") : "\\u2013";
}
function show(s) {
  const live = s.source_state !== null && s.source_state !== undefined;
  put("pipeline", s.pipeline);
  put("source", live ? s.source + " (" + s.source_state + ")" : "none");
  $("nosource").hidden = live;
  const alert = STATES[s.source_state];
  $("alert").hidden = !alert;
  put("alert", alert ? alert + " " + s.source : "");
  const latest = s.latest || null;
  put("class", latest ? latest.class_name : "\\u2013");
  put("seq", latest ? "frame " + latest.seq : "");
  put("confidence", latest ? "confidence " + number(100 * latest.confidence, 1, " %") + ", path " + latest.path : "");
  put("fps", number(s.fps, 1, " frames/s") + " (source " + number(s.source_fps, 1, " frames/s") + ")");
  put("drops", number(s.frames_dropped, 0) + " of " + number(s.frames_read, 0) + " read");
  put("misses", number(s.deadline_misses, 0) + " of " + number(s.frames_classified, 0) +
      " classified (deadline " + number(s.deadline_ms, 1, " ms") + ")");
  put("khz", s.khz ? number(s.khz / 1000, 0, " MHz") + " (dvfs " + s.dvfs + ")"
                   : (live ? "not set (dvfs " + s.dvfs + ")" : "\\u2013"));
  put("energy", number(s.energy_j_per_frame * 1000, 3, " mJ") + " per frame (" + (s.energy_source || "\\u2013") + ")");
  const paths = $("paths");
  paths.replaceChildren();
  for (const [path, share] of Object.entries(s.path_shares || {})) {
    const item = document.createElement("li");
    item.textContent = path + ": " + number(100 * share, 1, " %");
    paths.append(item);
  }
  const server = s.server;
  put("requests", server.requests_total + " requests; " + server.posted.classified + " posted images classified, " +
      server.posted.refused + " refused; up " + number(server.uptime_s, 0, " s"));
  if (latest && latest.seq !== shownSeq) {
    shownSeq = latest.seq;
    $("frame").src = "api/latest.jpg?seq=" + encodeURIComponent(latest.seq);
  }
}
async function poll() {
  try {
    const answer = await fetch("api/status", {cache: "no-store", credentials: "same-origin"});
    if (!answer.ok) { throw new Error("HTTP " + answer.status); }
    show(await answer.json());
    $("offline").hidden = true;
  } catch (error) {
    $("offline").hidden = false;
    put("offline", "The server does not answer (" + error.message + "); retrying");
  }
  setTimeout(poll, POLL_MS);
}
poll();
""".replace("POLL_MS", str(POLL_MS))

_BODY = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>cbnet-tl live</title><style>STYLE</style></head>
<body>
<header><h1>cbnet-tl</h1><span>pipeline <b id="pipeline">\u2013</b></span><span>source <b id="source">\u2013</b></span>
</header>
<div id="alert" class="alert" hidden></div>
<div id="offline" class="alert" hidden></div>
<div id="nosource" class="note" hidden>No source: this server classifies the images it is sent
(POST the image bytes to api/classify). Start it with --source for a live feed.</div>
<main>
<img id="frame" alt="the latest classified frame">
<section>
<p id="class">\u2013</p><p id="confidence"></p><p id="seq"></p>
<table>
<tr><td>frames per second</td><td id="fps">\u2013</td></tr>
<tr><td>dropped frames</td><td id="drops">\u2013</td></tr>
<tr><td>deadline misses</td><td id="misses">\u2013</td></tr>
<tr><td>CPU frequency</td><td id="khz">\u2013</td></tr>
<tr><td>energy</td><td id="energy">\u2013</td></tr>
<tr><td>path shares</td><td><ul id="paths"></ul></td></tr>
</table>
</section>
</main>
<footer id="requests"></footer>
<script>SCRIPT</script>
</body></html>
"""


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode("ascii") + "'"


PAGE = _BODY.replace("STYLE", STYLE, 1).replace("<script>SCRIPT", "<script>" + SCRIPT, 1).encode("utf-8")
PAGE_HEADERS = MappingProxyType({
    "Content-Security-Policy": f"default-src 'none'; script-src {_sha256(SCRIPT)}; style-src {_sha256(STYLE)}; "
                               "img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; "
                               "frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
})
