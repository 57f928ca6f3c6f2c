"""SSIM / MSGMS maps and losses (ganomaly_jax.similarity) and the map scores of ganomaly_jax.losses.

SSIM is checked against scikit-image's `structural_similarity` on fixed inputs; MSGMS and the scores
on hand-made cases. Tiny shapes, so the file runs in seconds on 2 CPU cores.
"""

import types

import jax.numpy as jnp
import numpy as np
import pytest
from skimage.metrics import structural_similarity

from ganomaly_jax import losses, similarity
from ganomaly_jax.evaluation import pixel_metrics


def _pair(shape, seed=0, noise=0.3):
  rng = np.random.default_rng(seed)
  x = rng.uniform(-1.0, 1.0, shape).astype(np.float32)
  y = np.clip(x + noise * rng.normal(size=shape), -1.0, 1.0).astype(np.float32)
  return x, y


@pytest.mark.parametrize('shape', [(16, 16, 1), (32, 24, 3)])
def test_ssim_map_matches_scikit_image(shape):
  x, y = _pair(shape)
  mean, full = structural_similarity(x, y, full=True, gaussian_weights=True, sigma=1.5,
                                     use_sample_covariance=False, data_range=2.0, channel_axis=-1)
  ours = np.asarray(similarity.ssim_map(jnp.asarray(x[None]), jnp.asarray(y[None])))[0]
  np.testing.assert_allclose(ours, full.mean(axis=-1), atol=1e-5)
  # scikit-image's mean crops the window radius (5) off each border before averaging.
  np.testing.assert_allclose(ours[5:-5, 5:-5].mean(), mean, atol=1e-5)


def test_ssim_identical_images_and_loss():
  x, y = _pair((2, 16, 16, 3))
  np.testing.assert_allclose(similarity.ssim_map(jnp.asarray(x), jnp.asarray(x)), 1.0, atol=1e-5)
  assert abs(float(similarity.ssim_loss(jnp.asarray(x), jnp.asarray(x)))) < 1e-5
  assert float(similarity.ssim_loss(jnp.asarray(x), jnp.asarray(y))) > 0.1


def test_msgms_identical_images_give_a_zero_map():
  x, _ = _pair((2, 16, 16, 3))
  x = jnp.asarray(x)
  np.testing.assert_allclose(similarity.msgms_map(x, x), 1.0, atol=1e-6)
  np.testing.assert_allclose(similarity.msgms_anomaly_map(x, x), 0.0, atol=1e-6)
  assert abs(float(similarity.msgms_loss(x, x))) < 1e-6


def test_msgms_map_peaks_at_a_missing_step_edge():
  # x has a vertical step edge between columns 7 and 8; the reconstruction is flat. GMS is 1 on flat
  # regions of both and drops where x has a gradient the reconstruction lacks.
  x = np.full((1, 16, 16, 1), -1.0, np.float32)
  x[:, :, 8:, :] = 1.0  # columns 8.. are bright
  recon = np.full_like(x, -1.0)
  gms = np.asarray(similarity.gms_map(jnp.asarray(x), jnp.asarray(recon)))[0, :, :, 0]
  np.testing.assert_allclose(gms[:, :6], 1.0, atol=1e-6)  # far from the edge: no gradient in either
  np.testing.assert_allclose(gms[:, 10:], 1.0, atol=1e-6)
  assert gms[:, 7:9].max() < 0.01  # at the edge: strong gradient in x only
  amap = np.asarray(similarity.msgms_anomaly_map(jnp.asarray(x), jnp.asarray(recon)))[0]
  column = amap.mean(axis=0)
  assert column.argmax() in (7, 8)
  # The coarse scales (down to 2x2) spread the edge, but the map falls off away from it.
  assert column[7:9].min() > 3 * max(column[0], column[-1])
  assert np.all(np.diff(column[:8]) >= -1e-6) and np.all(np.diff(column[8:]) <= 1e-6)
  np.testing.assert_allclose(amap, np.broadcast_to(amap[:1], amap.shape), atol=1e-6)  # every row


def test_msgms_loss_is_the_mean_over_scales():
  x, y = (jnp.asarray(a) for a in _pair((2, 16, 16, 1)))
  expected = np.mean([float(jnp.mean(1.0 - similarity.gms_map(xs, ys)))
                      for xs, ys in similarity._pyramid(x, y)])
  assert len(similarity._pyramid(x, y)) == 4  # 16, 8, 4, 2
  np.testing.assert_allclose(float(similarity.msgms_loss(x, y)), expected, rtol=1e-6)


def test_gaussian_smooth_matches_pixel_metrics():
  maps = np.random.default_rng(0).uniform(0, 1, (3, 16, 16)).astype(np.float32)
  for sigma in (0.0, 1.0, 2.5):
    np.testing.assert_allclose(similarity.gaussian_smooth(jnp.asarray(maps), sigma),
                               pixel_metrics.smooth_maps(maps, sigma), atol=1e-5)


def test_msgms_smoothing_scales_with_isize():
  assert [similarity.msgms_smoothing(s) for s in (16, 32, 64, 256)] == [3, 3, 5, 21]


# ---- Maps and map scores (losses.MAPS, losses.anomaly_map, eval.score=map_*). ----


def _hp(map_name='l1', smooth_sigma=0.0, topk_fraction=0.1):
  return types.SimpleNamespace(eval=types.SimpleNamespace(
      map=map_name, smooth_sigma=smooth_sigma, topk_fraction=topk_fraction))


def _inputs(maps: np.ndarray) -> losses.ScoreInputs:
  """ScoreInputs whose l1 map is `maps` [B, H, W]: x = 0 and the reconstruction = the map."""
  recon = jnp.asarray(maps[..., None], jnp.float32)
  return losses.ScoreInputs(x=jnp.zeros_like(recon), outputs={'recon': recon}, discriminator=None)


def test_map_scores_on_hand_made_maps():
  maps = np.zeros((2, 10, 10), np.float32)
  maps[0, 3, 4] = 1.0  # one hot pixel
  maps[1] = 0.05  # uniform, small
  maps[1, :2, :] = 0.5  # top 20 pixels at 0.5
  s = _inputs(maps)
  score = lambda name, **kw: np.asarray(losses.SCORES[name].fn(s, _hp(**kw)))
  np.testing.assert_allclose(score('map_mean'), [0.01, 0.2 * 0.5 + 0.8 * 0.05], rtol=1e-5)
  np.testing.assert_allclose(score('map_max'), [1.0, 0.5], rtol=1e-6)
  np.testing.assert_allclose(score('map_topk', topk_fraction=0.1), [0.1, 0.5], rtol=1e-5)
  np.testing.assert_allclose(score('map_topk', topk_fraction=0.3), [1 / 30, (10 + 0.5) / 30],
                             rtol=1e-5)
  # Smoothing spreads the single hot pixel but not the broad band: the max now prefers image 1.
  smoothed = score('map_max', smooth_sigma=2.0)
  expected = pixel_metrics.smooth_maps(maps, 2.0).reshape(2, -1).max(axis=1)
  np.testing.assert_allclose(smoothed, expected, atol=1e-5)
  assert smoothed[1] > smoothed[0]


def test_anomaly_map_averages_the_maps_of_several_tilings():
  x, y = _pair((2, 16, 16, 1))
  x, y = jnp.asarray(x), jnp.asarray(y)
  recons = jnp.stack([y, x])  # the second tiling reconstructs perfectly
  for name in losses.MAPS:
    single = losses.anomaly_map(x, {'recon': y}, name)
    both = losses.anomaly_map(x, {'recon': (x + y) / 2, 'recons': recons}, name)
    np.testing.assert_allclose(both, single / 2, atol=1e-5)
  np.testing.assert_allclose(
      losses.MAPS['riad'](x, y),
      similarity.ssim_anomaly_map(x, y) + similarity.msgms_anomaly_map(x, y), atol=1e-6)


def test_structural_loss_computes_only_the_switched_on_terms():
  x, y = (jnp.asarray(a) for a in _pair((2, 16, 16, 1)))
  total, terms = losses.structural_loss(x, y, 0.0, 0.0)
  assert total == 0.0 and terms == {}
  total, terms = losses.structural_loss(x, y, 2.0, 3.0)
  assert set(terms) == {'g_ssim', 'g_msgms'}
  np.testing.assert_allclose(total, 2 * similarity.ssim_loss(x, y) + 3 * similarity.msgms_loss(x, y),
                             rtol=1e-6)
