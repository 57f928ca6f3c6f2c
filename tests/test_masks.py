"""Tests for ganomaly_jax.masks (tiny shapes: the whole file runs in a few seconds on 2 CPU cores)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ganomaly_jax import masks
from ganomaly_jax.masks import grid

# Jitted once per static shape and reused: eager dispatch compiles every op and is far slower on CPU.
_square = jax.jit(masks.square_masks, static_argnums=(1, 2, 3))
_stain = jax.jit(masks.stain_masks, static_argnums=(1, 2))


@pytest.mark.parametrize(
    'isize,size,count', [(16, 0.5, 4), (16, 0.25, 16), (32, 0.125, 64), (28, 0.25, 16)]
)
def test_tiling_holes_cover_every_pixel_once(isize, size, count):
  m = np.asarray(masks.tiling_masks(isize, size))
  assert m.shape == (count, isize, isize, 1)
  assert set(np.unique(m)) == {0.0, 1.0}
  np.testing.assert_array_equal(m.sum(axis=0), 1.0)
  side = round(size * isize)
  np.testing.assert_array_equal(m.sum(axis=(1, 2, 3)), side * side)


class _Mask:
  """Stands in for the config's mask section (attribute access, like the ConfigDict and StepConfig)."""

  def __init__(self, size=0.5, cells=(4,), sets=2, partition='alternating', draw='image', fill=0.0):
    self.size, self.cells, self.sets, self.fill = size, cells, sets, fill
    self.partition, self.draw = partition, draw


def _assert_partition(m: np.ndarray, cell: int, sets: int) -> None:
  """m: [sets, H, W, 1] -- binary, disjoint, covering, constant on cells, balanced sets."""
  isize = m.shape[1]
  assert m.shape == (sets, isize, isize, 1)
  assert set(np.unique(m)) <= {0.0, 1.0}
  np.testing.assert_array_equal(m.sum(axis=0), 1.0)  # disjoint and covering: every pixel once
  cell_values = m[:, ::cell, ::cell, 0]
  np.testing.assert_array_equal(m[..., 0], np.kron(cell_values, np.ones((1, cell, cell))))
  cells_per_set = cell_values.sum(axis=(1, 2))
  n = (isize // cell) ** 2
  assert set(cells_per_set) <= {n // sets, -(-n // sets)}  # balanced, as RIAD's equal split


@pytest.mark.parametrize(
    'isize,cells,expected',
    [
        # The study's grid: a 4x4 board at every size.
        (16, (4,), (4,)),
        (32, (4,), (8,)),
        (256, (4,), (64,)),
        # RIAD's 2, 4, 8, 16 px at 256 px, as cells per side; never below 2 px.
        (256, (128, 64, 32, 16), (2, 4, 8, 16)),
        (128, (128, 64, 32, 16), (2, 4, 8)),
        (64, (128, 64, 32, 16), (2, 4)),
        (32, (128, 64, 32, 16), (2,)),
        (16, (128, 64, 32, 16), (2,)),
        (32, (4, 8), (8, 4)),
    ],
)
def test_grid_cell_sizes(isize, cells, expected):
  assert grid.grid_cell_sizes(isize, cells) == expected


def test_alternating_grid_is_two_complementary_checkerboards():
  m = np.asarray(grid.grid_eval_masks(16, (4,), 2, 'alternating'))
  assert m.shape == (1, 2, 16, 16, 1)
  board = m[0, 0, ::4, ::4, 0]
  np.testing.assert_array_equal(board, (np.add.outer(np.arange(4), np.arange(4)) + 1) % 2)
  np.testing.assert_array_equal(m[0, 1], 1.0 - m[0, 0])
  _assert_partition(m[0], 4, 2)
  # Every hidden cell has its four edge neighbours visible.
  assert not np.any(board[:, 1:] == board[:, :-1]) and not np.any(board[1:] == board[:-1])
  # Training uses the same grid whatever the key (only the cell size is drawn).
  train = np.asarray(_grid_train(jax.random.PRNGKey(3), 5, 16, (4,), 2, 'alternating', 'image'))
  np.testing.assert_array_equal(train, np.broadcast_to(m[0][:, None], train.shape))


@pytest.mark.parametrize(
    'isize,cells,sets',
    [(16, (128, 64, 32, 16), 3), (32, (16, 8, 4), 3), (32, (4,), 2), (16, (16, 4, 2), 4)],
)
def test_random_eval_partitions_cover_every_pixel_once_and_are_fixed(isize, cells, sets):
  m = np.asarray(grid.grid_eval_masks(isize, cells, sets, 'random'))
  sizes = grid.grid_cell_sizes(isize, cells)
  assert m.shape == (len(sizes), sets, isize, isize, 1)
  for t, cell in enumerate(sizes):
    _assert_partition(m[t], cell, sets)
  # Deterministic: the same masks on every call (a fixed key), and a real random split, not a
  # checkerboard: some horizontally adjacent cells share a set.
  np.testing.assert_array_equal(m, np.asarray(grid.grid_eval_masks(isize, cells, sets, 'random')))
  finest = m[0, 0, :: sizes[0], :: sizes[0], 0]
  assert np.any(finest[:, 1:] == finest[:, :-1])


_grid_train = jax.jit(grid.grid_train_masks, static_argnums=(1, 2, 3, 4, 5, 6))


def _drawn_cell(image: np.ndarray, sizes) -> int:
  """The drawn size is the largest cell side on which this image's partition is constant."""
  return max(
      c
      for c in sizes
      if np.array_equal(image[..., 0], np.kron(image[:, ::c, ::c, 0], np.ones((1, c, c))))
  )


@pytest.mark.parametrize(
    'isize,cells,sets', [(16, (8, 4), 3), (32, (16, 8, 4), 3), (16, (8, 4), 2)]
)
def test_random_train_partitions_cover_every_pixel_once_at_every_size(isize, cells, sets):
  batch = 24
  m = np.asarray(_grid_train(jax.random.PRNGKey(0), batch, isize, cells, sets, 'random', 'image'))
  assert m.shape == (sets, batch, isize, isize, 1)
  sizes = grid.grid_cell_sizes(isize, cells)
  seen = set()
  for b in range(batch):
    cell = _drawn_cell(m[:, b], sizes)
    _assert_partition(m[:, b], cell, sets)
    seen.add(cell)
  assert seen == set(sizes)  # every size is drawn (24 images, <= 3 sizes)
  # Per image: the partitions of a batch differ.
  assert len({m[:, b].tobytes() for b in range(batch)}) > batch // 2


def test_batch_draw_gives_one_size_and_partition_per_batch():
  # RIAD's training: one cell size and one random partition for the whole batch, new each step.
  sizes = grid.grid_cell_sizes(16, (8, 4))
  drawn = set()
  for seed in range(8):
    m = np.asarray(_grid_train(jax.random.PRNGKey(seed), 6, 16, (8, 4), 3, 'random', 'batch'))
    np.testing.assert_array_equal(m, np.broadcast_to(m[:, :1], m.shape))
    _assert_partition(m[:, 0], _drawn_cell(m[:, 0], sizes), 3)
    drawn.add(_drawn_cell(m[:, 0], sizes))
  assert drawn == set(sizes)


def test_grid_train_masks_random_per_step():
  a = _grid_train(jax.random.PRNGKey(1), 8, 16, (8, 4), 3, 'random', 'image')
  b = _grid_train(jax.random.PRNGKey(2), 8, 16, (8, 4), 3, 'random', 'image')
  assert not np.array_equal(np.asarray(a), np.asarray(b))


def test_grid_shapes_are_static_under_jit():
  out = jax.eval_shape(
      lambda r: masks.KINDS['grid'].train_holes(r, 5, 32, _Mask(cells=(16, 8, 4), sets=3)),
      jax.random.PRNGKey(0),
  )
  assert (out.shape, out.dtype) == ((3, 5, 32, 32, 1), jnp.float32)
  out = jax.eval_shape(lambda: masks.KINDS['grid'].eval_holes(32, _Mask(cells=(16, 8, 4))))
  assert out.shape == (3, 2, 32, 32, 1)


def test_square_masks_side_contiguity_and_positions():
  isize, size, batch = 16, 0.3, 64
  side = round(size * isize)  # 5
  m = np.asarray(_square(jax.random.PRNGKey(0), batch, isize, size))
  assert m.shape == (batch, isize, isize, 1)
  corners = set()
  for mi in m[..., 0]:
    assert mi.sum() == side * side
    rows, cols = np.nonzero(mi)
    y0, x0 = rows.min(), cols.min()
    # Exactly the side x side square starting at its top-left corner, inside the image.
    expected = np.zeros_like(mi)
    expected[y0 : y0 + side, x0 : x0 + side] = 1
    np.testing.assert_array_equal(mi, expected)
    corners.add((y0, x0))
  assert len(corners) > batch // 2  # 144 possible corners: positions must vary across draws
  ys, xs = zip(*corners)
  assert min(ys) <= 2 and max(ys) >= isize - side - 2  # covers (nearly) the full valid range
  assert min(xs) <= 2 and max(xs) >= isize - side - 2


def test_square_masks_depend_on_rng():
  a = _square(jax.random.PRNGKey(1), 64, 16, 0.3)
  b = _square(jax.random.PRNGKey(2), 64, 16, 0.3)
  assert not np.array_equal(np.asarray(a), np.asarray(b))


# isize 8 (64 pixels) often rasterizes outside [1%, 12%], so it exercises the clipping safety net.
@pytest.mark.parametrize('isize,distinct', [(8, 100), (32, 200)])
def test_stain_masks_binary_and_area_in_range(isize, distinct):
  m = np.asarray(_stain(jax.random.PRNGKey(3), 200, isize))
  assert m.shape == (200, isize, isize, 1)
  assert set(np.unique(m)) <= {0.0, 1.0}
  fraction = m.mean(axis=(1, 2, 3))
  assert fraction.min() >= 0.01
  assert fraction.max() <= 0.12
  # Random and irregular, not one fixed blob: sizes spread and the masks differ.
  assert fraction.std() > 0.005
  assert len({mi.tobytes() for mi in m}) >= distinct


def test_apply_mask():
  x = jnp.full((1, 4, 4, 3), 0.7)
  m = jnp.zeros((1, 4, 4, 1)).at[:, :2].set(1.0)
  y = np.asarray(masks.apply_mask(x, m, -1.0))
  np.testing.assert_allclose(y[:, :2], -1.0)
  np.testing.assert_allclose(y[:, 2:], 0.7)


def _images(shape=(3, 8, 8, 2), seed=0):
  return jnp.asarray(np.random.default_rng(seed).uniform(-1.0, 1.0, shape), jnp.float32)


@pytest.mark.parametrize('mask_set', ['tiling', 'grid'])
def test_combine_inpaintings(mask_set):
  x = _images()
  target = _images(seed=1)
  m = (
      masks.tiling_masks(8, 0.5)
      if mask_set == 'tiling'
      else grid.grid_eval_masks(8, (4,), 3, 'random')[0]
  )
  num_masks = m.shape[0]
  calls = []

  def fixed(images):  # ignores its input: every hole gets the target's pixels
    calls.append(images.shape)
    return jnp.broadcast_to(target, (num_masks,) + x.shape).reshape(images.shape)

  np.testing.assert_allclose(masks.combine_inpaintings(fixed, x, m, 0.0), target, atol=1e-6)
  assert calls == [(num_masks * x.shape[0],) + x.shape[1:]]  # one call on one stacked batch

  calls.clear()

  def perfect(images):  # a perfect inpainter restores the originals of each stacked copy
    calls.append(images.shape)
    return jnp.broadcast_to(x, (num_masks,) + x.shape).reshape(images.shape)

  np.testing.assert_allclose(masks.combine_inpaintings(perfect, x, m, 0.0), x, atol=1e-6)
  assert len(calls) == 1


def test_combine_inpaintings_sees_masked_copies_in_mask_order():
  x = _images()
  m = masks.tiling_masks(8, 0.5)
  seen = []

  def spy(images):
    seen.append(images)
    return images

  # With an identity "inpainter" every hole keeps the fill, so the result is the fill everywhere.
  np.testing.assert_allclose(masks.combine_inpaintings(spy, x, m, -1.0), -1.0)
  stacked = np.asarray(seen[0]).reshape((4,) + x.shape)
  for k in range(4):
    np.testing.assert_allclose(stacked[k], masks.apply_mask(x, m[k], -1.0))


def test_combine_tilings_assembles_each_tiling_from_one_call():
  x = _images()
  tilings = grid.grid_eval_masks(8, (4, 2), 3, 'random')  # [2, 3, 8, 8, 1]
  calls = []

  def by_copy(images):  # copy j of the stack returns the constant j: shows which copy a pixel took
    calls.append(images.shape)
    n = images.shape[0] // x.shape[0]
    return jnp.broadcast_to(
        jnp.arange(n, dtype=jnp.float32)[:, None, None, None, None], (n,) + x.shape
    ).reshape(images.shape)

  out = np.asarray(masks.combine_tilings(by_copy, x, tilings, 0.0))
  assert calls == [(6 * x.shape[0],) + x.shape[1:]]
  assert out.shape == (2,) + x.shape
  t = np.asarray(tilings)[..., 0]
  for size in range(2):
    expected = sum((3 * size + k) * t[size, k] for k in range(3))  # the copy where it was hidden
    np.testing.assert_allclose(out[size], np.broadcast_to(expected[None, :, :, None], x.shape))


def test_each_kind_gives_its_training_and_evaluation_holes():
  np.testing.assert_array_equal(
      masks.KINDS['square'].eval_holes(16, _Mask()), masks.tiling_masks(16, 0.5)[None]
  )
  np.testing.assert_array_equal(
      masks.KINDS['grid'].eval_holes(16, _Mask()), grid.grid_eval_masks(16, (4,), 2, 'alternating')
  )
  assert masks.KINDS['stain'].eval_holes(16, _Mask()).shape == (1, 16, 16, 16, 1)
  rng = jax.random.PRNGKey(0)

  def shape(kind):  # eval_shape traces without compiling: fast
    out = jax.eval_shape(lambda r: masks.KINDS[kind].train_holes(r, 5, 16, _Mask()), rng)
    return out.shape, out.dtype

  assert shape('square') == ((5, 16, 16, 1), jnp.float32)
  assert shape('stain') == ((5, 16, 16, 1), jnp.float32)
  assert shape('grid') == ((2, 5, 16, 16, 1), jnp.float32)
  assert masks.KINDS['none'].train_holes is None and masks.KINDS['none'].eval_holes is None


@pytest.mark.parametrize(
    'fn,args,key',
    [
        (grid.grid_eval_masks, (16, (5,), 3), 'mask.cells'),  # 3 px cells do not divide 16
        (grid.grid_eval_masks, (16, (2,), 5), 'mask.cells'),  # 4 cells, 5 sets
        (grid.grid_eval_masks, (16, (2,), 4, 'alternating'), 'mask.cells'),  # 2x2 board: 3 sets
        (grid.grid_eval_masks, (16, (4, 4), 3), 'mask.cells'),
        (grid.grid_eval_masks, (16, (), 3), 'mask.cells'),
        (grid.grid_eval_masks, (16, (0,), 3), 'mask.cells'),
        (grid.grid_eval_masks, (16, (2,), 1), 'mask.sets'),
        (grid.grid_eval_masks, (16, (2,), 2, 'checkers'), 'mask.partition'),
        (
            grid.grid_train_masks,
            (jax.random.PRNGKey(0), 2, 16, (2,), 2, 'random', 'step'),
            'mask.draw',
        ),
        (masks.tiling_masks, (16, 0.3), 'mask.size'),
        (masks.tiling_masks, (16, 1.0), 'mask.size'),
        (masks.tiling_masks, (16, 0.0), 'mask.size'),
        (masks.tiling_masks, (16, 0.01), 'mask.size'),
    ],
)
def test_bad_mask_shapes_raise(fn, args, key):
  with pytest.raises(ValueError, match=key):
    fn(*args)


def test_size_at_least_one_says_larger_than_image():
  with pytest.raises(ValueError, match='larger than'):
    masks.tiling_masks(16, 1.5)


@pytest.mark.parametrize(
    'kind,isize,mask,key',
    [
        ('circle', 16, _Mask(), 'mask.kind'),
        ('square', 16, _Mask(size=0.3), 'mask.size'),
        ('square', 16, _Mask(size=1.0), 'mask.size'),
        ('square', 16, _Mask(size=-0.5), 'mask.size'),
        ('grid', 16, _Mask(cells=(5,)), 'mask.cells'),
        ('grid', 16, _Mask(cells=(1,)), 'mask.cells'),  # one cell, fewer than 2 sets
        ('grid', 16, _Mask(sets=1), 'mask.sets'),
        ('stain', 30, _Mask(), 'mask.kind'),
    ],
)
def test_validate_mask_config_rejects(kind, isize, mask, key):
  with pytest.raises(ValueError, match=key) as info:
    masks.validate_mask_config(kind, isize, mask)
  assert '\n' not in str(info.value)


@pytest.mark.parametrize(
    'kind,isize,mask',
    [
        (
            'none',
            16,
            _Mask(size=7.0, sets=0, partition='x'),
        ),  # nothing to check when masking is off
        ('square', 256, _Mask()),
        ('grid', 32, _Mask(size=0.3)),  # grid ignores mask.size
        ('grid', 256, _Mask(cells=(128, 64, 32, 16), sets=3, partition='random', draw='batch')),
        ('stain', 32, _Mask(size=2.0, sets=0)),  # stain ignores mask.size and the grid keys
    ],
)
def test_validate_mask_config_accepts(kind, isize, mask):
  masks.validate_mask_config(kind, isize, mask)
