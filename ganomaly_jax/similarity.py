"""Structural image-similarity maps (SSIM, gradient-magnitude similarity) as pure jax.numpy.

Used as reconstruction losses beside L1 (`loss.w_ssim`, `loss.w_msgms`) and as anomaly maps
(`eval.map`) by every reconstruction method; docs/methods.md#grid_mask. They follow RIAD (Zavrtanik,
Kristan, Skočaj, "Reconstruction by inpainting for visual anomaly detection", Pattern Recognition
2021), which trains on L2 + SSIM + multi-scale GMS losses and scores with the MSGMS map.

  SSIM  Wang, Bovik, Sheikh, Simoncelli, "Image quality assessment: from error visibility to
        structural similarity", IEEE TIP 2004: Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03.
        Borders are handled as scikit-image's `structural_similarity(..., gaussian_weights=True,
        sigma=1.5, use_sample_covariance=False)` does (scipy 'reflect' = numpy 'symmetric' padding),
        so the full map matches it (tests/test_similarity.py).
  GMS   Xue, Zhang, Mou, Bovik, "Gradient magnitude similarity deviation", IEEE TIP 2014:
        Prewitt gradient magnitudes g, GMS = (2 g1 g2 + c) / (g1² + g2² + c).
  MSGMS RIAD: GMS at scales 1, 1/2, 1/4, 1/8 (2x2 average pooling), each map upsampled back
        (bilinear) and averaged.

Images are NHWC float in [-1, 1] (data range 2); every map is [B, H, W] (channels averaged).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

DATA_RANGE = 2.0  # images live in [-1, 1]
SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # scikit-image's window: radius int(3.5 * 1.5 + 0.5) = 5, an 11x11 window
SSIM_K1, SSIM_K2 = 0.01, 0.03
# Xue et al.'s constant is 0.0026 for images in [0, 1] (170 / 255²); gradients scale with the data
# range, so the constant scales with its square.
GMS_C = 0.0026 * DATA_RANGE ** 2
MSGMS_SCALES = 4  # 1, 1/2, 1/4, 1/8, as RIAD


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
  rows = sum(kernel[i] * padded[:, i:i + h] for i in range(taps))
  return sum(kernel[i] * rows[:, :, i:i + w] for i in range(taps))


def ssim_map(x: jax.Array, y: jax.Array) -> jax.Array:
  """Per-pixel SSIM (Wang et al. 2004, eq. 13 with population statistics), channels averaged: [B, H, W].

  1 where the two images agree in local mean, contrast and structure; lower where they differ.
  """
  kernel = gaussian_kernel(SSIM_SIGMA, SSIM_TRUNCATE)
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
  shift = lambda dy, dx: p[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
  gx = sum(shift(dy, -1) - shift(dy, 1) for dy in (-1, 0, 1)) / 3.0
  gy = sum(shift(-1, dx) - shift(1, dx) for dx in (-1, 0, 1)) / 3.0
  return jnp.sqrt(gx * gx + gy * gy + 1e-12)


def gms_map(x: jax.Array, y: jax.Array) -> jax.Array:
  """Gradient-magnitude similarity (Xue et al. 2014) of the channel means: [B, H, W, 1] in (0, 1]."""
  gx = gradient_magnitude(jnp.mean(x, axis=-1, keepdims=True))
  gy = gradient_magnitude(jnp.mean(y, axis=-1, keepdims=True))
  return (2 * gx * gy + GMS_C) / (gx * gx + gy * gy + GMS_C)


def _avg_pool2(images: jax.Array) -> jax.Array:
  b, h, w, c = images.shape
  return images.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def _pyramid(x: jax.Array, y: jax.Array):
  """The (x, y) pairs at scales 1, 1/2, ..., while both sides stay even and at least 2 pixels."""
  pairs = [(x, y)]
  for _ in range(MSGMS_SCALES - 1):
    h, w = x.shape[1:3]
    if h % 2 or w % 2 or min(h, w) < 4:
      break
    x, y = _avg_pool2(x), _avg_pool2(y)
    pairs.append((x, y))
  return pairs


def msgms_map(x: jax.Array, y: jax.Array) -> jax.Array:
  """Multi-scale GMS (RIAD): GMS at scales 1 .. 1/8, each upsampled bilinearly, averaged: [B, H, W]."""
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


def msgms_smoothing(isize: int) -> int:
  """Side of the mean filter applied to the MSGMS anomaly map: RIAD's 21 at 256, scaled, odd, >= 3."""
  return 2 * max(1, round(10 * isize / 256)) + 1


def mean_filter(maps: jax.Array, side: int) -> jax.Array:
  """side x side box filter of [B, H, W] maps with edge-replicated borders."""
  kernel = jnp.full((side,), 1.0 / side, jnp.float32)
  return separable_filter(maps[..., None], kernel, 'edge')[..., 0]


def gaussian_smooth(maps: jax.Array, sigma: float) -> jax.Array:
  """Gaussian smoothing of [B, H, W] maps as `pixel_metrics.smooth_maps` does it (scipy's default
  truncate 4 and 'reflect' borders), inside jit; sigma <= 0 returns the maps unchanged."""
  if sigma <= 0:
    return maps
  return separable_filter(maps[..., None], gaussian_kernel(sigma), 'symmetric')[..., 0]


def ssim_anomaly_map(x: jax.Array, y: jax.Array) -> jax.Array:
  """1 - SSIM map: 0 where reconstruction and input agree, up to 2."""
  return 1.0 - ssim_map(x, y)


def msgms_anomaly_map(x: jax.Array, y: jax.Array) -> jax.Array:
  """RIAD's anomaly map: 1 - MSGMS, mean-filtered (`msgms_smoothing`)."""
  return mean_filter(1.0 - msgms_map(x, y), msgms_smoothing(x.shape[1]))


def topk_count(num_pixels: int, fraction: float) -> int:
  """Pixels in the top-k mean: round(fraction * num_pixels), at least 1 (static under jit)."""
  return max(1, int(math.floor(fraction * num_pixels + 0.5)))
