"""Tests for ganomaly_jax.evaluation.plots and ganomaly_jax.evaluation.report.

The report's rendering in a browser is tested where infer writes it (tests/test_infer.py,
tests/test_report_names.py); here its page is checked as text.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ganomaly_jax.evaluation import heatmaps, plots
from ganomaly_jax.evaluation import report


def _assert_png(path: Path) -> None:
  path = Path(path)
  assert path.is_file() and path.stat().st_size > 0
  with Image.open(path) as im:
    assert im.format == 'PNG'
    im.verify()
  with Image.open(path) as im:
    assert im.size[0] > 0 and im.size[1] > 0


def _images(n: int, h: int = 16, w: int = 16, c: int = 1, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).uniform(-1, 1, (n, h, w, c)).astype(np.float32)


# --- Arrays --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    'amap',
    [
        np.random.default_rng(0).normal(size=(12, 10)),
        np.full((12, 10), 3.0),  # constant
        np.full((12, 10), np.nan),  # all NaN
        np.random.default_rng(1).normal(size=(12, 10, 1)),  # trailing channel
    ],
)
def test_anomaly_heatmap_shape_dtype(amap):
  heat = heatmaps.anomaly_heatmap(amap)
  assert heat.shape == (12, 10, 3)
  assert heat.dtype == np.uint8


def test_anomaly_heatmap_range_and_fixed_limits():
  amap = np.linspace(0, 1, 20, dtype=np.float32).reshape(4, 5)
  heat = heatmaps.anomaly_heatmap(amap, cmap='gray')
  assert heat[0, 0].tolist() == [0, 0, 0] and heat[-1, -1].tolist() == [255, 255, 255]
  # Values outside a fixed [vmin, vmax] are clipped, not wrapped.
  clipped = heatmaps.anomaly_heatmap(amap * 10, vmin=0.0, vmax=1.0, cmap='gray')
  assert clipped[-1, -1].tolist() == [255, 255, 255]


def test_anomaly_heatmap_rejects_bad_shape():
  with pytest.raises(ValueError):
    heatmaps.anomaly_heatmap(np.zeros((2, 3, 4)))


@pytest.mark.parametrize(
    'image',
    [
        np.random.default_rng(0).uniform(-1, 1, (8, 9, 1)).astype(np.float32),
        np.random.default_rng(0).uniform(-1, 1, (8, 9, 3)).astype(np.float32),
        np.random.default_rng(0).integers(0, 256, (8, 9, 3), dtype=np.uint8),
        np.random.default_rng(0).integers(0, 256, (8, 9), dtype=np.uint8),
    ],
)
def test_overlay_shape_dtype(image):
  out = heatmaps.overlay(image, np.random.default_rng(1).normal(size=(8, 9)), alpha=0.4)
  assert out.shape == (8, 9, 3)
  assert out.dtype == np.uint8


def test_overlay_alpha_extremes_and_gray_replication():
  gray = np.full((4, 4, 1), 1.0, dtype=np.float32)  # white in [-1, 1]
  amap = np.arange(16, dtype=np.float32).reshape(4, 4)
  np.testing.assert_array_equal(
      heatmaps.overlay(gray, amap, alpha=0.0), np.full((4, 4, 3), 255, np.uint8)
  )
  np.testing.assert_array_equal(
      heatmaps.overlay(gray, amap, alpha=1.0), heatmaps.anomaly_heatmap(amap)
  )


def test_overlay_size_mismatch_raises():
  with pytest.raises(ValueError, match='differ in size'):
    heatmaps.overlay(np.zeros((4, 4, 3), np.uint8), np.zeros((5, 4)))


def test_image_grid_shape_and_mixed_cells():
  h, w, pad = 8, 6, 2
  rows = [
      [
          _images(1, h, w, 1)[0],
          _images(1, h, w, 3)[0],
          np.random.default_rng(0).normal(size=(h, w)),
      ],
      [np.zeros((h, w, 3), np.uint8), np.zeros((h, w), np.uint8)],  # short row, uint8 gray
  ]
  grid = heatmaps.image_grid(rows, pad=pad)
  assert grid.dtype == np.uint8
  assert grid.shape == (2 * h + 3 * pad, 3 * w + 4 * pad, 3)
  # Border and the hole left by the short row keep the pad colour.
  assert (grid[0] == 255).all()
  assert (grid[pad + h + pad :, pad + 2 * (w + pad) :][:h] == 255).all()
  assert heatmaps.image_grid([[np.zeros((h, w, 1), np.float32)]], pad=0).shape == (h, w, 3)


def test_image_grid_errors():
  with pytest.raises(ValueError, match='equal-size'):
    heatmaps.image_grid([[np.zeros((4, 4, 3), np.uint8), np.zeros((5, 4, 3), np.uint8)]])
  with pytest.raises(ValueError, match='at least one'):
    heatmaps.image_grid([])


# --- Figures -------------------------------------------------------------------------------------------


def test_plot_loss_curves(tmp_path):
  history = {
      'g_adv': [(i, 1.0 / (i + 1)) for i in range(20)],
      'g_con': [(i, 2.0 - 0.01 * i) for i in range(20)],
      'd_loss': [(i, 0.7) for i in range(0, 20, 5)],
      'lr': [(0, 1e-4), (10, float('nan'))],
  }
  _assert_png(plots.plot_loss_curves(history, tmp_path / 'sub' / 'loss.png'))


def test_loss_curves_keep_losses_probabilities_and_events_apart(tmp_path, monkeypatch):
  figures = []
  save = plots._save
  monkeypatch.setattr(plots, '_save', lambda fig, path: figures.append(fig) or save(fig, path))
  steps = range(0, 100, 10)
  history = {
      'g_loss': [(s, 15.0 - 0.1 * s) for s in steps],
      'g_adv': [(s, 0.05) for s in steps],
      'g_con': [(s, 0.3 - 0.001 * s) for s in steps],
      'g_lat': [(s, 0.01) for s in steps],
      'd_loss': [(s, 0.6) for s in steps],
      'd_real': [(s, 0.7) for s in steps],
      'd_fake': [(s, 0.3) for s in steps],
      'nonfinite': [(s, float(s == 30)) for s in steps],
      'd_reinit': [(s, 0.0) for s in steps],
  }
  _assert_png(plots.plot_loss_curves(history, tmp_path / 'loss.png'))
  [fig] = figures
  # Which series each panel draws (gid: the series name; label where a gid is missing).
  panels = {ax: {line.get_gid() or line.get_label() for line in ax.get_lines()} for ax in fig.axes}
  where = {name: [ax for ax, names in panels.items() if name in names] for name in history}
  assert all(len(axes) == 1 for axes in where.values()), where  # every series drawn, once
  axis = {name: axes[0] for name, axes in where.items()}
  # Losses, probabilities and 0/1 events never share an axis.
  assert axis['d_loss'] not in {axis[n] for n in ('d_real', 'd_fake', 'nonfinite', 'd_reinit')}
  assert axis['d_real'] is axis['d_fake'] and axis['nonfinite'] is axis['d_reinit']
  assert axis['d_real'] is not axis['nonfinite']
  lo, hi = axis['d_real'].get_ylim()
  assert -0.1 <= lo <= 0 and 1 <= hi <= 1.1  # a probability axis
  # The weighted total (~50x the terms) never flattens a generator term: one panel per term.
  g_axes = [axis[n] for n in ('g_loss', 'g_adv', 'g_con', 'g_lat')]
  assert len(set(g_axes)) == 4 or all(ax.get_yscale() == 'log' for ax in g_axes)
  for name in ('g_con', 'd_loss', 'd_real', 'nonfinite'):
    assert axis[name].get_title(), name
  assert 'g_con' in axis['g_con'].get_title() and 'Events' in axis['nonfinite'].get_title()


@pytest.mark.parametrize('history', [{}, {'g_adv': []}, {'d_loss': [(0, 1.0)]}])
def test_plot_loss_curves_degenerate(tmp_path, history):
  _assert_png(plots.plot_loss_curves(history, tmp_path / 'loss.png'))


ROC_CASES = {
    'normal': (
        np.r_[np.zeros(30), np.ones(10)],
        np.r_[np.random.default_rng(0).normal(0, 1, 30), np.random.default_rng(1).normal(2, 1, 10)],
    ),
    'one_class_normal': (np.zeros(10), np.arange(10.0)),
    'one_class_abnormal': (np.ones(10), np.arange(10.0)),
    'constant_scores': (np.r_[np.zeros(5), np.ones(5)], np.full(10, 0.5)),
    'non_finite_scores': (np.r_[np.zeros(5), np.ones(5)], np.r_[np.nan, np.inf, np.arange(8.0)]),
    'empty': (np.zeros(0), np.zeros(0)),
    'single': (np.ones(1), np.ones(1)),
}


@pytest.mark.parametrize('case', sorted(ROC_CASES))
def test_plot_roc_pr_and_histogram(tmp_path, case):
  labels, scores = ROC_CASES[case]
  _assert_png(plots.plot_roc_pr(labels, scores, tmp_path / 'roc.png'))
  _assert_png(plots.plot_score_histogram(labels, scores, tmp_path / 'hist.png'))


def test_plot_roc_pr_one_class_says_undefined(tmp_path, monkeypatch):
  notes = []
  original = plots._note
  monkeypatch.setattr(plots, '_note', lambda ax, text: (notes.append(text), original(ax, text)))
  plots.plot_roc_pr(np.zeros(5), np.arange(5.0), tmp_path / 'roc.png')
  assert plots.ONE_CLASS_NOTE in notes and plots.ONE_CLASS_NOTE == 'undefined (one class)'


@pytest.mark.parametrize(
    'n,k,with_maps', [(20, 4, True), (3, 8, True), (1, 8, True), (0, 8, True), (6, 2, False)]
)
def test_plot_extremes(tmp_path, n, k, with_maps):
  rng = np.random.default_rng(0)
  images = _images(n, 12, 12, 3)
  amaps = rng.normal(size=(n, 12, 12)) if with_maps else None
  scores = rng.normal(size=n)
  labels = rng.integers(0, 2, n)
  _assert_png(plots.plot_extremes(images, amaps, scores, labels, tmp_path / 'ext.png', k=k))


def test_plot_extremes_constant_and_nan_scores_no_labels(tmp_path):
  images = [np.zeros((10, 10), np.uint8)] * 5
  amaps = [np.zeros((10, 10))] * 5
  _assert_png(plots.plot_extremes(images, amaps, np.full(5, np.nan), None, tmp_path / 'a.png', k=2))
  _assert_png(plots.plot_extremes(images, amaps, np.ones(5), None, tmp_path / 'b.png', k=2))


def test_extreme_indices_no_duplicates_nan_last():
  top, bottom = plots.extreme_indices(np.array([0.1, np.nan, 0.9, 0.5]), k=2)
  assert top == [2, 3] and bottom == [1, 0]
  top, bottom = plots.extreme_indices(np.array([3.0, 1.0, 2.0]), k=8)
  assert top == [0, 2, 1] and bottom == []


# --- Report --------------------------------------------------------------------------------------------

INDEX_RE = re.compile(r'<script type="application/json" id="index">(.*?)</script>', re.S)


def _index(page: str) -> dict:
  return json.loads(INDEX_RE.search(page).group(1))


def _make_report(tmp_path: Path, n: int = 5) -> tuple[Path, list[dict]]:
  out_dir = tmp_path / 'report'
  (out_dir / 'maps').mkdir(parents=True)
  rng = np.random.default_rng(0)
  entries = []
  for i in range(n):
    map_rel = f'maps/{i}.png'
    Image.fromarray(heatmaps.anomaly_heatmap(rng.normal(size=(16, 16)))).save(out_dir / map_rel)
    entries.append(
        {
            'name': f'img_{i}.png',
            'score': float(rng.normal()),
            'map_png': map_rel,
            'anomalous': i % 2,
        }
    )
  entries[1]['name'] = '<b>bold</b> & "quoted".png'
  entries[2]['score'] = float('nan')
  metrics = {
      'auroc': 0.91234,
      'ap': np.float32(0.5),
      'n_test': 5,
      'method': 'ganomaly<x>',
      'skipped': {'unreadable': ['/data/bad<1>.png', '/data/bad2.png'], 'too_small': ['/s.png']},
  }
  path = report.write_paged_report(
      out_dir, entries, metrics, title='Test <report>', page_size=2, extremes=1, notes=['a <note>']
  )
  return path, entries


def test_report_structure(tmp_path):
  path, entries = _make_report(tmp_path)
  assert path == tmp_path / 'report' / 'index.html' and path.is_file()
  page = path.read_text(encoding='utf-8')
  index = _index(page)
  assert (index['page_size'], index['extremes']) == (2, 1)
  # Highest score first, NaN last (as null); each entry's name, map URL and verdict kept.
  names = [e[0] for e in index['entries']]
  by_name = {e['name']: e for e in entries}
  finite = sorted((e for e in entries if np.isfinite(e['score'])), key=lambda e: -e['score'])
  assert names == [e['name'] for e in finite] + ['img_2.png']
  for name, score, url, flag in index['entries']:
    assert url == by_name[name]['map_png'] and flag == by_name[name]['anomalous']
    assert score is None if name == 'img_2.png' else score == pytest.approx(by_name[name]['score'])
  # Names are data (escaped inside the script element); title, notes, metrics and skipped paths are
  # HTML-escaped.
  assert '<b>bold</b>' not in page and '\\u003cb\\u003ebold' in page
  assert 'Test &lt;report&gt;' in page and 'ganomaly&lt;x&gt;' in page and 'a &lt;note&gt;' in page
  assert '0.9123' in page
  skipped = page[page.index('id="skipped"') : page.index('id="entries"')]
  assert (
      'Skipped files (3)' in skipped and '/data/bad&lt;1&gt;.png' in skipped and '/s.png' in skipped
  )


def test_report_self_contained(tmp_path):
  path, _ = _make_report(tmp_path)
  page = path.read_text(encoding='utf-8')
  assert 'http://' not in page and 'https://' not in page
  assert '<link' not in page and '@import' not in page and 'url(' not in page
  assert 'base64' not in page  # pictures are the map files beside the page


def test_report_degenerate(tmp_path):
  entries = [
      {'name': 'no_map', 'score': 1.0, 'map_png': None},
      {'name': 'bad_score', 'score': 'n/a', 'map_png': 'maps/none.png'},
      {'name': 'top', 'score': 2.0},
  ]
  page = report.write_paged_report(tmp_path / 'r', entries, {}, title='t').read_text(
      encoding='utf-8'
  )
  assert [e[:2] for e in _index(page)['entries']] == [
      ['top', 2.0],
      ['no_map', 1.0],
      ['bad_score', None],
  ]
  assert 'id="skipped"' not in page and 'No metrics.' in page
  empty = report.write_paged_report(tmp_path / 'e', [], {'skipped': {}}, title='empty')
  assert _index(empty.read_text(encoding='utf-8'))['entries'] == []
