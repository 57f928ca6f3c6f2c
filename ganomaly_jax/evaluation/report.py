"""A static HTML report of scored images that opens from disk (file://), with no server.

`write_paged_report` serves inference over whole folders (tens of thousands of images): the page
holds a small JSON index (name, score, relative map path, verdict per image) and a few lines of JS
that show the most and the least anomalous images first and the rest one page at a time; thumbnails
are the map PNGs already written under the report's folder, referenced by relative path with
`loading="lazy"`. The page stays a few MB and the browser decodes only the pictures in view; the
report folder (index.html + maps/) opens anywhere from disk.

The CSS and JS are inline, and a Content-Security-Policy forbids loading anything but inline code and
local pictures, so the page cannot silently depend on the network.
"""

from __future__ import annotations

import html
import json
import math
import os
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any

# epath: the report may be written to a gs:// folder as well as a local one.
from etils.epath import Path
import numpy as np

from ganomaly_jax.runtime import rundir

PathLike = str | os.PathLike

# The paged report's pictures are files beside the page: 'self' and file: allow exactly those (Chromium
# treats file: pages as opaque origins, so 'self' alone would block them); still nothing from a network.
_PAGED_CSP = (
    "default-src 'none'; img-src 'self' file: data:; style-src 'unsafe-inline'; "
    "script-src 'unsafe-inline'"
)

_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; background: #fafafa; }
h1 { font-size: 1.4em; margin-bottom: 0.2em; }
table.metrics { border-collapse: collapse; margin: 0.5em 0 1.5em; }
table.metrics td, table.metrics th { border: 1px solid #ccc; padding: 0.25em 0.7em; text-align: left; }
table.metrics td.num { text-align: right; font-family: monospace; }
#entries { display: flex; flex-wrap: wrap; gap: 0.8em; }
.entry { background: #fff; border: 1px solid #ddd; border-radius: 4px; padding: 0.4em; width: 272px; }
.entry .pics { display: flex; gap: 4px; }
.entry img { width: 132px; height: 132px; object-fit: contain; image-rendering: pixelated;
             background: #eee; }
.entry .missing { width: 132px; height: 132px; display: flex; align-items: center;
                  justify-content: center; background: #eee; color: #888; font-size: 0.8em; }
.entry .name { font-size: 0.8em; word-break: break-all; margin-top: 0.3em; }
.entry .score { font-family: monospace; font-weight: bold; }
.entry .verdict { font-weight: bold; padding: 0 0.3em; }
.entry .verdict.anomalous { color: #fff; background: #c0392b; }
.entry .verdict.normal { color: #1e7e34; }
.skipped li { font-family: monospace; font-size: 0.85em; word-break: break-all; }
"""


def _score_key(entry: Mapping[str, Any]) -> float:
  """Sort key for descending score; missing or non-finite scores go last."""
  try:
    score = float(entry.get('score'))
  except (TypeError, ValueError):
    return math.inf
  return -score if math.isfinite(score) else math.inf


def _format_value(value: Any) -> tuple[str, bool]:
  """Returns (text, is_number) for a metrics-table cell."""
  if isinstance(value, (bool, np.bool_)):
    return str(bool(value)), False
  if isinstance(value, (int, np.integer)):
    return str(int(value)), True
  if isinstance(value, (float, np.floating)):
    return f'{float(value):.4f}', True
  if isinstance(value, np.ndarray) and value.size == 1:
    return _format_value(value.item())
  if isinstance(value, (Mapping, list, tuple)):
    return json.dumps(value, default=str, sort_keys=isinstance(value, Mapping)), False
  return str(value), False


def _metrics_table(metrics: Mapping[str, Any]) -> str:
  rows = []
  for key, value in metrics.items():
    if key == 'skipped':
      continue
    text, is_number = _format_value(value)
    cls = ' class="num"' if is_number else ''
    rows.append(f'<tr><th>{html.escape(str(key))}</th><td{cls}>{html.escape(text)}</td></tr>')
  if not rows:
    return '<p>No metrics.</p>'
  return '<table class="metrics">\n' + '\n'.join(rows) + '\n</table>'


def _skipped_section(skipped: Any) -> str:
  """Lists files the evaluation skipped (reason -> paths), so silent data loss is visible."""
  if not skipped:
    return ''
  if not isinstance(skipped, Mapping):
    skipped = {'skipped': skipped}
  total = sum(len(v) if isinstance(v, (list, tuple, set)) else 1 for v in skipped.values())
  parts = [f'<section class="skipped" id="skipped"><h2>Skipped files ({total})</h2>']
  for reason, paths in skipped.items():
    if isinstance(paths, (str, os.PathLike)) or not isinstance(paths, (list, tuple, set)):
      paths = [paths]
    parts.append(f'<h3>{html.escape(str(reason))} ({len(paths)})</h3><ul>')
    parts.extend(f'<li>{html.escape(str(p))}</li>' for p in paths)
    parts.append('</ul>')
  parts.append('</section>')
  return '\n'.join(parts)


def _page_head(title_html: str, csp: str, css: str) -> str:
  """The start of a report page, up to its <h1>: charset, CSP, viewport, title and style."""
  return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title_html}</title>
<style>{css}</style>
</head>
<body>
<h1>{title_html}</h1>"""


# Entries per page of the full list, and per strip of the most / least anomalous images.
PAGE_SIZE = 100
EXTREMES = 12

_PAGED_CSS = _CSS + """
.strip { display: flex; flex-wrap: wrap; gap: 0.8em; margin-bottom: 1em; }
.entry { width: 134px; }  /* one picture per card: the map over the image */
.entry img { display: block; }
.pager { margin: 0.6em 0; }
.pager button { margin-right: 0.4em; }
"""

# Renders the JSON index: two strips (most and least anomalous) and one page of the full list, in the
# chosen order. Only the entries on screen exist in the DOM, and their <img loading="lazy"> fetch the
# map PNG when scrolled into view, so 20,000 images cost the browser what one page does.
_PAGED_JS = """
(function () {
  var index = JSON.parse(document.getElementById('index').textContent);
  // [name, score or null, map path or null, anomalous 0/1 or null], highest score first
  var items = index.entries;
  var pageSize = index.page_size, page = 0, descending = true;
  function fmt(s) { return s === null ? 'nan' : Number(s.toPrecision(6)).toString(); }
  function card(item, cls) {
    var div = document.createElement('div');
    div.className = cls;
    div.setAttribute('data-score', fmt(item[1]));
    var pic;
    if (item[2] === null) {
      pic = document.createElement('div');
      pic.className = 'missing';
      pic.textContent = 'no map';
    } else {
      pic = document.createElement('img');
      pic.loading = 'lazy';
      pic.alt = 'anomaly map';
      pic.src = item[2];
    }
    var name = document.createElement('div');
    name.className = 'name';
    name.title = item[0];
    name.textContent = item[0];
    var score = document.createElement('div');
    score.innerHTML = 'score <span class="score"></span>';
    score.firstElementChild.textContent = fmt(item[1]);
    div.appendChild(pic); div.appendChild(name); div.appendChild(score);
    if (item[3] !== null) {  // the run's validation threshold decided this image
      var verdict = document.createElement('div');
      verdict.className = 'verdict' + (item[3] ? ' anomalous' : '');
      verdict.textContent = item[3] ? 'anomalous' : 'normal';
      div.setAttribute('data-anomalous', String(item[3]));
      div.appendChild(verdict);
    }
    return div;
  }
  function fill(id, list, cls) {
    var box = document.getElementById(id);
    box.textContent = '';
    list.forEach(function (item) { box.appendChild(card(item, cls)); });
  }
  var k = Math.min(index.extremes, items.length);
  fill('most', items.slice(0, k), 'entry extreme');
  // NaN scores sort last, so the least anomalous are the last finite ones.
  var finite = items.filter(function (it) { return it[1] !== null; });
  fill('least', finite.slice(Math.max(finite.length - k, 0)).reverse(), 'entry extreme');
  var pages = Math.max(1, Math.ceil(items.length / pageSize));
  function show() {
    var ordered = descending ? items : finite.slice().reverse().concat(
        items.filter(function (it) { return it[1] === null; }));
    fill('entries', ordered.slice(page * pageSize, (page + 1) * pageSize), 'entry');
    document.getElementById('page').textContent = (page + 1) + ' / ' + pages;
    document.getElementById('order').textContent =
        descending ? 'most anomalous first' : 'least anomalous first';
  }
  function go(p) { page = Math.min(Math.max(p, 0), pages - 1); show(); }
  document.getElementById('first').onclick = function () { go(0); };
  document.getElementById('prev').onclick = function () { go(page - 1); };
  document.getElementById('next').onclick = function () { go(page + 1); };
  document.getElementById('last').onclick = function () { go(pages - 1); };
  document.getElementById('flip').onclick = function () { descending = !descending; go(0); };
  show();
  document.getElementById('count').textContent = String(items.length);
})();
"""


def _json_score(entry: Mapping[str, Any]) -> float | None:
  try:
    score = float(entry.get('score'))
  except (TypeError, ValueError):
    return None
  return score if math.isfinite(score) else None


def script_json(value: Any) -> str:
  """JSON that is safe inside an HTML <script> element whatever strings it holds.

  Every <, > and & is written as a \\u escape (the same JSON string), so no file name can end the
  element (`</script>`), open an HTML comment (`<!--`) or start a character reference; U+2028/U+2029
  are escaped too, for tools that read the JSON as JavaScript source.
  """
  text = json.dumps(value, separators=(',', ':'))
  for char, escape in (
      ('<', '\\u003c'),
      ('>', '\\u003e'),
      ('&', '\\u0026'),
      ('\u2028', '\\u2028'),
      ('\u2029', '\\u2029'),
  ):
    text = text.replace(char, escape)
  return text


def file_url(relative: PathLike) -> str:
  """A relative path as a URL path: every character a URL gives a meaning to (#, ?, %, spaces,
  quotes, non-ASCII) percent-encoded; bytes that are not UTF-8 are encoded as they are on disk."""
  return urllib.parse.quote(Path(relative).as_posix(), safe='/', errors='surrogateescape')


def write_paged_report(
    out_dir: PathLike,
    entries: Sequence[Mapping[str, Any]],
    metrics: Mapping[str, Any],
    title: str,
    page_size: int = PAGE_SIZE,
    extremes: int = EXTREMES,
    notes: Sequence[str] = (),
) -> Path:
  """Writes `out_dir/index.html` for any number of entries: JSON index, lazy thumbnails, pages.

  Args:
    out_dir: directory of the report (holds, or will hold, the map PNGs); created if needed.
    entries: one small dict per image: `name` (str), `score` (float, higher = more anomalous; NaN or
      None sorts last), `map_png` (path of the thumbnail relative to out_dir, e.g. 'maps/x.png', or
      None), optionally `anomalous` (0/1 above / below the run's validation threshold; None or
      absent: no threshold). No pixels: the page references the files, so memory and page size are
      O(entries) names.
    metrics: name -> value for the metrics table; a 'skipped' key is listed in its own section.
    title: page title and heading.
    page_size: entries per page of the full list.
    extremes: entries in each of the 'most anomalous' and 'least anomalous' strips.
    notes: sentences shown under the heading (e.g. why there are no verdicts).

  Returns:
    Path of the written index.html. After its script runs, `#most` and `#least` hold
    `<div class="entry extreme">` cards, `#entries` one page of `<div class="entry" data-score=...>`
    cards (highest score first), and `#count` the number of entries.
  """
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  ordered = sorted(entries, key=_score_key)
  index = {
      'page_size': int(max(page_size, 1)),
      'extremes': int(max(extremes, 0)),
      'entries': [
          [
              str(e.get('name', '')),
              _json_score(e),
              None if e.get('map_png') is None else file_url(e['map_png']),
              None if e.get('anomalous') is None else int(e['anomalous']),
          ]
          for e in ordered
      ],
  }
  index_json = script_json(index)  # names are arbitrary text: see script_json
  title_html = html.escape(title)
  notes_html = ''.join(f'<p class="note">{html.escape(n)}</p>\n' for n in notes)
  page = _page_head(title_html, _PAGED_CSP, _PAGED_CSS) + f"""
<p><span id="count"></span> images; each picture is its anomaly map over the resized image.</p>
{notes_html}
<h2>Most anomalous</h2>
<div class="strip" id="most"></div>
<h2>Least anomalous</h2>
<div class="strip" id="least"></div>
<details><summary><b>Metrics</b> of this call and of the run</summary>
{_metrics_table(metrics)}
</details>
{_skipped_section(metrics.get('skipped'))}
<h2>All images ({len(ordered)}), <span id="order"></span></h2>
<div class="pager"><button id="first">&laquo;</button><button id="prev">&lsaquo; previous</button>
page <span id="page"></span>
<button id="next">next &rsaquo;</button><button id="last">&raquo;</button>
<button id="flip">reverse order</button></div>
<div id="entries"></div>
<script type="application/json" id="index">{index_json}</script>
<script>{_PAGED_JS}</script>
</body>
</html>
"""
  path = out_dir / 'index.html'
  # Written then renamed, so a crash mid-write never leaves a truncated report that looks complete.
  rundir.write_text(path, page)
  return path
