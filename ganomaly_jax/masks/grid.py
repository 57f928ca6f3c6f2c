"""The 'grid' mask kind: square cells split into disjoint sets whose holes tile the image, the
study's grid-mask proposal (docs/methods.md#grid_mask) and RIAD (docs/methods.md#riad), and RIAD's
cell sides and map filter at small image sizes.

A cell size is counted in cells per image side (`mask.cells`), so the same setting hides the same
fraction of the object at every resolution. Pure jax.numpy with static shapes, like the other kinds
(see `ganomaly_jax.masks`): the training partitions are drawn inside the jitted train step.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

# Grid cells are at least this many pixels wide: RIAD's smallest cell. A 1 px hole is refilled by
# interpolating its neighbours whatever the content, so it teaches and tests nothing.
MIN_CELL = 2


# How the cells of one size are split into `mask.sets` holes (`mask.partition`).
PARTITIONS = ('alternating', 'random')


# Whether training draws the cell size (and a random partition) per image or per batch (`mask.draw`).
DRAWS = ('image', 'batch')


def grid_cell_sizes(isize: int, cells) -> tuple[int, ...]:
  """The grid's cell sides in pixels: for every n of `mask.cells` (cells per image side), the side
  isize // n, at least MIN_CELL; sizes that coincide after the floor are kept once, in order.

  Counting cells per side scales the grid with the image: the same n hides the same fraction of the
  object at every resolution. The floor keeps a cell a hole: RIAD's n = 128, 64, 32, 16 give its
  2, 4, 8, 16 px at 256 px but (2,) at 32 px, where the finer sizes would be under a pixel.
  """
  sizes: list[int] = []
  for n in cells:
    side = max(isize // int(n), MIN_CELL)
    if side not in sizes:
      sizes.append(side)
  return tuple(sizes)


# RIAD's cell sides at 256 px (Zavrtanik et al. 2021): 2, 4, 8 and 16 px, i.e. up to isize / 16.
RIAD_SIDES = (2, 4, 8, 16)


# What RIAD keeps at small sizes: its cells must span the size of the defects they hide, and at
# 16-32 px a defect is a few pixels to a quarter of the image, so the sides keep at least 2-8 px.
RIAD_MIN_LARGEST = 8


def riad_cells(isize: int) -> tuple[int, ...]:
  """`mask.cells` (cells per image side) for RIAD's cell sides at `isize`.

  RIAD's sides are 2-16 px at 256 px: the largest is isize / 16. Scaling that down to 16-32 px
  leaves one 2 px size (today's `mask.cells=(128, 64, 32, 16)` at 32 px), which hides no defect
  larger than a stroke. The rule kept here: every RIAD side from 2 px up to the larger of
  isize / 16 and 8 px, never over half the image (a board of at least 2x2 cells): 2, 4, 8 px at 16
  and 32 px, 2-16 px at 256 px (RIAD's own). Its map filter follows the largest cell
  (`riad_filter`).
  """
  largest = min(max(isize // 16, RIAD_MIN_LARGEST), isize // 2)
  return tuple(isize // side for side in RIAD_SIDES if side <= largest)


def riad_filter(isize: int) -> int:
  """`eval.map_filter` for `riad_cells(isize)`: RIAD's 21 px filter over 16 px cells, i.e. the
  odd side nearest 21/16 of the largest cell: 11 px at 16-64 px, 21 px at 256 px (RIAD's own). The
  map is then smoothed over about the largest hidden region, as at 256 px; the scaled rule
  (`similarity.msgms_smoothing`) gives 1 (none) at 16 px and 3 at 32 px."""
  largest = isize // min(riad_cells(isize))
  return 2 * int(math.floor(21 * largest / 32)) + 1


def check_grid(isize: int, cells, sets, partition: str, draw: str) -> None:
  """Raises ValueError (one line naming the mask.* key) for a grid the image cannot hold."""
  if not isinstance(sets, int) or isinstance(sets, bool) or sets < 2:
    raise ValueError(f'mask.sets={sets!r} must be an integer >= 2 (disjoint cell sets per size).')
  if partition not in PARTITIONS:
    raise ValueError(f'mask.partition={partition!r}: use one of {", ".join(PARTITIONS)}.')
  if draw not in DRAWS:
    raise ValueError(f'mask.draw={draw!r}: use one of {", ".join(DRAWS)}.')
  if (
      not isinstance(cells, (tuple, list))
      or not cells
      or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in cells)
  ):
    raise ValueError(
        f'mask.cells={cells!r} must be a non-empty tuple of positive integers (grid '
        f'cells per image side).'
    )
  if len(set(cells)) != len(cells):
    raise ValueError(f'mask.cells={cells!r} repeats a size.')
  for c in grid_cell_sizes(isize, cells):
    if isize % c:
      raise ValueError(
          f'mask.cells={cells!r}: a cell side of {c} px does not divide ' f'isize={isize}.'
      )
    board = isize // c
    if board**2 < sets:
      raise ValueError(
          f'mask.cells={cells!r}: a cell side of {c} px leaves {board ** 2} cells at '
          f'isize={isize}, fewer than mask.sets={sets}.'
      )
    if partition == 'alternating' and 2 * (board - 1) < sets - 1:
      raise ValueError(
          f'mask.cells={cells!r}: an alternating {board}x{board} board cannot give '
          f'mask.sets={sets} non-empty sets.'
      )


def _cell_sets(partition: str, uniform: jax.Array | None, board: int, sets: int) -> jax.Array:
  """The set of every cell of a board x board grid: int32 [..., board, board].

  'alternating' (the study's grid): cell (i, j) is in set (i + j) mod sets -- for 2 sets the two
  complementary checkerboards, so every hidden cell has visible neighbours on all four sides.
  'random' (RIAD): a cell's rank in a random order (argsort of argsort of `uniform`, [..., board²])
  modulo `sets`, so every set gets floor or ceil of board² / sets cells -- RIAD shuffles the cells
  and splits them into n equal parts.
  """
  if partition == 'alternating':
    i = jnp.arange(board, dtype=jnp.int32)
    return (i[:, None] + i[None, :]) % sets
  rank = jnp.argsort(jnp.argsort(uniform, axis=-1), axis=-1)
  return (rank % sets).reshape(uniform.shape[:-1] + (board, board)).astype(jnp.int32)


def _set_of_pixel(cell_sets: jax.Array, isize: int, cell: int) -> jax.Array:
  """int [..., board, board] cell sets -> int [..., isize, isize] set of every pixel."""
  pixel_cell = jnp.arange(isize, dtype=jnp.int32) // cell
  return cell_sets[..., pixel_cell[:, None], pixel_cell[None, :]]


def _one_hot_sets(set_of_pixel: jax.Array, sets: int) -> jax.Array:
  """int [..., H, W] -> float32 [sets, ..., H, W, 1] masks, mask k holding the pixels of set k."""
  ks = jnp.arange(sets).reshape((sets,) + (1,) * set_of_pixel.ndim)
  return (set_of_pixel[None] == ks).astype(jnp.float32)[..., None]


# The fixed random partitions of evaluation come from this key, so every evaluation (and every run)
# of the same config sees the same masks.
GRID_EVAL_SEED = 0


def grid_eval_masks(isize: int, cells, sets: int, partition: str = 'alternating') -> jax.Array:
  """The deterministic evaluation partitions: for every cell size, `sets` disjoint masks.

  Returns:
    [S, sets, isize, isize, 1] float32 (S = number of cell sizes); for each size s the masks sum to
    1 everywhere. 'alternating' is the training grid itself; a 'random' partition of size c is drawn
    from fold_in(key(GRID_EVAL_SEED), c).
  """
  check_grid(isize, cells, sets, partition, 'image')
  out = []
  for cell in grid_cell_sizes(isize, cells):
    board = isize // cell
    u = None
    if partition == 'random':
      u = jax.random.uniform(
          jax.random.fold_in(jax.random.key(GRID_EVAL_SEED), cell), (board * board,)
      )
    out.append(
        _one_hot_sets(_set_of_pixel(_cell_sets(partition, u, board, sets), isize, cell), sets)
    )
  return jnp.stack(out)


def grid_train_masks(
    rng: jax.Array,
    batch: int,
    isize: int,
    cells,
    sets: int,
    partition: str = 'alternating',
    draw: str = 'image',
) -> jax.Array:
  """Training partitions: a cell size drawn from `cells` and, for 'random', a fresh partition.

  draw='image' draws both per image: every batch then mixes all sizes, as evaluation does, so
  BatchNorm's batch statistics do not swing between scales from one step to the next. draw='batch'
  draws one size and one partition for the whole batch, as RIAD's training does. Shapes stay
  static: the partitions of every size are drawn (cheap: one uniform per cell) and the drawn size
  selects among them.

  Returns:
    [sets, batch, isize, isize, 1] float32; for each image the `sets` masks sum to 1 everywhere.
  """
  check_grid(isize, cells, sets, partition, draw)
  sizes = grid_cell_sizes(isize, cells)
  draws = batch if draw == 'image' else 1
  size_rng, *part_rngs = jax.random.split(rng, len(sizes) + 1)
  which = jax.random.randint(size_rng, (draws,), 0, len(sizes))
  per_size = []
  for cell, part_rng in zip(sizes, part_rngs):
    board = isize // cell
    u = None
    if partition == 'random':
      # Flat draw, reshaped: XLA:CPU compiles multi-dimensional threefry slowly (see stain_masks).
      u = jax.random.uniform(part_rng, (draws * board * board,)).reshape(draws, board * board)
    pixels = _set_of_pixel(_cell_sets(partition, u, board, sets), isize, cell)
    per_size.append(jnp.broadcast_to(pixels, (draws, isize, isize)))
  chosen = jnp.take_along_axis(jnp.stack(per_size, axis=1), which[:, None, None, None], axis=1)
  return _one_hot_sets(jnp.broadcast_to(chosen[:, 0], (batch, isize, isize)), sets)
