"""SSIM / MSGMS maps and losses (ganomaly_jax.similarity) and the map scores of ganomaly_jax.losses.

SSIM is checked against scikit-image's `structural_similarity` on fixed inputs; MSGMS and the scores
on hand-made cases. Tiny shapes, so the file runs in seconds on 2 CPU cores.
"""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.ndimage
from skimage.metrics import structural_similarity

from ganomaly_jax import losses, similarity
from ganomaly_jax import scores as scores_lib
from ganomaly_jax.evaluation import pixel_metrics

# The maps and losses jitted once per input shape: op-by-op dispatch compiles each of their many
# small ops on its own, which took most of this file's time.
jitted = types.SimpleNamespace(
    **{
        name: jax.jit(getattr(similarity, name))
        for name in (
            'ssim_map',
            'ssim_loss',
            'gms_map',
            'msgms_map',
            'msgms_loss',
            'ssim_anomaly_map',
            'msgms_anomaly_map',
        )
    }
)


def _pair(shape, seed=0, noise=0.3):
  rng = np.random.default_rng(seed)
  x = rng.uniform(-1.0, 1.0, shape).astype(np.float32)
  y = np.clip(x + noise * rng.normal(size=shape), -1.0, 1.0).astype(np.float32)
  return x, y


@pytest.mark.parametrize(
    'shape', [(16, 16, 1), (32, 24, 3), pytest.param((256, 256, 1), marks=pytest.mark.slow)]
)
def test_ssim_map_matches_scikit_image_on_unit_intensities(shape):
  # SSIM of [-1, 1] images is scikit-image's SSIM of (x + 1) / 2 with data_range=1, with the
  # window sigma of the image size (1 px up to 170 px, 1.5 at 256 px).
  x, y = _pair(shape)
  sigma = similarity.ssim_sigma(min(shape[:2]))
  assert sigma == (1.5 if shape[0] == 256 else 1.0)
  mean, full = structural_similarity(
      (x + 1) / 2,
      (y + 1) / 2,
      full=True,
      gaussian_weights=True,
      sigma=sigma,
      use_sample_covariance=False,
      data_range=1.0,
      channel_axis=-1,
  )
  ours = np.asarray(jitted.ssim_map(jnp.asarray(x[None]), jnp.asarray(y[None])))[0]
  np.testing.assert_allclose(ours, full.mean(axis=-1), atol=1e-5)
  # scikit-image's mean crops the window radius int(3.5 sigma + 0.5) off each border first.
  r = int(3.5 * sigma + 0.5)
  np.testing.assert_allclose(ours[r:-r, r:-r].mean(), mean, atol=1e-5)


def _step(level: float, size: int = 16, amp: float = 0.1):
  """A flat patch at `level` and the same patch with a 4x4 square brightened by `amp`."""
  x = np.full((1, size, size, 1), level, np.float32)
  y = x.copy()
  y[0, 6:10, 6:10, 0] += amp
  return jnp.asarray(x), jnp.asarray(y)


def test_ssim_map_is_of_the_same_order_on_dark_and_mid_grey():
  # The same local change on a dark (-0.9) and on a mid-grey (-0.05) patch. On signed intensities
  # the mid-grey local means straddle 0, SSIM's luminance term goes negative and the map there was
  # ~3 times the dark one's; on [0, 1] intensities both are of the same order.
  dark = float(jitted.ssim_anomaly_map(*_step(-0.9)).max())
  grey = float(jitted.ssim_anomaly_map(*_step(-0.05)).max())
  assert dark > 0.1 and grey > 0.1
  assert 2 / 3 < grey / dark < 3 / 2, (dark, grey)


def _texture_with_a_black_disc(size: int, radius: float, seed: int = 0):
  """(input with a black disc, a near-perfect reconstruction of the texture, disc mask)."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:size, :size]
  f = 32 / size
  texture = (
      0.35 * np.sin(xx * 1.3 * f)
      + 0.35 * np.cos((yy * 0.9 + xx * 0.4) * f)
      + 0.15 * rng.normal(size=(size, size))
  )
  texture = np.clip(texture, -1, 1).astype(np.float32)
  cy, cx = rng.uniform(radius + 1, size - radius - 1, 2)
  disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2
  x = texture.copy()
  x[disc] = -1.0
  recon = np.clip(texture + 0.03 * rng.normal(size=texture.shape), -1, 1).astype(np.float32)
  return jnp.asarray(x[None, ..., None]), jnp.asarray(recon[None, ..., None]), disc


@pytest.mark.parametrize('size, radius', [(16, 2.5), (32, 3.0)])
def test_black_disc_gives_the_highest_structural_map_values_inside_it(size, radius):
  # A black disc pasted into a texture, reconstructed as the texture (as a good inpainting would).
  ratios = []
  for seed in range(6):
    x, recon, disc = _texture_with_a_black_disc(size, radius, seed)
    near = scipy.ndimage.binary_dilation(disc, iterations=2)  # the disc and its rim
    far = ~scipy.ndimage.binary_dilation(disc, iterations=3)
    ssim = np.asarray(jitted.ssim_anomaly_map(x, recon))[0]
    # On signed intensities SSIM fired on the mid-grey texture more than inside the black disc.
    assert ssim[disc].max() > ssim[~near].max(), seed
    msgms = np.asarray(jitted.msgms_anomaly_map(x, recon))[0]
    assert msgms[disc].max() > msgms[~near].max(), seed
    ratios.append(msgms[disc].mean() / msgms[far].mean())
  # MSGMS filters of 256 px (scales down to 2 px) spread the disc over the image: inside it, the
  # map was about 3 (16 px) and 9 (32 px) times its mean away from the disc.
  assert np.median(ratios) > 12, ratios


def test_ssim_identical_images_and_loss():
  x, y = _pair((2, 16, 16, 3))
  np.testing.assert_allclose(jitted.ssim_map(jnp.asarray(x), jnp.asarray(x)), 1.0, atol=1e-5)
  assert abs(float(jitted.ssim_loss(jnp.asarray(x), jnp.asarray(x)))) < 1e-5
  assert float(jitted.ssim_loss(jnp.asarray(x), jnp.asarray(y))) > 0.1


def test_msgms_identical_images_give_a_zero_map():
  x, _ = _pair((2, 16, 16, 3))
  x = jnp.asarray(x)
  np.testing.assert_allclose(jitted.msgms_map(x, x), 1.0, atol=1e-6)
  np.testing.assert_allclose(jitted.msgms_anomaly_map(x, x), 0.0, atol=1e-6)
  assert abs(float(jitted.msgms_loss(x, x))) < 1e-6


def test_msgms_map_peaks_at_a_missing_step_edge():
  # x has a vertical step edge between columns 7 and 8; the reconstruction is flat. GMS is 1 on flat
  # regions of both and drops where x has a gradient the reconstruction lacks.
  x = np.full((1, 16, 16, 1), -1.0, np.float32)
  x[:, :, 8:, :] = 1.0  # columns 8.. are bright
  recon = np.full_like(x, -1.0)
  gms = np.asarray(jitted.gms_map(jnp.asarray(x), jnp.asarray(recon)))[0, :, :, 0]
  np.testing.assert_allclose(gms[:, :6], 1.0, atol=1e-6)  # far from the edge: no gradient in either
  np.testing.assert_allclose(gms[:, 10:], 1.0, atol=1e-6)
  assert gms[:, 7:9].max() < 0.01  # at the edge: strong gradient in x only
  amap = np.asarray(jitted.msgms_anomaly_map(jnp.asarray(x), jnp.asarray(recon)))[0]
  column = amap.mean(axis=0)
  assert column.argmax() in (7, 8)
  # The coarse scale (8 px at 16 px) spreads the edge, but the map falls off away from it.
  assert column[7:9].min() > 3 * max(column[0], column[-1])
  assert np.all(np.diff(column[:8]) >= -1e-6) and np.all(np.diff(column[8:]) <= 1e-6)
  np.testing.assert_allclose(amap, np.broadcast_to(amap[:1], amap.shape), atol=1e-6)  # every row


def test_msgms_loss_is_the_mean_over_scales():
  x, y = (jnp.asarray(a) for a in _pair((2, 16, 16, 1)))
  expected = np.mean(
      [float(jnp.mean(1.0 - jitted.gms_map(xs, ys))) for xs, ys in similarity._pyramid(x, y)]
  )
  assert [p[0].shape[1] for p in similarity._pyramid(x, y)] == [16, 8]  # coarsest >= 8 px
  np.testing.assert_allclose(float(jitted.msgms_loss(x, y)), expected, rtol=1e-6)


def test_gaussian_smooth_matches_pixel_metrics():
  maps = np.random.default_rng(0).uniform(0, 1, (3, 16, 16)).astype(np.float32)
  for sigma in (0.0, 1.0, 2.5):
    np.testing.assert_allclose(
        similarity.gaussian_smooth(jnp.asarray(maps), sigma),
        pixel_metrics.smooth_maps(maps, sigma),
        atol=1e-5,
    )


def test_filters_scale_with_the_image():
  # RIAD's settings at 256 px, scaled with the side, with floors (similarity's module docstring).
  sides = (16, 32, 64, 128, 256)
  assert [similarity.ssim_sigma(s) for s in sides] == [1.0, 1.0, 1.0, 1.0, 1.5]
  assert [similarity.msgms_scales(s) for s in sides] == [2, 3, 4, 4, 4]
  assert [similarity.msgms_smoothing(s) for s in sides] == [1, 3, 5, 11, 21]


def test_gms_is_unchanged_by_the_shift_to_unit_intensities():
  # GMS of (x + 1) / 2 with c = 0.0026 equals GMS of x with c scaled by the squared range (2²).
  x, y = (jnp.asarray(a) for a in _pair((2, 16, 16, 1)))
  gx, gy = similarity.gradient_magnitude(x), similarity.gradient_magnitude(y)
  signed = (2 * gx * gy + 4 * similarity.GMS_C) / (gx * gx + gy * gy + 4 * similarity.GMS_C)
  np.testing.assert_allclose(jitted.gms_map(x, y), signed, rtol=1e-5)


# ---- Maps and map scores (losses.MAPS, losses.anomaly_map, eval.score=map_*). ----


def _hp(map_name='l1', smooth_sigma=0.0, topk_fraction=0.1):
  return types.SimpleNamespace(
      eval=types.SimpleNamespace(
          map=map_name, smooth_sigma=smooth_sigma, topk_fraction=topk_fraction, map_filter=0
      )
  )


def _inputs(maps: np.ndarray) -> scores_lib.ScoreInputs:
  """ScoreInputs whose l1 map is `maps` [B, H, W]: x = 0 and the reconstruction = the map."""
  recon = jnp.asarray(maps[..., None], jnp.float32)
  return scores_lib.ScoreInputs(
      x=jnp.zeros_like(recon), outputs={'recon': recon}, discriminator=None
  )


def test_map_scores_on_hand_made_maps():
  maps = np.zeros((2, 10, 10), np.float32)
  maps[0, 3, 4] = 1.0  # one hot pixel
  maps[1] = 0.05  # uniform, small
  maps[1, :2, :] = 0.5  # top 20 pixels at 0.5
  s = _inputs(maps)
  score = lambda name, **kw: np.asarray(scores_lib.SCORES[name].fn(s, _hp(**kw)))
  np.testing.assert_allclose(score('map_mean'), [0.01, 0.2 * 0.5 + 0.8 * 0.05], rtol=1e-5)
  np.testing.assert_allclose(score('map_max'), [1.0, 0.5], rtol=1e-6)
  np.testing.assert_allclose(score('map_topk', topk_fraction=0.1), [0.1, 0.5], rtol=1e-5)
  np.testing.assert_allclose(
      score('map_topk', topk_fraction=0.3), [1 / 30, (10 + 0.5) / 30], rtol=1e-5
  )
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
  # Two programs (the sum as one, its terms as two): equal to float32 round-off.
  np.testing.assert_allclose(
      jax.jit(losses.MAPS['ssim_msgms'])(x, y),
      jitted.ssim_anomaly_map(x, y) + jitted.msgms_anomaly_map(x, y),
      atol=1e-5,
  )


def test_every_map_stays_within_its_declared_range():
  # The pixel histogram spans [0, max_value] of the map in use: worst cases must stay inside.
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.choice([-1.0, 1.0], (2, 16, 16, 1)).astype(np.float32))
  for y in (-x, jnp.zeros_like(x), jnp.asarray(rng.uniform(-1, 1, x.shape).astype(np.float32))):
    for name, entry in losses.MAPS.items():
      amap = np.asarray(entry(x, y))
      assert amap.min() >= -1e-6 and amap.max() <= entry.max_value + 1e-6, name


def test_structural_loss_computes_only_the_switched_on_terms():
  x, y = (jnp.asarray(a) for a in _pair((2, 16, 16, 1)))
  total, terms = losses.structural_loss(x, y, 0.0, 0.0)
  assert total == 0.0 and terms == {}
  total, terms = losses.structural_loss(x, y, 2.0, 3.0)
  assert set(terms) == {'g_ssim', 'g_msgms'}
  np.testing.assert_allclose(
      total, 2 * jitted.ssim_loss(x, y) + 3 * jitted.msgms_loss(x, y), rtol=1e-6
  )
