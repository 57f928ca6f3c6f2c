"""Structural image-similarity maps (SSIM, gradient-magnitude similarity) as pure jax.numpy.

Used as reconstruction losses beside the pixel loss (`loss.w_ssim`, `loss.w_msgms`) and as anomaly
maps (`eval.map`) by every reconstruction method; docs/methods.md#riad. They follow RIAD (Zavrtanik,
Kristan, Skočaj, "Reconstruction by inpainting for visual anomaly detection", Pattern Recognition
2021), which trains on L2 + SSIM + multi-scale GMS losses and scores with the MSGMS map.

  SSIM  Wang, Bovik, Sheikh, Simoncelli, "Image quality assessment: from error visibility to
        structural similarity", IEEE TIP 2004: Gaussian window, K1 = 0.01, K2 = 0.03. Borders as
        scikit-image's `structural_similarity(..., gaussian_weights=True, use_sample_covariance=
        False)` handles them (scipy 'reflect' = numpy 'symmetric' padding), so the full map matches
        it (tests/test_similarity.py).
  GMS   Xue, Zhang, Mou, Bovik, "Gradient magnitude similarity deviation", IEEE TIP 2014:
        Prewitt gradient magnitudes g, GMS = (2 g1 g2 + c) / (g1² + g2² + c), c = 0.0026.
  MSGMS RIAD: GMS on an average-pooled pyramid, each map upsampled back (bilinear) and averaged.

Intensities. The images are NHWC in [-1, 1]; SSIM and GMS are computed on (x + 1) / 2 in [0, 1]
with a data range of 1. SSIM's luminance term (2 μx μy + C1) / (μx² + μy² + C1) is a similarity only
for non-negative intensities: on signed images it collapses (and goes negative) wherever the local
means straddle 0, i.e. on mid-grey, and barely moves near ±1. GMS is unchanged by the shift, and its
constant 0.0026 is Xue et al.'s for [0, 1] images.

Sizes. Every filter is defined at 256 px, the resolution of RIAD and of the study's cars, and scaled
with the image side (`scales_for`), with floors where a filter would stop meaning anything:
  * SSIM window: Gaussian σ = 1.5 · side / 256, at least 1 px (`ssim_sigma`). Below 1 px the nearest
    neighbours weigh less than 0.61 of the centre and the local variance and covariance come from
    little more than one pixel. Support radius int(3.5 σ + 0.5), as scikit-image.
  * MSGMS scales: 1, 1/2, 1/4, 1/8 as RIAD at 256 px, but only while the scale stays at least 8 px
    (`msgms_scales`): at 4 px every pixel of a 3×3 Prewitt filter touches the border.
  * The anomaly map's mean filter: RIAD's 21×21 at 256 px, the odd side nearest 21 · side / 256
    (`msgms_smoothing`; 1, i.e. none, at 16 px).
Every map is [B, H, W] (channels averaged).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

# The resolution at which RIAD (and Wang et al.'s window) define every size below.
REFERENCE_SIDE = 256
SSIM_SIGMA = 1.5  # at 256 px
SSIM_MIN_SIGMA = 1.0
SSIM_TRUNCATE = 3.5  # scikit-image's window: radius int(3.5 * sigma + 0.5), 11x11 at sigma 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
DATA_RANGE = 1.0  # SSIM and GMS see (x + 1) / 2
GMS_C = 0.0026  # Xue et al.'s constant for [0, 1] images (170 / 255²)
MSGMS_SCALES = 4  # 1, 1/2, 1/4, 1/8 at 256 px, as RIAD
MSGMS_MIN_SIDE = 8  # the coarsest scale keeps at least this many pixels per side
MEAN_FILTER_SIDE = 21  # RIAD's mean filter of the MSGMS map, at 256 px


def to_unit(x: jax.Array) -> jax.Array:
  """Images in [-1, 1] -> intensities in [0, 1] (what SSIM and GMS assume)."""
  return (x + 1.0) * 0.5


def ssim_sigma(side: int) -> float:
  """SSIM's Gaussian window σ for images of `side` px: 1.5 at 256 px, scaled, at least 1 px."""
  return max(SSIM_SIGMA * side / REFERENCE_SIDE, SSIM_MIN_SIGMA)


def msgms_scales(side: int) -> int:
  """Pyramid levels of MSGMS: up to RIAD's 4, while the coarsest level keeps >= 8 px per side.

  16 px: 2 (16, 8); 32 px: 3 (32, 16, 8); 64 px and up: 4.
  """
  if side < MSGMS_MIN_SIDE:
    return 1
  return min(MSGMS_SCALES, 1 + int(math.floor(math.log2(side / MSGMS_MIN_SIDE))))


def msgms_smoothing(side: int) -> int:
  """Side of the MSGMS anomaly map's mean filter: the odd number nearest 21 · side / 256.

  16 px: 1 (no filter); 32: 3; 64: 5; 128: 11; 256: 21 (RIAD's).
  """
  return max(1, 2 * round((MEAN_FILTER_SIDE * side / REFERENCE_SIDE - 1) / 2) + 1)


@dataclasses.dataclass(frozen=True)
class Scales:
  """The size-dependent settings of one image side (see the module docstring)."""

  side: int
  ssim_sigma: float
  msgms_scales: int
  mean_filter: int


def scales_for(side: int) -> Scales:
  """Every size-dependent setting for square images of `side` px (the rules of this module)."""
  return Scales(side, ssim_sigma(side), msgms_scales(side), msgms_smoothing(side))


def gaussian_kernel(sigma: float, truncate: float = 4.0) -> jax.Array:
  """Normalised 1-D Gaussian of radius int(truncate * sigma + 0.5), as scipy.ndimage builds it."""
  radius = int(truncate * sigma + 0.5)
  t = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
  w = jnp.exp(-0.5 * (t / sigma) ** 2)
  return w / w.sum()


def separable_filter(images: jax.Array, kernel: jax.Array, mode: str = 'symmetric') -> jax.Array:
  """Filters [B, H, W, C] along H then W with the same odd 1-D kernel; output keeps the shape.

  A sum of shifted slices rather than a convolution: the kernels are short (<= 21 taps), the shapes
  static, and XLA fuses it into one loop on every backend.
  """
  taps = kernel.shape[0]
  r = taps // 2
  h, w = images.shape[1:3]
  padded = jnp.pad(images, ((0, 0), (r, r), (r, r), (0, 0)), mode=mode)
  rows = sum(kernel[i] * padded[:, i : i + h] for i in range(taps))
  return sum(kernel[i] * rows[:, :, i : i + w] for i in range(taps))


def _side(x: jax.Array) -> int:
  return min(x.shape[1], x.shape[2])


def ssim_map(x: jax.Array, y: jax.Array) -> jax.Array:
  """Per-pixel SSIM (Wang et al. 2004, eq. 13 with population statistics) of (x + 1) / 2 and
  (y + 1) / 2, data range 1, window `ssim_sigma(side)`; channels averaged: [B, H, W] in [-1, 1].

  1 where the two images agree in local mean, contrast and structure; lower where they differ.
  """
  x, y = to_unit(x), to_unit(y)
  kernel = gaussian_kernel(ssim_sigma(_side(x)), SSIM_TRUNCATE)
  blur = lambda a: separable_filter(a, kernel, 'symmetric')
  c1 = (SSIM_K1 * DATA_RANGE) ** 2
  c2 = (SSIM_K2 * DATA_RANGE) ** 2
  ux, uy = blur(x), blur(y)
  vx = blur(x * x) - ux * ux
  vy = blur(y * y) - uy * uy
  vxy = blur(x * y) - ux * uy
  s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
  return jnp.mean(s, axis=-1)


def gradient_magnitude(gray: jax.Array) -> jax.Array:
  """Prewitt gradient magnitude of [B, H, W, 1] images (edge-replicated borders, so the image border
  itself is not an edge)."""
  p = jnp.pad(gray, ((0, 0), (1, 1), (1, 1), (0, 0)), mode='edge')
  h, w = gray.shape[1:3]
  shift = lambda dy, dx: p[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
  gx = sum(shift(dy, -1) - shift(dy, 1) for dy in (-1, 0, 1)) / 3.0
  gy = sum(shift(-1, dx) - shift(1, dx) for dx in (-1, 0, 1)) / 3.0
  return jnp.sqrt(gx * gx + gy * gy + 1e-12)


def gms_map(x: jax.Array, y: jax.Array) -> jax.Array:
  """Gradient-magnitude similarity (Xue et al. 2014) of the channel means of (x + 1) / 2 and
  (y + 1) / 2: [B, H, W, 1] in (0, 1]."""
  gx = gradient_magnitude(jnp.mean(to_unit(x), axis=-1, keepdims=True))
  gy = gradient_magnitude(jnp.mean(to_unit(y), axis=-1, keepdims=True))
  return (2 * gx * gy + GMS_C) / (gx * gx + gy * gy + GMS_C)


def _avg_pool2(images: jax.Array) -> jax.Array:
  b, h, w, c = images.shape
  return images.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def _pyramid(x: jax.Array, y: jax.Array):
  """The (x, y) pairs at scales 1, 1/2, ...: `msgms_scales(side)` levels, while the sides stay even."""
  pairs = [(x, y)]
  for _ in range(msgms_scales(_side(x)) - 1):
    h, w = x.shape[1:3]
    if h % 2 or w % 2:
      break
    x, y = _avg_pool2(x), _avg_pool2(y)
    pairs.append((x, y))
  return pairs


def msgms_map(x: jax.Array, y: jax.Array) -> jax.Array:
  """Multi-scale GMS (RIAD): GMS on the `_pyramid`, each upsampled bilinearly, averaged: [B, H, W]."""
  b, h, w, _ = x.shape
  maps = [jax.image.resize(gms_map(xs, ys), (b, h, w, 1), 'linear') for xs, ys in _pyramid(x, y)]
  return jnp.mean(jnp.stack(maps), axis=0)[..., 0]


def ssim_loss(x: jax.Array, y: jax.Array) -> jax.Array:
  """1 - mean SSIM (RIAD's L_SSIM)."""
  return 1.0 - jnp.mean(ssim_map(x, y))


def msgms_loss(x: jax.Array, y: jax.Array) -> jax.Array:
  """RIAD's L_GMS: the mean over scales of mean(1 - GMS) at that scale."""
  pairs = _pyramid(x, y)
  return sum(jnp.mean(1.0 - gms_map(xs, ys)) for xs, ys in pairs) / len(pairs)


def mean_filter(maps: jax.Array, side: int) -> jax.Array:
  """side x side box filter of [B, H, W] maps with edge-replicated borders (side 1: unchanged)."""
  if side <= 1:
    return maps
  kernel = jnp.full((side,), 1.0 / side, jnp.float32)
  return separable_filter(maps[..., None], kernel, 'edge')[..., 0]


def gaussian_smooth(maps: jax.Array, sigma: float) -> jax.Array:
  """Gaussian smoothing of [B, H, W] maps as `pixel_metrics.smooth_maps` does it (scipy's default
  truncate 4 and 'reflect' borders), inside jit; sigma <= 0 returns the maps unchanged."""
  if sigma <= 0:
    return maps
  return separable_filter(maps[..., None], gaussian_kernel(sigma), 'symmetric')[..., 0]


def ssim_anomaly_map(x: jax.Array, y: jax.Array) -> jax.Array:
  """1 - SSIM map: 0 where reconstruction and input agree, at most 2."""
  return 1.0 - ssim_map(x, y)


def msgms_anomaly_map(x: jax.Array, y: jax.Array, filter_side: int = 0) -> jax.Array:
  """RIAD's anomaly map: 1 - MSGMS, mean-filtered over `filter_side` px (0: `msgms_smoothing`'s
  scaled side); in [0, 1)."""
  return mean_filter(1.0 - msgms_map(x, y), filter_side or msgms_smoothing(_side(x)))


def topk_count(num_pixels: int, fraction: float) -> int:
  """Pixels in the top-k mean: round(fraction * num_pixels), at least 1 (static under jit)."""
  return max(1, int(math.floor(fraction * num_pixels + 0.5)))
