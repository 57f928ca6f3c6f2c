"""Tests for ganomaly_jax.evaluation.pixel_metrics: PRO, pixel AUROC, smoothing (pure numpy, milliseconds)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.ndimage
from sklearn import metrics as sk_metrics

from ganomaly_jax.evaluation import pixel_metrics


def _masks_with_regions(n: int = 3, size: int = 16, seed: int = 0) -> np.ndarray:
  """n masks: image 0 all normal, the others with two or three rectangular defects each."""
  rng = np.random.default_rng(seed)
  masks = np.zeros((n, size, size), np.float32)
  for i in range(1, n):
    for _ in range(2 + i % 2):
      h, w = rng.integers(1, 5, size=2)
      top, left = rng.integers(0, size - 5, size=2)
      masks[i, top : top + h, left : left + w] = 1.0
  return masks


def _brute_force_pro(maps: np.ndarray, masks: np.ndarray, max_fpr: float = 0.3) -> float:
  """PRO by its definition: loop over every threshold, label regions, average overlaps."""
  regions = []
  for i, mask in enumerate(masks):
    labelled, n = scipy.ndimage.label(mask > 0.5, structure=np.ones((3, 3)))
    regions.extend((i, labelled == k) for k in range(1, n + 1))
  normal = masks <= 0.5
  fprs, pros = [0.0], [0.0]
  for t in np.unique(maps)[::-1]:
    pred = maps >= t
    fprs.append(pred[normal].mean())
    pros.append(np.mean([pred[i][region].mean() for i, region in regions]))
  fprs.append(1.0)
  pros.append(1.0)
  return pixel_metrics.integrate_to(np.asarray(fprs), np.asarray(pros), max_fpr) / max_fpr


def test_perfect_map_scores_one():
  masks = _masks_with_regions()
  assert pixel_metrics.pixel_pro(masks, masks) == pytest.approx(1.0)
  assert pixel_metrics.pixel_auroc(masks, masks) == pytest.approx(1.0)
  # Any strictly monotone transform of a perfect map is still perfect.
  assert pixel_metrics.pixel_pro(3 * masks + 0.5, masks) == pytest.approx(1.0)


def test_inverted_map_scores_zero():
  masks = _masks_with_regions()
  assert pixel_metrics.pixel_pro(1.0 - masks, masks) == pytest.approx(0.0, abs=1e-12)
  assert pixel_metrics.pixel_auroc(1.0 - masks, masks) == pytest.approx(0.0)


def test_hand_computed_case():
  """One 4x4 image: region A = two pixels, region B = one pixel (not touching), 13 normal pixels.

  Scores, highest first: A 0.9, N 0.8, B 0.7, N 0.6, A 0.5, all other N 0. Each A pixel adds
  1/(2 regions * 2 pixels) = 0.25 to PRO, the B pixel 0.5, each normal pixel 1/13 to FPR:
    (fpr, pro) = (0, .25) (1/13, .25) (1/13, .75) (2/13, .75) (2/13, 1) (1, 1).
  Area up to FPR 0.3 = .25/13 + .75/13 + (0.3 - 2/13) * 1 = 0.3 - 1/13; normalised: 1 - 1/3.9.
  """
  mask = np.zeros((4, 4))
  mask[0, 0] = mask[0, 1] = 1  # region A
  mask[3, 3] = 1  # region B
  amap = np.zeros((4, 4))
  amap[0, 0], amap[0, 1], amap[3, 3] = 0.9, 0.5, 0.7
  amap[2, 0], amap[1, 3] = 0.8, 0.6  # two normal pixels
  fpr, pro = pixel_metrics.pro_curve(amap, mask)
  np.testing.assert_allclose(fpr, [0, 0, 1 / 13, 1 / 13, 2 / 13, 2 / 13, 1, 1])
  np.testing.assert_allclose(pro, [0, 0.25, 0.25, 0.75, 0.75, 1, 1, 1])
  assert pixel_metrics.pixel_pro(amap, mask) == pytest.approx(1 - 1 / 3.9)
  # Over the whole FPR range the missing area is the two steps: 1/13 * .75 + 1/13 * .25.
  assert pixel_metrics.pixel_pro(amap, mask, max_fpr=1.0) == pytest.approx(1 - 1 / 13)


def test_regions_count_equally_whatever_their_size():
  """A detected 1-pixel region and a missed 16-pixel region give PRO 0.5 at low FPR, not 1/17."""
  mask = np.zeros((10, 10))
  mask[0, 0] = 1
  mask[5:9, 5:9] = 1
  amap = np.zeros((10, 10))
  amap[0, 0] = 1.0
  fpr, pro = pixel_metrics.pro_curve(amap, mask)
  np.testing.assert_allclose(fpr, [0, 0, 1, 1])
  np.testing.assert_allclose(pro, [0, 0.5, 1, 1])
  # Up to FPR 0.3 the curve rises linearly from 0.5 towards (1, 1): mean of 0.5 and 0.65.
  assert pixel_metrics.pixel_pro(amap, mask) == pytest.approx(0.575)


def test_diagonal_pixels_form_one_region():
  """8-connectivity (MVTec AD): two diagonal pixels are one region, so half of it found = 0.5."""
  mask = np.zeros((6, 6))
  mask[1, 1] = mask[2, 2] = 1
  amap = np.zeros((6, 6))
  amap[1, 1] = 1.0
  fpr, pro = pixel_metrics.pro_curve(amap, mask)
  assert pro[1] == pytest.approx(0.5) and fpr[1] == 0.0


@pytest.mark.parametrize('levels', [None, 5])
def test_matches_threshold_loop_on_random_maps(levels):
  """The sort-based curve equals the definition, with ties (5 levels) and without."""
  masks = _masks_with_regions(n=4, seed=1)
  rng = np.random.default_rng(2)
  maps = rng.uniform(size=masks.shape) + 0.8 * masks
  if levels:
    maps = np.round(maps * levels) / levels
  assert pixel_metrics.pixel_pro(maps, masks) == pytest.approx(_brute_force_pro(maps, masks))


def test_pixel_auroc_matches_sklearn():
  masks = _masks_with_regions(seed=3)
  maps = np.random.default_rng(4).uniform(size=masks.shape) + 0.3 * masks
  expected = sk_metrics.roc_auc_score(masks.ravel(), maps.ravel())
  assert pixel_metrics.pixel_auroc(maps, masks) == pytest.approx(expected)


def test_undefined_cases_return_none():
  normal = np.zeros((2, 8, 8))
  maps = np.random.default_rng(0).uniform(size=(2, 8, 8))
  assert pixel_metrics.pixel_pro(maps, normal) is None
  assert pixel_metrics.pixel_auroc(maps, normal) is None
  assert pixel_metrics.pixel_pro(maps, np.ones((2, 8, 8))) is None
  mask = np.zeros((2, 8, 8))
  mask[1, 2:4, 2:4] = 1
  nan_maps = maps.copy()
  nan_maps[0, 0, 0] = np.nan
  assert pixel_metrics.pixel_pro(nan_maps, mask) is None
  assert pixel_metrics.pixel_auroc(nan_maps, mask) is None
  with pytest.raises(ValueError, match='must both be'):
    pixel_metrics.pixel_pro(maps, mask[:1])
  with pytest.raises(ValueError, match='max_fpr'):
    pixel_metrics.pixel_pro(maps, mask, max_fpr=0.0)


def test_integrate_to_interpolates_at_the_limit():
  x = np.array([0.0, 0.2, 1.0])
  y = np.array([0.0, 0.2, 1.0])  # y = x
  assert pixel_metrics.integrate_to(x, y, 0.3) == pytest.approx(0.045)
  assert pixel_metrics.integrate_to(x, y, 0.2) == pytest.approx(0.02)
  # A vertical step adds no area.
  assert pixel_metrics.integrate_to(np.array([0, 0, 1.0]), np.array([0, 1, 1.0]), 0.5) == (
      pytest.approx(0.5)
  )


def test_smoothing_is_per_map_and_matches_gaussian_filter():
  maps = np.zeros((3, 15, 15), np.float32)
  maps[1, 7, 7] = 1.0  # a delta in the middle map only
  smoothed = pixel_metrics.smooth_maps(maps, 2.0)
  assert smoothed.shape == maps.shape and smoothed.dtype == np.float32
  # Nothing bleeds into the neighbouring maps of the batch.
  assert np.all(smoothed[0] == 0) and np.all(smoothed[2] == 0)
  np.testing.assert_allclose(smoothed[1], scipy.ndimage.gaussian_filter(maps[1], 2.0), atol=1e-7)
  assert smoothed[1].sum() == pytest.approx(1.0, abs=1e-3)  # mass preserved away from borders
  assert smoothed[1, 7, 7] < 0.1 and smoothed[1, 7, 8] > 0
  # sigma 0 is the identity; a single [H, W] map works too.
  np.testing.assert_array_equal(pixel_metrics.smooth_maps(maps, 0.0), maps)
  assert pixel_metrics.smooth_maps(maps[1], 1.0).shape == (15, 15)


def test_smoothing_helps_pro_on_speckled_maps():
  """A defect region seen through salt noise: smoothing should raise PRO (why eval.smooth_sigma exists)."""
  rng = np.random.default_rng(0)
  mask = np.zeros((4, 32, 32))
  mask[:, 10:20, 10:20] = 1
  maps = mask * rng.uniform(size=mask.shape) + rng.uniform(size=mask.shape) * 0.9
  raw = pixel_metrics.pixel_pro(maps, mask)
  smooth = pixel_metrics.pixel_pro(pixel_metrics.smooth_maps(maps, 2.0), mask)
  assert smooth > raw


# --- PixelHistogram: the streaming form used by evaluation ------------------------------------


def _quantised(maps: np.ndarray, hist: pixel_metrics.PixelHistogram) -> np.ndarray:
  """The maps rounded down to the histogram's bins (the maps on which it is exact)."""
  return np.floor(np.clip(maps, 0, None) * hist.bins / hist.max_value).clip(0, hist.bins - 1)


@pytest.mark.parametrize('bins', [16, 2**16])
def test_histogram_is_exact_on_quantised_maps(bins):
  masks = _masks_with_regions(5, 24, seed=3)
  rng = np.random.default_rng(1)
  maps = np.clip(rng.uniform(0, 1.5, masks.shape) + 0.4 * masks, 0, 2).astype(np.float32)
  hist = pixel_metrics.PixelHistogram(bins=bins)
  for amap, mask in zip(maps, masks):
    hist.add(amap, mask)
  q = _quantised(maps, hist)
  assert hist.auroc() == pytest.approx(pixel_metrics.pixel_auroc(q, masks), abs=1e-12)
  assert hist.pro() == pytest.approx(pixel_metrics.pixel_pro(q, masks), abs=1e-12)
  assert hist.num_images == 5 and hist.num_defect_images == 4


def test_histogram_close_to_exact_on_continuous_maps():
  """With the default 2**16 bins over [0, 2] only pairs closer than 3e-5 are tied."""
  masks = _masks_with_regions(4, 32, seed=5)
  maps = np.random.default_rng(2).uniform(0, 2, masks.shape).astype(np.float32) * (1 + 0.2 * masks)
  maps = np.minimum(maps, 1.999)
  hist = pixel_metrics.PixelHistogram()
  for amap, mask in zip(maps, masks):
    hist.add(amap, mask)
  assert hist.auroc() == pytest.approx(pixel_metrics.pixel_auroc(maps, masks), abs=1e-4)
  assert hist.pro() == pytest.approx(pixel_metrics.pixel_pro(maps, masks), abs=1e-4)


def test_histograms_of_shards_merge_to_the_whole():
  masks = _masks_with_regions(6, 16, seed=7)
  maps = np.random.default_rng(4).uniform(0, 2, masks.shape).astype(np.float32)
  whole, a, b = (pixel_metrics.PixelHistogram(bins=256) for _ in range(3))
  for i, (amap, mask) in enumerate(zip(maps, masks)):
    whole.add(amap, mask)
    (a if i % 2 else b).add(amap, mask)
  a.merge(pixel_metrics.PixelHistogram.from_state(b.state()))
  assert a.auroc() == whole.auroc() and a.pro() == whole.pro()
  assert a.num_regions == whole.num_regions


def test_histogram_undefined_and_clipped_cases():
  hist = pixel_metrics.PixelHistogram(bins=64)
  hist.add(np.ones((4, 4)), np.zeros((4, 4)))
  assert hist.auroc() is None and hist.pro() is None  # no defect pixel
  hist.add(np.full((4, 4), 5.0), np.ones((4, 4)))  # above max_value: clipped into the top bin
  assert hist.clipped == 16 and hist.auroc() == 1.0
  hist.add(np.full((4, 4), np.nan), np.ones((4, 4)))
  assert hist.auroc() is None and hist.pro() is None


def test_histogram_range_is_the_map_range():
  # A map bounded by 3 (losses.MAPS['ssim_msgms']) on a [0, 3] histogram: nothing is clipped and
  # values 2.2 / 2.6, which the old fixed [0, 2] range tied in its top bin, stay apart.
  masks = np.zeros((2, 8, 8))
  masks[1, 2:5, 2:5] = 1
  maps = 2.2 + 0.4 * masks
  fixed, ranged = pixel_metrics.PixelHistogram(), pixel_metrics.PixelHistogram(max_value=3.0)
  for hist in (fixed, ranged):
    for amap, mask in zip(maps, masks):
      hist.add(amap, mask)
  assert fixed.clipped == 128 and fixed.auroc() == 0.5
  assert ranged.clipped == 0 and ranged.auroc() == 1.0
