"""Inference CLI: `python -m ganomaly_jax.infer` on the shared quick masked run (tests/conftest.py).

The browser test needs chromium, chromium-browser or google-chrome on PATH (tests/helpers/browser.py);
without it the test FAILS unless GANOMALY_SKIP_BROWSER=1 (as in test_plots_report).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image
import pytest

import synthetic
from ganomaly_jax.inference import finished_run, image_files, outputs, scoring
from helpers import browser

ENTRY_RE = re.compile(r'<div class="entry"')


@dataclasses.dataclass
class InferRun:
  folder: synthetic.InferFolderInfo
  out: Path
  proc: subprocess.CompletedProcess


def _cli(*args: str, timeout: int = 180) -> subprocess.CompletedProcess:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  return subprocess.run(
      [sys.executable, '-m', 'ganomaly_jax.infer', *args],
      cwd=synthetic.REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=timeout,
  )


def _rows(path: Path) -> list[dict[str, str]]:
  with open(path, newline='') as f:
    return list(csv.DictReader(f))


@pytest.fixture(scope='module')
def inferred(masked_run, tmp_path_factory) -> InferRun:
  """One CLI call over a folder with a corrupt file, a text file, a grey and a non-square image."""
  root = tmp_path_factory.mktemp('infer')
  folder = synthetic.make_infer_folder(root / 'images', masked_run.data)
  out = root / 'out'
  out.mkdir()
  (out / 'keep.txt').write_text('written before inference\n')
  proc = _cli(f'--workdir={masked_run.workdir}', f'--images={folder.root}', f'--out={out}')
  assert proc.returncode == 0, proc.stderr[-3000:]
  return InferRun(folder, out, proc)


@pytest.mark.slow
def test_scores_csv_has_one_row_per_decodable_image(inferred):
  rows = _rows(inferred.out / 'scores.csv')
  assert list(rows[0]) == ['path', 'score', 'anomalous']
  assert sorted(Path(r['path']) for r in rows) == inferred.folder.decodable
  assert [r['path'] for r in rows] == sorted(r['path'] for r in rows)
  scores = {Path(r['path']).name: float(r['score']) for r in rows}
  assert all(np.isfinite(list(scores.values())))
  # Normalised with the run's test-score range: images of the test set fall inside [0, 1].
  for name in ('img_0.png', 'img_1.png', 'img_2.png', 'img_3.png'):
    assert -1e-4 <= scores[name] <= 1 + 1e-4, (name, scores[name])
  assert 'Scored 6 image(s), skipped 2 file(s)' in inferred.proc.stdout


@pytest.mark.slow  # the shared quick run and the inference subprocess
def test_anomalous_column_uses_the_runs_raw_threshold(masked_run, inferred):
  results = masked_run.results
  lo, hi, threshold = results['score_min'], results['score_max'], results['threshold']
  cut = (threshold - lo) / (hi - lo)  # the raw threshold on the scale scores.csv is written in
  rows = _rows(inferred.out / 'scores.csv')
  assert {r['anomalous'] for r in rows} <= {'0', '1'}
  for r in rows:
    score = float(r['score'])
    if abs(score - cut) > 1e-3:  # away from the 6-digit rounding of the written score
      assert r['anomalous'] == str(int(score > cut)), (r, cut)
  page = (inferred.out / 'index.html').read_text(encoding='utf-8')
  # The paged report renders its cards from the embedded index: each entry carries the same verdict.
  index = re.search(r'<script type="application/json" id="index">(.*?)</script>', page, re.S)
  verdicts = {name: flag for name, _, _, flag in json.loads(index.group(1))['entries']}
  by_name = {
      Path(r['path']).relative_to(inferred.folder.root).as_posix(): int(r['anomalous'])
      for r in rows
  }
  assert verdicts == by_name  # cards carry the image's real name, extension included
  assert 'images_anomalous' in page and 'threshold_quantile' in page


@pytest.mark.slow
def test_maps_exist_for_every_scored_image(inferred):
  for row in _rows(inferred.out / 'scores.csv'):
    rel = Path(row['path']).relative_to(inferred.folder.root)
    with Image.open(inferred.out / 'maps' / rel.with_suffix('.png')) as im:
      assert im.format == 'PNG' and im.mode == 'RGB' and im.size == (16, 16)


@pytest.mark.slow
def test_skipped_files_listed_and_nothing_lost(inferred):
  page = (inferred.out / 'index.html').read_text(encoding='utf-8')
  skipped = page[page.index('id="skipped"') : page.index('id="entries"')]
  assert str(inferred.folder.corrupt) in skipped and 'corrupt (1)' in skipped
  assert str(inferred.folder.not_an_image) in skipped and 'not_an_image (1)' in skipped
  assert '.hidden.png' not in page
  assert 'images_scored' in page and 'pixel_pro' in page  # counts and the run's results.json
  assert (inferred.out / 'keep.txt').read_text() == 'written before inference\n'
  assert not [p for p in os.listdir(inferred.out) if p.startswith('.infer-')]


@pytest.mark.slow
@pytest.mark.browser
def test_report_renders_one_entry_per_image_in_chromium(inferred, tmp_path):
  dom = browser.dump_dom(inferred.out / 'index.html', tmp_path / 'profile')
  n = len(inferred.folder.decodable)
  assert len(ENTRY_RE.findall(dom)) == n
  count = re.search(r'<span id="count">([^<]*)</span>', dom)
  assert count is not None and count.group(1) == str(n)
  # The paged report embeds no pixels: every card's picture is a map PNG under OUT that decodes and
  # is one of the maps infer wrote.
  assert not browser.embedded_images(dom)
  shown = [
      re.search(r'src="([^"]*)"', tag).group(1)
      for tag in re.findall(r'<img [^>]*>', dom[dom.index('id="entries"') :])
  ]
  assert len(shown) == n and all(src.startswith('maps/') for src in shown)
  written = {p.relative_to(inferred.out).as_posix() for p in (inferred.out / 'maps').rglob('*.png')}
  assert set(shown) == written
  for src in shown:
    with Image.open(inferred.out / src) as im:
      im.load()


@pytest.mark.slow
def test_workdir_without_checkpoint_is_one_error_line(masked_run, tmp_path):
  workdir = tmp_path / 'untrained'
  workdir.mkdir()
  shutil.copy(masked_run.workdir / 'config.json', workdir)
  images = tmp_path / 'images'
  images.mkdir()
  shutil.copy(masked_run.data.test_good[0], images / 'a.png')
  proc = _cli(
      f'--workdir={workdir}', f'--images={images}', f'--out={tmp_path / "out"}', timeout=120
  )
  assert proc.returncode == 1
  errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and 'no checkpoint' in errors[0], proc.stderr[-2000:]
  assert not (tmp_path / 'out').exists()
  assert sorted(os.listdir(workdir)) == ['config.json']  # nothing created in the workdir either


@pytest.mark.slow
def test_folder_errors(masked_run, tmp_path):
  workdir = str(masked_run.workdir)
  with pytest.raises(finished_run.InferError, match='image folder not found'):
    scoring.infer(workdir, str(tmp_path / 'missing'), str(tmp_path / 'out'))
  empty = tmp_path / 'empty'
  (empty / 'sub').mkdir(parents=True)
  (empty / '.DS_Store').write_bytes(b'x')
  with pytest.raises(finished_run.InferError, match='no file to score'):
    scoring.infer(workdir, str(empty), str(tmp_path / 'out'))
  (empty / 'sub' / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\nnope')
  (empty / 'readme.md').write_text('hi')
  with pytest.raises(
      finished_run.InferError,
      match=r'no decodable image .*all skipped: corrupt: 1, not_an_image: 1',
  ):
    scoring.infer(workdir, str(empty), str(tmp_path / 'out'))
  assert not (tmp_path / 'out').exists()


@pytest.mark.slow
def test_fallback_normalisation_and_overwrite_into_same_out(masked_run, inferred, tmp_path):
  """Without the run's score range the scores are min-max over the images; --overwrite replaces an
  earlier result in OUT, its maps included, and keeps everything else there."""
  workdir = tmp_path / 'run'
  shutil.copytree(masked_run.workdir, workdir)
  (workdir / 'results.json').unlink()
  images = tmp_path / 'images'
  images.mkdir()
  shutil.copy(masked_run.data.test_good[0], images / 'good.png')
  shutil.copy(masked_run.data.test_defect[0], images / 'defect.png')
  out = tmp_path / 'out'
  shutil.copytree(inferred.out, out)  # a previous call's outputs
  with pytest.raises(finished_run.InferError, match='holds an earlier result .*--overwrite'):
    scoring.infer(str(workdir), str(images), str(out))
  summary = scoring.infer(str(workdir), str(images), str(out), overwrite=True)
  assert summary['scored'] == 2 and 'min/max of the scored images' in summary['normalisation']
  assert sorted(float(r['score']) for r in _rows(out / 'scores.csv')) == [0.0, 1.0]
  assert [r['anomalous'] for r in _rows(out / 'scores.csv')] == ['', '']  # no run threshold
  assert sorted(p.name for p in (out / 'maps').iterdir()) == ['defect.png', 'good.png']
  assert (out / 'keep.txt').is_file()
  assert 'No anomalous / normal verdicts: the run has no results.json' in (
      out / 'index.html'
  ).read_text(encoding='utf-8')
  assert sorted(os.listdir(out)) == ['index.html', 'keep.txt', 'maps', 'scores.csv']


def test_map_names_are_unique():
  names = image_files.map_names(
      ['a/x.png', 'a/x.jpg', 'b/x.png', 'y.tif', 'dup.png', 'dup.jpg', 'dup_png.png']
  )
  assert names[2:4] == ['b/x', 'y'] and names[6] == 'dup_png'  # plain where unambiguous
  assert re.fullmatch(r'a/x_png-[0-9a-f]{10}', names[0]), names
  assert re.fullmatch(r'dup_jpg-[0-9a-f]{10}', names[5]), names
  assert len(set(names)) == len(names)


_DECODE_CHECK = browser.DECODE_CHECK  # decodes every picture in the browser (helpers/browser.py)


@pytest.mark.browser
def test_paged_report_of_hundreds_of_images_in_chromium(tmp_path):
  """300 entries: the page renders, shows the highest scores first, every picture shown decodes."""
  browser.find_chromium()  # fails (or skips deliberately) before any work without a browser
  from ganomaly_jax.evaluation import report

  rng = np.random.default_rng(0)
  n = 300
  scores = rng.normal(size=n)
  scores[7] = np.nan  # sorts last, never among the most anomalous
  entries = []
  for i in range(n):
    rel = f'maps/sub{i % 3}/img_{i:03d}.png'
    (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / rel)
    entries.append(
        {'name': f'sub{i % 3}/img_{i:03d}.png', 'score': float(scores[i]), 'map_png': rel}
    )
  path = report.write_paged_report(
      tmp_path, entries, {'images_scored': n}, 'paged <test>', page_size=50, extremes=6
  )
  page = path.read_text(encoding='utf-8')
  assert 'base64' not in page and page.count('<img') == 0  # pictures are files, built by JS
  page = page.replace('</body>', _DECODE_CHECK)
  checked = tmp_path / 'checked.html'
  checked.write_text(page, encoding='utf-8')
  dom = browser.dump_dom(
      checked,
      tmp_path / 'profile',
      '--virtual-time-budget=30000',
      '--window-size=1200,900',
      timeout=120,
  )
  count = re.search(r'<span id="count">([^<]*)</span>', dom)
  assert count is not None and count.group(1) == str(n), dom[:2000]
  # One page of the full list, highest score first; the strips hold the extremes.
  listed = dom[dom.index('id="entries"') :]
  shown = [float(s) for s in re.findall(r'<div class="entry" data-score="([^"]*)"', listed)]
  finite = np.sort(scores[np.isfinite(scores)])[::-1]
  assert len(shown) == 50
  np.testing.assert_allclose(shown, finite[:50], rtol=1e-5)
  most = dom[dom.index('id="most"') : dom.index('id="least"')]
  least = dom[dom.index('id="least"') : dom.index('id="entries"')]
  np.testing.assert_allclose(
      [float(s) for s in re.findall(r'data-score="([^"]*)"', most)], finite[:6], rtol=1e-5
  )
  np.testing.assert_allclose(
      [float(s) for s in re.findall(r'data-score="([^"]*)"', least)], finite[::-1][:6], rtol=1e-5
  )
  shown_imgs = re.findall(r'<img [^>]*>', dom)
  assert len(shown_imgs) == 50 + 2 * 6 and all('loading="lazy"' in t for t in shown_imgs)
  # Every picture shown is a file under the report folder that decodes (checked here, always) ...
  for tag in shown_imgs:
    src = re.search(r'src="([^"]*)"', tag).group(1)
    assert not src.startswith(('data:', 'http')), src
    with Image.open(tmp_path / src) as im:
      im.load()
  # ... and that the browser itself decoded, when its asynchronous probe finished inside the virtual
  # time budget (on a heavily loaded machine it may not have: then only the check above applies).
  decoded = re.search(r'<pre id="decoded">(\d+)/(\d+)</pre>', dom)
  if decoded is not None:
    assert decoded.group(1) == decoded.group(2) == str(len(shown_imgs))


def test_overlay_batch_matches_plots_overlay():
  """The batched 256-level overlay of the map PNGs draws what heatmaps.overlay draws, within 3 of 255."""
  from ganomaly_jax.evaluation import heatmaps

  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (5, 12, 12, 3), dtype=np.uint8)
  maps = rng.uniform(0, 1.5, (5, 12, 12)).astype(np.float32)
  maps[0, 0, 0] = np.nan  # a diverged pixel takes the bottom colour in both
  batch = outputs.overlay_batch(images, maps, vmax=1.2)
  ref = np.stack([heatmaps.overlay(i, m, vmin=0.0, vmax=1.2) for i, m in zip(images, maps)])
  assert batch.dtype == np.uint8 and batch.shape == ref.shape
  assert np.abs(batch.astype(int) - ref).max() <= 3
  grey = outputs.overlay_batch(images[:2, ..., :1], maps[:2], vmax=1.2)
  assert grey.shape == (2, 12, 12, 3)


@pytest.mark.slow  # the shared quick run and the inference subprocess
def test_small_batches_and_serial_decoding_give_the_same_outputs(masked_run, inferred, tmp_path):
  """Batches of 4 (several, the last padded) decoded in the main thread: the same rows and maps."""
  out = tmp_path / 'out'
  summary = scoring.infer(
      str(masked_run.workdir), str(inferred.folder.root), str(out), batch_size=4, decode_threads=0
  )
  assert summary['scored'] == len(inferred.folder.decodable)
  ours, theirs = _rows(out / 'scores.csv'), _rows(inferred.out / 'scores.csv')
  assert [r['path'] for r in ours] == [r['path'] for r in theirs]
  np.testing.assert_allclose(
      [float(r['score']) for r in ours], [float(r['score']) for r in theirs], rtol=1e-4, atol=1e-5
  )
  for rel in sorted(p.relative_to(inferred.out) for p in (inferred.out / 'maps').rglob('*.png')):
    a = np.asarray(Image.open(out / rel), np.int32)
    b = np.asarray(Image.open(inferred.out / rel), np.int32)
    assert np.abs(a - b).max() <= 2, rel  # float noise of a different batch size, at most


@pytest.mark.slow
def test_raw_scores_equal_the_runs_own_evaluation(masked_run, tmp_path):
  """infer on the run's whole test set reproduces the raw scores its evaluation recorded.

  The run wrote the raw test-score range (score_min / score_max) of the checkpoint it selected; infer
  restores that checkpoint, decodes the same files through its own path and scores them in batches
  of another size. Any difference (train-mode BatchNorm, another checkpoint, other preprocessing)
  moves the extremes.
  """
  images = tmp_path / 'test_set'
  images.mkdir()
  for i, path in enumerate(masked_run.data.test_good + masked_run.data.test_defect):
    shutil.copy(path, images / f'{i:03d}.png')
  summary = scoring.infer(str(masked_run.workdir), str(images), str(tmp_path / 'out'), batch_size=5)
  assert summary['scored'] == len(masked_run.data.test_good) + len(masked_run.data.test_defect)
  lo, hi = masked_run.results['score_min'], masked_run.results['score_max']
  # infer writes (raw - lo) / (hi - lo) with the run's range: the run's extremes map to exactly 0 and 1.
  scores = np.array([float(r['score']) for r in _rows(tmp_path / 'out' / 'scores.csv')])
  raw = scores * (hi - lo) + lo
  np.testing.assert_allclose([raw.min(), raw.max()], [lo, hi], rtol=1e-4, atol=1e-7)
