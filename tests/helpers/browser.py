"""Headless Chromium for the report tests (tests/test_plots_report.py, tests/test_infer.py).

The browser is looked up exactly as `.ci/run` does (the first of BROWSERS on PATH), so CI installs
one when, and only when, these tests would not find one.
"""

from __future__ import annotations

import base64
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
  pytest.fail(f'none of {", ".join(BROWSERS)} is on PATH: install one (`apt-get install -y chromium`) '
              'or set GANOMALY_SKIP_BROWSER=1 to skip this test deliberately')


def dump_dom(page: Path, profile: Path, *flags: str, timeout: float = 60) -> str:
  """The DOM of page after Chromium parsed it and ran its scripts (`flags`: more Chromium flags).

  Everything Chromium writes goes under `profile` (a temporary folder), never under $HOME.
  """
  cmd = [find_chromium(), '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic',
         '--no-first-run', '--disable-background-networking', '--disable-component-update',
         '--disable-sync', f'--user-data-dir={profile}', *flags, '--dump-dom',
         Path(page).resolve().as_uri()]
  # --user-data-dir holds the profile, but Chromium's crash reporter still writes under
  # $XDG_CONFIG_HOME (default ~/.config/chromium): point HOME and the XDG folders into the profile too.
  profile = Path(profile)
  env = {**os.environ, 'HOME': str(profile / 'home'), 'XDG_CONFIG_HOME': str(profile / 'config'),
         'XDG_CACHE_HOME': str(profile / 'cache'), 'XDG_DATA_HOME': str(profile / 'data')}
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
