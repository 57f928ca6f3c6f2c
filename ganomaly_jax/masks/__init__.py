"""Inpainting masks for masked SkipGANomaly (study method 5, docs/methods.md#masked), the grid-mask
proposal (docs/methods.md#grid_mask) and RIAD (docs/methods.md#riad); `KINDS` is the registry of
`mask.kind`.

Convention: a mask is float32 with shape [..., H, W, 1]; it is 1 inside the HOLE (the region the
generator must fill in from context) and 0 on visible pixels. Images are NHWC float32 in [-1, 1].

Three hole shapes (`mask.kind`):
  * 'square': one random square hole of side round(mask.size * isize) per training image; at
    evaluation a fixed set of such squares that tiles the image, so every pixel is reconstructed from
    context exactly once (this removes the "damage outside the hole is copied through" limitation).
  * 'grid': square cells (`mask.cells`, cells per image side, one entry per cell size) split into
    `mask.sets` disjoint sets, one mask per set, so the holes tile the image; the generator fills
    every masked copy and each pixel is taken from the copy where it was hidden. The split
    (`mask.partition`) is the study's alternating grid (cell (i, j) in set (i + j) mod n: two
    complementary checkerboards for n = 2) or RIAD's random balanced one (Zavrtanik, Kristan,
    Skočaj, Pattern Recognition 2021), drawn afresh each step. Training draws the cell size (and a
    random partition) per image or per batch (`mask.draw`, `grid.grid_train_masks`); evaluation
    uses every size with a fixed partition (`grid.grid_eval_masks`). The grid's cells and sets live
    in `ganomaly_jax.masks.grid`.
  * 'stain': random blurred irregular ellipses covering 1-12% of the image (Collin & De Vleeschouwer
    2020); evaluated with a fixed square tiling, see `tiling_masks`.

Everything is pure jax.numpy with static shapes: sizes and counts are Python ints, only the random
positions/shapes/partitions are traced, so the training-mask samplers can live inside a jitted train step.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp
from ganomaly_jax.masks import grid

# Stain area bounds as a fraction of the image (Collin & De Vleeschouwer 2020).
STAIN_MIN_FRACTION = 0.01
STAIN_MAX_FRACTION = 0.12
# Hole side (fraction of the image side) of the square tiling used to evaluate stain-trained models.
STAIN_EVAL_SIZE = 0.25

# Stain sampling. The total ellipse area is drawn well inside [1%, 12%] so the blurred-and-thresholded
# union lands in range on its own; `stain_masks` clips the rare outlier (tiny images) by construction.
_STAIN_ELLIPSES = 3  # the first is always on, the others each with probability 1/2
_STAIN_AREA = (0.03, 0.10)  # total target area; the largest active ellipse gets >= 1/3 of it
_STAIN_ASPECT = (0.5, 1.0)  # minor/major axis ratio; thinner ellipses vanish under the blur
_STAIN_WOBBLE = 0.3  # max relative amplitude of the boundary's angular harmonic (irregular edges)
_STAIN_HARMONICS = (2, 6)  # [low, high) integer frequency of that harmonic


def apply_mask(x: jax.Array, mask: jax.Array, fill: float) -> jax.Array:
  """Writes `fill` into the hole: x * (1 - mask) + fill * mask (mask broadcasts over channels)."""
  return x * (1.0 - mask) + fill * mask


def _iota(isize: int) -> jax.Array:
  return jnp.arange(isize, dtype=jnp.int32)


def _side(isize: int, size: float) -> int:
  return int(round(size * isize))


def _check_size(isize: int, size: float) -> int:
  """Returns the square hole side for `size`, raising if it is not a proper sub-square of the image."""
  if not 0.0 < size < 1.0:
    if size >= 1.0:
      raise ValueError(
          f'mask.size={size} must be in (0, 1): a hole side >= the image side means the '
          f'mask is larger than the {isize}x{isize} image.'
      )
    raise ValueError(
        f'mask.size={size} must be in (0, 1) (hole side as a fraction of the image side).'
    )
  side = _side(isize, size)
  if side < 1:
    raise ValueError(
        f'mask.size={size} gives a hole side of round({size} * {isize}) = 0 pixels; '
        f'use mask.size >= {0.5 / isize:.3g}.'
    )
  return side


def _check_tiling(isize: int, size: float) -> int:
  side = _check_size(isize, size)
  if isize % side:
    raise ValueError(
        f'mask.size={size} gives a hole side of {side} pixels, which does not divide '
        f'isize={isize}, so the evaluation holes cannot tile the image.'
    )
  return side


def square_masks(rng: jax.Array, batch: int, isize: int, size: float) -> jax.Array:
  """Samples one square hole per image.

  Args:
    rng: PRNG key.
    batch: number of masks.
    isize: image side in pixels.
    size: hole side as a fraction of the image side; the side is round(size * isize).

  Returns:
    [batch, isize, isize, 1] float32 masks; each top-left corner is uniform over every position that
    keeps the hole fully inside the image.
  """
  side = _check_size(isize, size)
  # Traced corners compared against an iota instead of dynamic_slice: same result, static shapes,
  # and no per-image scatter in the jitted step.
  # Flat draw, reshaped: XLA:CPU compiles multi-dimensional threefry slowly (see stain_masks).
  corner = jax.random.randint(rng, (batch * 2,), 0, isize - side + 1).reshape(batch, 2)
  iy = _iota(isize)[None, :, None]
  ix = _iota(isize)[None, None, :]
  y0 = corner[:, 0, None, None]
  x0 = corner[:, 1, None, None]
  inside = (iy >= y0) & (iy < y0 + side) & (ix >= x0) & (ix < x0 + side)
  return inside.astype(jnp.float32)[..., None]


def _gaussian_matrix(isize: int, sigma: float) -> jax.Array:
  """Row-normalized [isize, isize] Gaussian blur matrix (normalized so borders are not darkened)."""
  i = jnp.arange(isize, dtype=jnp.float32)
  g = jnp.exp(-0.5 * ((i[:, None] - i[None, :]) / sigma) ** 2)
  return g / g.sum(axis=1, keepdims=True)


def stain_masks(rng: jax.Array, batch: int, isize: int) -> jax.Array:
  """Samples random irregular "stain" holes (Collin & De Vleeschouwer 2020).

  Each stain is the union of up to three rotated ellipses whose radius wobbles with a random angular
  harmonic, blurred (separable Gaussian, sigma = isize / 64) and thresholded back at 0.5, so the hole
  is binary (well defined for the hole loss and for `combine_inpaintings`) with rounded, irregular
  edges. The total ellipse area is drawn in [3%, 10%] with each ellipse fully inside the image, so the
  union normally covers 1-12% of the image. On the rare image where rasterization or the threshold
  pushes it out of range (mostly tiny isize), the hole is replaced by the top-k pixels of the blurred
  field with k clipped to the range, so the bound holds by construction.

  Args:
    rng: PRNG key.
    batch: number of masks.
    isize: image side in pixels.

  Returns:
    [batch, isize, isize, 1] float32 masks with values in {0, 1} and hole fraction in [1%, 12%].
  """
  n = _STAIN_ELLIPSES
  num_pixels = isize * isize
  # One flat uniform draw split into named columns: a single threefry call, and a 1-D one, because
  # XLA:CPU compiles a rank-3 threefry much more slowly (docs/performance.md#other-figures).
  draws = jax.random.uniform(rng, (batch * n * 10,)).reshape(batch, n, 10)
  u_on, u_share, u_aspect, u_angle, u_wobble, u_freq, u_phase, u_cy, u_cx, u_total = (
      draws[..., i] for i in range(10)
  )
  on = (u_on < 0.5).at[:, 0].set(True)
  total = _STAIN_AREA[0] + (_STAIN_AREA[1] - _STAIN_AREA[0]) * u_total[:, :1]
  # Shares in [0.5, 1] before normalization keep every active ellipse visible.
  share = (0.5 + 0.5 * u_share) * on
  area = total * share / share.sum(axis=1, keepdims=True) * num_pixels  # pixels, 0 when off
  aspect = _STAIN_ASPECT[0] + (_STAIN_ASPECT[1] - _STAIN_ASPECT[0]) * u_aspect
  a = jnp.sqrt(area / (jnp.pi * aspect))  # semi-major axis: pi * a * b = area, b = aspect * a
  b = aspect * a
  theta = jnp.pi * u_angle
  wobble = _STAIN_WOBBLE * u_wobble
  low, high = _STAIN_HARMONICS
  freq = jnp.floor(low + (high - low) * u_freq)
  phase = 2 * jnp.pi * u_phase

  # Half extents of the rotated ellipse, grown by the wobble's largest radius (1 / sqrt(1 - wobble)),
  # bound where its center may go so that the ellipse stays inside the image and keeps its area.
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  grow = 1.0 / jnp.sqrt(1.0 - wobble)
  hx = jnp.sqrt((a * cos) ** 2 + (b * sin) ** 2) * grow
  hy = jnp.sqrt((a * sin) ** 2 + (b * cos) ** 2) * grow
  cx = hx + u_cx * jnp.maximum(isize - 2 * hx, 0.0)
  cy = hy + u_cy * jnp.maximum(isize - 2 * hy, 0.0)

  def per_ellipse(v):  # [batch, n] -> [batch, n, 1, 1]
    return v[:, :, None, None]

  coords = jnp.arange(isize, dtype=jnp.float32) + 0.5  # pixel centers
  dx = coords[None, None, None, :] - per_ellipse(cx)
  dy = coords[None, None, :, None] - per_ellipse(cy)
  u = (dx * per_ellipse(cos) + dy * per_ellipse(sin)) / jnp.maximum(per_ellipse(a), 1e-6)
  v = (-dx * per_ellipse(sin) + dy * per_ellipse(cos)) / jnp.maximum(per_ellipse(b), 1e-6)
  angle = jnp.arctan2(v, u)
  # Integer harmonic: the radius r0 / sqrt(1 + w sin(f angle + p)) is continuous across the branch cut.
  dist = (u**2 + v**2) * (
      1.0 + per_ellipse(wobble) * jnp.sin(per_ellipse(freq) * angle + per_ellipse(phase))
  )
  dist = jnp.where(per_ellipse(on), dist, jnp.inf)
  union = (dist <= 1.0).any(axis=1).astype(jnp.float32)  # [batch, H, W]

  g = _gaussian_matrix(isize, max(isize / 64.0, 0.25))
  blurred = jnp.einsum('ij,bjk,lk->bil', g, union, g)
  hole = blurred > 0.5

  # Safety net: keep the k highest-scoring pixels, k = clipped hole area. The tiny continuous
  # tie-breaker (closeness to an ellipse center) grows the stain outward instead of in raster order.
  lo = math.ceil(STAIN_MIN_FRACTION * num_pixels)
  hi = math.floor(STAIN_MAX_FRACTION * num_pixels)
  count = hole.sum(axis=(1, 2))
  k = jnp.clip(count, lo, hi)
  score = (blurred - 1e-3 * jnp.tanh(dist.min(axis=1))).reshape(batch, num_pixels)
  kth = jnp.take_along_axis(jnp.sort(score, axis=1), (num_pixels - k)[:, None], axis=1)
  clipped = score.reshape(batch, isize, isize) >= kth[:, :, None]
  in_range = ((count >= lo) & (count <= hi))[:, None, None]
  return jnp.where(in_range, hole, clipped).astype(jnp.float32)[..., None]


def tiling_masks(isize: int, size: float) -> jax.Array:
  """Square holes of side round(size * isize) that tile the image exactly.

  Args:
    isize: image side in pixels.
    size: hole side as a fraction of the image side, in (0, 1); the side must divide isize.

  Returns:
    [K, isize, isize, 1] float32 with K = (isize / side)^2 in row-major order of the tiles; the sum
    over K is 1 everywhere.
  """
  side = _check_tiling(isize, size)
  n = isize // side
  tile = _iota(isize) // side
  tile_id = tile[:, None] * n + tile[None, :]  # [H, W]
  return (tile_id[None] == jnp.arange(n * n)[:, None, None]).astype(jnp.float32)[..., None]


def _inpaint(
    reconstruct: Callable[[jax.Array], jax.Array], x: jax.Array, masks: jax.Array, fill: float
) -> jax.Array:
  """[K, 1 or B, H, W, 1] masks -> the K inpaintings [K, B, H, W, C], from ONE `reconstruct` call."""
  num_masks = masks.shape[0]
  masked = apply_mask(x[None], masks, fill)  # [K, B, H, W, C]
  recon = reconstruct(masked.reshape((num_masks * x.shape[0],) + x.shape[1:]))
  return recon.reshape((num_masks,) + x.shape)


def combine_inpaintings(
    reconstruct: Callable[[jax.Array], jax.Array], x: jax.Array, masks: jax.Array, fill: float
) -> jax.Array:
  """Builds one full reconstruction from the hole regions of K inpaintings.

  For each mask k the images are masked with `apply_mask(x, masks[k], fill)` and reconstructed; only
  the hole of each reconstruction is kept: x_hat = sum_k reconstruct(masked_k) * masks[k]. If the holes
  tile the image (`tiling_masks`, `grid.grid_train_masks`), every output pixel was predicted from
  context only.

  The K masked copies are stacked into ONE batch of K * B images and `reconstruct` is called once, so
  BatchNorm statistics and the traced graph see a single call, then the result is reshaped back.

  Args:
    reconstruct: images [N, H, W, C] -> reconstructed images [N, H, W, C].
    x: images [B, H, W, C].
    masks: [K, H, W, 1] masks shared by all images, or [K, B, H, W, 1] per-image masks.
    fill: value written into the holes.

  Returns:
    [B, H, W, C] combined reconstruction.
  """
  if masks.ndim == 4:
    masks = masks[:, None]  # share across the batch
  elif masks.ndim != 5:
    raise ValueError(f'masks must be [K, H, W, 1] or [K, B, H, W, 1], got shape {masks.shape}.')
  return (_inpaint(reconstruct, x, masks, fill) * masks).sum(axis=0)


def combine_tilings(
    reconstruct: Callable[[jax.Array], jax.Array], x: jax.Array, tilings: jax.Array, fill: float
) -> jax.Array:
  """`combine_inpaintings` for T tilings at once: one full reconstruction per tiling.

  All T * K masked copies go through ONE `reconstruct` call (T * K * B images), as in
  `combine_inpaintings`.

  Args:
    reconstruct: images [N, H, W, C] -> reconstructed images [N, H, W, C].
    x: images [B, H, W, C].
    tilings: [T, K, H, W, 1], each tiling's K masks summing to 1 (a kind's `eval_holes`).
    fill: value written into the holes.

  Returns:
    [T, B, H, W, C]: tiling t's reconstruction, every pixel from the copy where it was hidden.
  """
  t, k = tilings.shape[:2]
  flat = tilings.reshape((t * k, 1) + tilings.shape[2:])
  recon = _inpaint(reconstruct, x, flat, fill).reshape((t, k) + x.shape)
  return (recon * tilings[:, :, None]).sum(axis=1)


def validate_mask_config(kind: str, isize: int, mask) -> None:
  """Raises ValueError (one line naming mask.kind / mask.size / mask.cells / mask.sets / ...) for
  impossible values of the config's mask section `mask`.

  Checks exactly what the kind's `train_holes` and `eval_holes` will need, so a bad config fails before any
  compilation instead of inside a jitted step. kind 'none' (no masking) needs nothing.
  """
  if kind not in KINDS:
    raise ValueError(f'mask.kind={kind!r} is unknown; expected one of {", ".join(KINDS)}.')
  KINDS[kind].check(isize, mask)


def _check_stain(isize: int, mask) -> None:
  try:
    _check_tiling(isize, STAIN_EVAL_SIZE)
  except ValueError:
    side = _side(isize, STAIN_EVAL_SIZE)
    raise ValueError(
        f"mask.kind='stain' is evaluated with square holes of side round(isize / 4) = "
        f'{side}, which must divide isize={isize}.'
    ) from None


# ---- Registry of mask kinds (`mask.kind`): the step and validation read these entries. ----


@dataclasses.dataclass(frozen=True)
class MaskKind:
  """How one mask kind trains and evaluates, and which config keys it reads.

  Every function takes the config's mask section (`mask.size`, `mask.cells`, ...). Training
  either hides one random hole per image (`train_holes` -> [B, H, W, 1]; the loss weights the hole
  by loss.hole_weight) or, with `train_on_combination`, K complementary masks per image
  (`train_holes` -> [K, B, H, W, 1]) whose inpaintings are combined into the reconstruction that
  every loss sees. Evaluation combines the inpaintings of each tiling of `eval_holes`
  ([T, K, H, W, 1]) and, with T > 1, averages the T anomaly maps. `reads` names the keys the kind
  uses; validation refuses the others when they are set away from their defaults, so no setting is
  silently ignored.
  """

  train_holes: Callable[[jax.Array, int, int, object], jax.Array] | None = None
  eval_holes: Callable[[int, object], jax.Array] | None = None
  train_on_combination: bool = False
  # of the keys in `MASK_KEYS`
  reads: frozenset[str] = frozenset()
  check: Callable[[int, object], None] = lambda isize, mask: None


# Every key some mask kind reads; validation refuses those a kind does not read away from defaults.
MASK_KEYS = (
    'mask.size',
    'mask.cells',
    'mask.sets',
    'mask.partition',
    'mask.draw',
    'mask.fill',
    'loss.hole_weight',
)

KINDS: dict[str, MaskKind] = {
    'none': MaskKind(),
    # Masked SkipGANomaly, docs/methods.md#masked.
    'square': MaskKind(
        train_holes=lambda rng, batch, isize, m: square_masks(rng, batch, isize, m.size),
        eval_holes=lambda isize, m: tiling_masks(isize, m.size)[None],
        reads=frozenset({'mask.size', 'mask.fill', 'loss.hole_weight'}),
        check=lambda isize, m: _check_tiling(isize, m.size),
    ),
    # The grid-mask proposal and RIAD, docs/methods.md#grid_mask and #riad: no single hole, so no
    # hole weight.
    'grid': MaskKind(
        train_holes=lambda rng, batch, isize, m: grid.grid_train_masks(
            rng, batch, isize, m.cells, m.sets, m.partition, m.draw
        ),
        eval_holes=lambda isize, m: grid.grid_eval_masks(isize, m.cells, m.sets, m.partition),
        train_on_combination=True,
        reads=frozenset({'mask.cells', 'mask.sets', 'mask.partition', 'mask.draw', 'mask.fill'}),
        check=lambda isize, m: grid.check_grid(isize, m.cells, m.sets, m.partition, m.draw),
    ),
    'stain': MaskKind(
        train_holes=lambda rng, batch, isize, m: stain_masks(rng, batch, isize),
        eval_holes=lambda isize, m: tiling_masks(isize, STAIN_EVAL_SIZE)[None],
        reads=frozenset({'mask.fill', 'loss.hole_weight'}),
        check=_check_stain,
    ),
}
