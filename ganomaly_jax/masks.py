"""Inpainting masks for masked SkipGANomaly (study method 5, docs/methods.md#masked) and the
grid-mask proposal (docs/methods.md#grid_mask); `KINDS` is the registry of `mask.kind`.

Convention: a mask is float32 with shape [..., H, W, 1]; it is 1 inside the HOLE (the region the
generator must fill in from context) and 0 on visible pixels. Images are NHWC float32 in [-1, 1].

Three hole shapes (`mask.kind`):
  * 'square': one random square hole of side round(mask.size * isize) per training image; at
    evaluation a fixed set of such squares that tiles the image, so every pixel is reconstructed from
    context exactly once (this removes the "damage outside the hole is copied through" limitation).
  * 'grid': two complementary checkerboards of `mask.cells` x `mask.cells` cells; the generator fills
    both and the two hole regions are combined into one full reconstruction (training and eval).
  * 'stain': random blurred irregular ellipses covering 1-12% of the image (Collin & De Vleeschouwer
    2020); evaluated with a fixed square tiling, see `eval_masks`.

Everything is pure jax.numpy with static shapes: sizes and counts are Python ints, only the random
positions/shapes are traced, so the training-mask samplers can live inside a jitted train step.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import jax
import jax.numpy as jnp

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
      raise ValueError(f'mask.size={size} must be in (0, 1): a hole side >= the image side means the '
                       f'mask is larger than the {isize}x{isize} image.')
    raise ValueError(f'mask.size={size} must be in (0, 1) (hole side as a fraction of the image side).')
  side = _side(isize, size)
  if side < 1:
    raise ValueError(f'mask.size={size} gives a hole side of round({size} * {isize}) = 0 pixels; '
                     f'use mask.size >= {0.5 / isize:.3g}.')
  return side


def _check_tiling(isize: int, size: float) -> int:
  side = _check_size(isize, size)
  if isize % side:
    raise ValueError(f'mask.size={size} gives a hole side of {side} pixels, which does not divide '
                     f'isize={isize}, so the evaluation holes cannot tile the image.')
  return side


def _check_cells(isize: int, cells: int) -> None:
  if not isinstance(cells, int) or cells < 2:
    raise ValueError(f'mask.cells={cells!r} must be an integer >= 2 (cells per side of the grid mask).')
  if isize % cells:
    raise ValueError(f'mask.cells={cells} must divide isize={isize} so grid cells are equal.')


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
  # XLA:CPU compiles a rank-3 threefry ~5x slower (seconds per shape in tests).
  draws = jax.random.uniform(rng, (batch * n * 10,)).reshape(batch, n, 10)
  (u_on, u_share, u_aspect, u_angle, u_wobble, u_freq, u_phase, u_cy, u_cx,
   u_total) = (draws[..., i] for i in range(10))
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
  dist = (u ** 2 + v ** 2) * (1.0 + per_ellipse(wobble) * jnp.sin(per_ellipse(freq) * angle
                                                                    + per_ellipse(phase)))
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


def grid_masks(isize: int, cells: int) -> jax.Array:
  """Two complementary checkerboard masks.

  Args:
    isize: image side in pixels.
    cells: grid cells per side; must divide isize and be >= 2.

  Returns:
    [2, isize, isize, 1] float32; mask 0 has holes on the cells with even (row + col), mask 1 on the
    odd ones, so m0 + m1 == 1 everywhere and horizontally/vertically adjacent cells differ.
  """
  _check_cells(isize, cells)
  cell = _iota(isize) // (isize // cells)
  even = ((cell[:, None] + cell[None, :]) % 2 == 0).astype(jnp.float32)
  return jnp.stack([even, 1.0 - even])[..., None]


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


def eval_masks(kind: str, isize: int, size: float, cells: int) -> jax.Array:
  """The fixed set of masks whose holes tile the image, used at evaluation time.

  'square' -> `tiling_masks(isize, size)`, 'grid' -> `grid_masks(isize, cells)`. 'stain' ->
  `tiling_masks(isize, 0.25)`: stains are random, so a stain tiling would be neither reproducible nor
  exact; a fixed tiling of small (1/16 of the image) square holes is a deterministic stand-in of
  comparable scale that still reconstructs every pixel from context.

  Returns:
    [K, isize, isize, 1] float32 masks, summing to 1 over K.
  """
  entry = KINDS.get(kind)
  if entry is None or entry.eval_holes is None:
    raise ValueError(f'mask.kind={kind!r} has no evaluation masks; expected one of '
                     f'{", ".join(k for k, e in KINDS.items() if e.eval_holes)}.')
  return entry.eval_holes(isize, size, cells)


def train_masks(kind: str, rng: jax.Array, batch: int, isize: int, size: float,
                cells: int) -> jax.Array:
  """Training masks for one batch.

  Returns:
    'square' -> [batch, isize, isize, 1] from `square_masks`; 'stain' -> [batch, isize, isize, 1] from
    `stain_masks`; 'grid' -> [2, isize, isize, 1] from `grid_masks`: the same two complementary masks
    for every image (rng and batch unused), to be broadcast by the caller, typically through
    `combine_inpaintings`.
  """
  entry = KINDS.get(kind)
  if entry is not None and entry.train_on_combination:
    return entry.eval_holes(isize, size, cells)
  if entry is None or entry.train_holes is None:
    raise ValueError(f'mask.kind={kind!r} has no training masks; expected one of '
                     f'{", ".join(k for k, e in KINDS.items() if e.eval_holes)}.')
  return entry.train_holes(rng, batch, isize, size, cells)


def combine_inpaintings(reconstruct: Callable[[jax.Array], jax.Array], x: jax.Array, masks: jax.Array,
                        fill: float) -> jax.Array:
  """Builds one full reconstruction from the hole regions of K inpaintings.

  For each mask k the images are masked with `apply_mask(x, masks[k], fill)` and reconstructed; only
  the hole of each reconstruction is kept: x_hat = sum_k reconstruct(masked_k) * masks[k]. If the holes
  tile the image (`eval_masks`, `grid_masks`), every output pixel was predicted from context only.

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
  num_masks = masks.shape[0]
  masked = apply_mask(x[None], masks, fill)  # [K, B, H, W, C]
  recon = reconstruct(masked.reshape((num_masks * x.shape[0],) + x.shape[1:]))
  recon = recon.reshape((num_masks,) + x.shape)
  return (recon * masks).sum(axis=0)


def validate_mask_config(kind: str, isize: int, size: float, cells: int) -> None:
  """Raises ValueError (one line naming mask.kind / mask.size / mask.cells) for impossible values.

  Checks exactly what `train_masks` and `eval_masks` will need, so a bad config fails before any
  compilation instead of inside a jitted step. kind 'none' (no masking) needs nothing.
  """
  if kind not in KINDS:
    raise ValueError(f'mask.kind={kind!r} is unknown; expected one of {", ".join(KINDS)}.')
  KINDS[kind].check(isize, size, cells)


def _check_stain(isize: int, size: float, cells: int) -> None:
  try:
    _check_tiling(isize, STAIN_EVAL_SIZE)
  except ValueError:
    side = _side(isize, STAIN_EVAL_SIZE)
    raise ValueError(f"mask.kind='stain' is evaluated with square holes of side round(isize / 4) = "
                     f'{side}, which must divide isize={isize}.') from None


# ---- Registry of mask kinds (`mask.kind`): the step and validation read these entries. ----


@dataclasses.dataclass(frozen=True)
class MaskKind:
  """How one mask kind trains and evaluates, and which config keys it reads.

  Training either hides one random hole per image (`train_holes`, the loss weights the hole by
  loss.hole_weight) or, with `train_on_combination`, inpaints every hole of `eval_holes` and trains on
  the combined reconstruction. Evaluation always combines the inpaintings of `eval_holes`, whose holes
  tile the image. `reads` names the keys the kind uses; validation refuses the others when they are
  set away from their defaults, so no setting is silently ignored.
  """

  train_holes: Callable[[jax.Array, int, int, float, int], jax.Array] | None = None
  eval_holes: Callable[[int, float, int], jax.Array] | None = None
  train_on_combination: bool = False
  reads: frozenset[str] = frozenset()  # of 'mask.size', 'mask.cells', 'mask.fill', 'loss.hole_weight'
  check: Callable[[int, float, int], None] = lambda isize, size, cells: None


KINDS: dict[str, MaskKind] = {
    'none': MaskKind(),
    # Masked SkipGANomaly, docs/methods.md#masked.
    'square': MaskKind(
        train_holes=lambda rng, batch, isize, size, cells: square_masks(rng, batch, isize, size),
        eval_holes=lambda isize, size, cells: tiling_masks(isize, size),
        reads=frozenset({'mask.size', 'mask.fill', 'loss.hole_weight'}),
        check=lambda isize, size, cells: _check_tiling(isize, size)),
    # The grid-mask proposal, docs/methods.md#grid_mask: no single hole, so no hole weight.
    'grid': MaskKind(
        eval_holes=lambda isize, size, cells: grid_masks(isize, cells), train_on_combination=True,
        reads=frozenset({'mask.cells', 'mask.fill'}),
        check=lambda isize, size, cells: _check_cells(isize, cells)),
    'stain': MaskKind(
        train_holes=lambda rng, batch, isize, size, cells: stain_masks(rng, batch, isize),
        eval_holes=lambda isize, size, cells: tiling_masks(isize, STAIN_EVAL_SIZE),
        reads=frozenset({'mask.fill', 'loss.hole_weight'}), check=_check_stain),
}
