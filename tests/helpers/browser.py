"""Headless Chromium for the report tests (tests/test_plots_report.py, tests/test_infer.py).

The browser is looked up exactly as `.ci/run` does (the first of BROWSERS on PATH), so CI installs
one when, and only when, these tests would not find one.
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
from PIL import Image
import pytest

BROWSERS = ('chromium', 'chromium-browser', 'google-chrome')  # same order as .ci/run
DATA_URI_RE = re.compile(r'\bsrc="data:image/png;base64,([^"]*)"')


def find_chromium() -> str:
  """Path of the first Chromium on PATH; fails the test (skips only if GANOMALY_SKIP_BROWSER=1)."""
  for name in BROWSERS:
    path = shutil.which(name)
    if path:
      return path
  if os.environ.get('GANOMALY_SKIP_BROWSER') == '1':
    pytest.skip('GANOMALY_SKIP_BROWSER=1: headless browser test skipped')
  pytest.fail(
      f'none of {", ".join(BROWSERS)} is on PATH: install one (`apt-get install -y chromium`) '
      'or set GANOMALY_SKIP_BROWSER=1 to skip this test deliberately'
  )


def dump_dom(page: Path, profile: Path, *flags: str, timeout: float = 60) -> str:
  """The DOM of page after Chromium parsed it and ran its scripts (`flags`: more Chromium flags).

  Everything Chromium writes goes under `profile` (a temporary folder), never under $HOME.
  """
  cmd = [
      find_chromium(),
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      f'--user-data-dir={profile}',
      *flags,
      '--dump-dom',
      Path(page).resolve().as_uri(),
  ]
  # --user-data-dir holds the profile, but Chromium's crash reporter still writes under
  # $XDG_CONFIG_HOME (default ~/.config/chromium): point HOME and the XDG folders into the profile too.
  profile = Path(profile)
  env = {
      **os.environ,
      'HOME': str(profile / 'home'),
      'XDG_CONFIG_HOME': str(profile / 'config'),
      'XDG_CACHE_HOME': str(profile / 'cache'),
      'XDG_DATA_HOME': str(profile / 'data'),
  }
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, env=env)
  assert proc.returncode == 0, f'chromium exited {proc.returncode}: {proc.stderr[-2000:]}'
  return proc.stdout


def embedded_images(html: str) -> list[np.ndarray]:
  """Every base64 PNG embedded in html, decoded (a truncated or non-PNG payload raises)."""
  images = []
  for payload in DATA_URI_RE.findall(html):
    with Image.open(io.BytesIO(base64.b64decode(payload, validate=True))) as im:
      assert im.format == 'PNG'
      images.append(np.asarray(im.convert('RGB')))
  return images


# A check injected into a page under test, after the page's own scripts: one eager (not lazy) copy
# of every picture the page shows, which the window's load event waits for; when it fires, '<ok>/<total>'
# goes into #decoded (ok: the picture loaded and has a size) and each failing src into #failed.
# --dump-dom serialises the page after the load event, so the result is there without any timing.
DECODE_CHECK = """<script>
(function () {
  var imgs = Array.prototype.slice.call(document.querySelectorAll('img'));
  var box = document.createElement('div');
  box.id = 'probes';
  box.style.display = 'none';
  var probes = imgs.map(function (img) {
    var probe = document.createElement('img');
    probe.src = img.src;
    box.appendChild(probe);
    return probe;
  });
  document.body.appendChild(box);
  window.addEventListener('load', function () {
    var failed = probes.filter(function (p) { return !(p.complete && p.naturalWidth > 0); });
    var out = document.createElement('pre');
    out.id = 'decoded';
    out.textContent = (probes.length - failed.length) + '/' + probes.length;
    document.body.appendChild(out);
    var list = document.createElement('ul');
    list.id = 'failed';
    failed.forEach(function (p) {
      var li = document.createElement('li'); li.textContent = p.src; list.appendChild(li);
    });
    document.body.appendChild(list);
    box.remove();
  });
})();
</script>
</body>"""


def render_checked(page: Path, profile: Path) -> str:
  """The DOM of `page` after its scripts ran, with DECODE_CHECK's #decoded result in it.

  The page is copied beside itself with the check injected (so relative picture paths still
  resolve). The output is decoded from UTF-8 bytes by hand: text mode would turn a '\\r' in a file
  name into '\\n'.
  """
  page = Path(page)
  checked = page.with_name('_checked_' + page.name)
  checked.write_text(
      page.read_text(encoding='utf-8').replace('</body>', DECODE_CHECK), encoding='utf-8'
  )
  cmd = [
      find_chromium(),
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      f'--user-data-dir={profile}',
      '--window-size=1200,900',
      '--dump-dom',
      checked.resolve().as_uri(),
  ]
  try:
    proc = subprocess.run(cmd, capture_output=True, timeout=180, check=False)
  finally:
    checked.unlink()
  assert proc.returncode == 0, f'chromium exited {proc.returncode}: {proc.stderr[-2000:]!r}'
  return proc.stdout.decode('utf-8', 'replace')


_CARD_RE = re.compile(
    r'<div class="entry(?: extreme)?" data-score="[^"]*"[^>]*>'
    r'(?:<img [^>]*src="([^"]*)"[^>]*>|<div class="missing">[^<]*</div>)'
    r'<div class="name" title="[^"]*">(.*?)</div>',
    re.S,
)


def cards(dom: str, section: str = 'entries') -> list[dict[str, str]]:
  """The cards a paged report shows from section `section` on (#entries is the last one), as
  {'name': the name shown, 'src': the picture's URL ('' for a card without one)}."""
  return [
      {'src': html.unescape(m.group(1) or ''), 'name': html.unescape(m.group(2))}
      for m in _CARD_RE.finditer(dom[dom.index(f'id="{section}"') :])
  ]
