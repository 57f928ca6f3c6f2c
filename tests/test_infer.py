"""Inference CLI: `python -m ganomaly_jax.infer` on the shared quick masked run (tests/conftest.py).

The browser test needs chromium, chromium-browser or google-chrome on PATH (tests/helpers/browser.py);
without it the test FAILS unless GANOMALY_SKIP_BROWSER=1 (as in test_plots_report).
"""

from __future__ import annotations

import csv
import dataclasses
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
from ganomaly_jax import infer
from helpers import browser

ENTRY_RE = re.compile(r'<div class="entry"')


@dataclasses.dataclass
class InferRun:
  folder: synthetic.InferFolderInfo
  out: Path
  proc: subprocess.CompletedProcess


def _cli(*args: str, timeout: int = 180) -> subprocess.CompletedProcess:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  return subprocess.run([sys.executable, '-m', 'ganomaly_jax.infer', *args], cwd=synthetic.REPO,
                        env=env, capture_output=True, text=True, timeout=timeout)


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
  assert list(rows[0]) == ['path', 'score']
  assert sorted(Path(r['path']) for r in rows) == inferred.folder.decodable
  assert [r['path'] for r in rows] == sorted(r['path'] for r in rows)
  scores = {Path(r['path']).name: float(r['score']) for r in rows}
  assert all(np.isfinite(list(scores.values())))
  # Normalised with the run's test-score range: images of the test set fall inside [0, 1].
  for name in ('img_0.png', 'img_1.png', 'img_2.png', 'img_3.png'):
    assert -1e-4 <= scores[name] <= 1 + 1e-4, (name, scores[name])
  assert 'Scored 6 image(s), skipped 2 file(s)' in inferred.proc.stdout


@pytest.mark.slow
def test_maps_exist_for_every_scored_image(inferred):
  for row in _rows(inferred.out / 'scores.csv'):
    rel = Path(row['path']).relative_to(inferred.folder.root)
    with Image.open(inferred.out / 'maps' / rel.with_suffix('.png')) as im:
      assert im.format == 'PNG' and im.mode == 'RGB' and im.size == (16, 16)


@pytest.mark.slow
def test_skipped_files_listed_and_nothing_lost(inferred):
  page = (inferred.out / 'index.html').read_text(encoding='utf-8')
  skipped = page[page.index('id="skipped"'):page.index('id="entries"')]
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
  # Each entry's image and map are embedded PNGs that decode; each map is one written to maps/.
  pictures = browser.embedded_images(dom)
  assert len(pictures) == 2 * n
  maps = set()
  for path in (inferred.out / 'maps').rglob('*.png'):
    with Image.open(path) as im:
      maps.add(np.asarray(im.convert('RGB')).tobytes())
  assert sum(p.tobytes() in maps for p in pictures) == n


@pytest.mark.slow
def test_workdir_without_checkpoint_is_one_error_line(masked_run, tmp_path):
  workdir = tmp_path / 'untrained'
  workdir.mkdir()
  shutil.copy(masked_run.workdir / 'config.json', workdir)
  images = tmp_path / 'images'
  images.mkdir()
  shutil.copy(masked_run.data.test_good[0], images / 'a.png')
  proc = _cli(f'--workdir={workdir}', f'--images={images}', f'--out={tmp_path / "out"}', timeout=120)
  assert proc.returncode == 1
  errors = [line for line in proc.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and 'no checkpoint' in errors[0], proc.stderr[-2000:]
  assert not (tmp_path / 'out').exists()
  assert sorted(os.listdir(workdir)) == ['config.json']  # nothing created in the workdir either


@pytest.mark.slow
def test_folder_errors(masked_run, tmp_path):
  workdir = str(masked_run.workdir)
  with pytest.raises(infer.InferError, match='image folder not found'):
    infer.infer(workdir, str(tmp_path / 'missing'), str(tmp_path / 'out'))
  empty = tmp_path / 'empty'
  (empty / 'sub').mkdir(parents=True)
  (empty / '.DS_Store').write_bytes(b'x')
  with pytest.raises(infer.InferError, match='no file to score'):
    infer.infer(workdir, str(empty), str(tmp_path / 'out'))
  (empty / 'sub' / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\nnope')
  (empty / 'readme.md').write_text('hi')
  with pytest.raises(infer.InferError,
                     match=r'no decodable image .*all skipped: corrupt: 1, not_an_image: 1'):
    infer.infer(workdir, str(empty), str(tmp_path / 'out'))
  assert not (tmp_path / 'out').exists()


@pytest.mark.slow
def test_fallback_normalisation_and_rerun_into_same_out(masked_run, inferred, tmp_path):
  """Without the run's score range the scores are min-max over the images; OUT can be reused."""
  workdir = tmp_path / 'run'
  shutil.copytree(masked_run.workdir, workdir)
  (workdir / 'results.json').unlink()
  images = tmp_path / 'images'
  images.mkdir()
  shutil.copy(masked_run.data.test_good[0], images / 'good.png')
  shutil.copy(masked_run.data.test_defect[0], images / 'defect.png')
  out = tmp_path / 'out'
  shutil.copytree(inferred.out, out)  # a previous call's outputs
  summary = infer.infer(str(workdir), str(images), str(out))
  assert summary['scored'] == 2 and 'min/max of the scored images' in summary['normalisation']
  assert sorted(float(r['score']) for r in _rows(out / 'scores.csv')) == [0.0, 1.0]
  assert (out / 'maps' / 'good.png').is_file() and (out / 'maps' / 'defect.png').is_file()
  assert (out / 'maps' / 'grey.png').is_file()  # earlier maps are not deleted
  assert (out / 'keep.txt').is_file()


def test_map_names_are_unique():
  names = infer.map_names(['a/x.png', 'a/x.jpg', 'b/x.png', 'y.tif'])
  assert names == ['a/x_png', 'a/x_jpg', 'b/x', 'y']
  assert len(set(names)) == len(names)


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
  summary = infer.infer(str(masked_run.workdir), str(images), str(tmp_path / 'out'), batch_size=5)
  assert summary['scored'] == len(masked_run.data.test_good) + len(masked_run.data.test_defect)
  lo, hi = masked_run.results['score_min'], masked_run.results['score_max']
  # infer writes (raw - lo) / (hi - lo) with the run's range: the run's extremes map to exactly 0 and 1.
  scores = np.array([float(r['score']) for r in _rows(tmp_path / 'out' / 'scores.csv')])
  raw = scores * (hi - lo) + lo
  np.testing.assert_allclose([raw.min(), raw.max()], [lo, hi], rtol=1e-4, atol=1e-7)
