"""A static, self-contained HTML report of anomaly-detection results.

`write_html_report` writes one `index.html` that opens from disk (file://) with no server and no
network: every picture is embedded as a base64 `data:` URI, the CSS and the few lines of JS are inline,
and a Content-Security-Policy forbids the page from loading anything else, so a report copied off a
cluster looks the same on a laptop on a plane.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

# epath: the report may be written to a gs:// folder as well as a local one.
from etils.epath import Path
import numpy as np
from PIL import Image

from ganomaly_jax import plots

PathLike = str | os.PathLike

_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'

# Only inline styles/scripts and data: images; anything else (a stray http:// reference) is blocked by
# the browser, so the page cannot silently depend on the network.
_CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'")

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

# Runs at the end of <body>, after every entry is in the DOM. Filling #count proves to a headless
# browser test that the page parsed and its script ran without errors.
_JS = """
(function () {
  var n = document.querySelectorAll('#entries .entry').length;
  document.getElementById('count').textContent = String(n);
})();
"""


def _png_data_uri(png: bytes) -> str:
  return 'data:image/png;base64,' + base64.b64encode(png).decode('ascii')


def _array_to_png(image: np.ndarray, max_size: int) -> bytes:
  """Encodes an image array as PNG, shrunk so its longer side is at most max_size (a thumbnail)."""
  pil = Image.fromarray(plots.to_rgb_uint8(image))
  if max(pil.size) > max_size:
    pil.thumbnail((max_size, max_size))
  buf = io.BytesIO()
  pil.save(buf, format='PNG')
  return buf.getvalue()


def _file_to_png(path: Path, max_size: int) -> bytes:
  """Reads an image file as PNG bytes; small PNGs are embedded verbatim, others re-encoded."""
  data = path.read_bytes()
  if data.startswith(_PNG_SIGNATURE) and len(data) <= 256 * 1024:
    return data
  with Image.open(io.BytesIO(data)) as pil:
    pil = pil.convert('RGB')
    if max(pil.size) > max_size:
      pil.thumbnail((max_size, max_size))
    buf = io.BytesIO()
    pil.save(buf, format='PNG')
  return buf.getvalue()


def _resolve(path: PathLike, out_dir: Path) -> Path:
  """Relative paths are looked up under out_dir (where map PNGs are written), then as given."""
  path = Path(path)
  if path.is_absolute() or not (out_dir / path).exists():
    return path
  return out_dir / path


def _picture(source: Any, out_dir: Path, alt: str, max_size: int) -> str:
  """An <img> with an embedded picture, or a placeholder if the source is missing or unreadable.

  A report is written at the end of a long evaluation, so a missing map should cost a grey box, not the
  whole report.
  """
  try:
    if source is None:
      raise FileNotFoundError('no picture given')
    if isinstance(source, (str, os.PathLike)):
      png = _file_to_png(_resolve(source, out_dir), max_size)
    else:
      png = _array_to_png(np.asarray(source), max_size)
  except (OSError, ValueError) as e:
    return (f'<div class="missing" title="{html.escape(str(e), quote=True)}">'
            f'{html.escape(alt)} unavailable</div>')
  return f'<img src="{_png_data_uri(png)}" alt="{html.escape(alt, quote=True)}">'


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


def _entry_html(entry: Mapping[str, Any], out_dir: Path, max_size: int) -> str:
  name = str(entry.get('name', ''))
  try:
    score = float(entry.get('score'))
  except (TypeError, ValueError):
    score = math.nan
  score_text = f'{score:.6g}'
  label = entry.get('label')
  label_html = ''
  if label is not None:
    if isinstance(label, (int, np.integer, bool, np.bool_)):
      label = 'abnormal' if int(label) else 'normal'
    label_html = f' <span class="label">{html.escape(str(label))}</span>'
  flag = entry.get('anomalous')
  verdict_html, verdict_attr = '', ''
  if flag is not None:
    verdict = 'anomalous' if int(flag) else 'normal'
    verdict_attr = f' data-anomalous="{int(flag)}"'
    verdict_html = f' <span class="verdict {verdict}">{verdict}</span>'
  image_html = _picture(entry.get('image'), out_dir, 'image', max_size)
  map_html = _picture(entry.get('map_png'), out_dir, 'anomaly map', max_size)
  return (f'<div class="entry" data-score="{html.escape(score_text, quote=True)}"{verdict_attr}>'
          f'<div class="pics">{image_html}{map_html}</div>'
          f'<div class="name" title="{html.escape(name, quote=True)}">{html.escape(name)}</div>'
          f'<div>score <span class="score">{html.escape(score_text)}</span>{label_html}'
          f'{verdict_html}</div>'
          '</div>')


def write_html_report(out_dir: PathLike,
                      entries: Sequence[Mapping[str, Any]],
                      metrics: Mapping[str, Any],
                      title: str,
                      thumb_size: int = 256) -> Path:
  """Writes a self-contained `out_dir/index.html` showing scored images and metrics.

  Args:
    out_dir: directory of the report; created if needed.
    entries: one dict per image with keys `name` (str), `score` (float, higher = more anomalous),
      `image` (uint8 or [-1, 1] float HWC array, or a path to an image file), `map_png` (path of the
      anomaly-map PNG, relative to out_dir, e.g. 'maps/x.png'), and optionally `label` (0/1) and
      `anomalous` (0/1: above the run's validation threshold; None or absent: no threshold).
      Pictures are embedded as base64 data URIs; a missing one shows as a placeholder.
    metrics: name -> value for the metrics table. A 'skipped' key (reason -> list of paths) is listed
      in its own section instead.
    title: page title and heading.
    thumb_size: longer side, in pixels, of embedded array images and of re-encoded large files.

  Returns:
    Path of the written index.html. Entries appear sorted by score, highest first, each in a
    `<div class="entry" data-score=...>`; `#count` is filled in by inline JS with the entry count.
  """
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  ordered = sorted(entries, key=_score_key)
  entries_html = '\n'.join(_entry_html(e, out_dir, thumb_size) for e in ordered)
  if not ordered:
    entries_html = '<p>No entries.</p>'
  title_html = html.escape(title)
  page = f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title_html}</title>
<style>{_CSS}</style>
</head>
<body>
<h1>{title_html}</h1>
<p><span id="count"></span> entries, sorted by anomaly score, highest first.</p>
<h2>Metrics</h2>
{_metrics_table(metrics)}
{_skipped_section(metrics.get('skipped'))}
<h2>Entries ({len(ordered)})</h2>
<div id="entries">
{entries_html}
</div>
<script>{_JS}</script>
</body>
</html>
"""
  path = out_dir / 'index.html'
  # Write then rename, so a crash mid-write never leaves a truncated report that looks complete.
  tmp = out_dir / 'index.html.tmp'
  tmp.write_text(page, encoding='utf-8')
  tmp.replace(path)
  return path
