"""Tests for ganomaly_jax.masks (tiny shapes: the whole file runs in a few seconds on 2 CPU cores)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ganomaly_jax import masks

# Jitted once per static shape and reused: eager dispatch compiles every op and is far slower on CPU.
_square = jax.jit(masks.square_masks, static_argnums=(1, 2, 3))
_stain = jax.jit(masks.stain_masks, static_argnums=(1, 2))


@pytest.mark.parametrize('isize,size,count', [(16, 0.5, 4), (16, 0.25, 16), (32, 0.125, 64),
                                              (28, 0.25, 16)])
def test_tiling_holes_cover_every_pixel_once(isize, size, count):
  m = np.asarray(masks.tiling_masks(isize, size))
  assert m.shape == (count, isize, isize, 1)
  assert set(np.unique(m)) == {0.0, 1.0}
  np.testing.assert_array_equal(m.sum(axis=0), 1.0)
  side = round(size * isize)
  np.testing.assert_array_equal(m.sum(axis=(1, 2, 3)), side * side)


@pytest.mark.parametrize('isize,cells', [(16, 2), (16, 4), (32, 8), (12, 3)])
def test_grid_masks_complementary_and_alternating(isize, cells):
  m = np.asarray(masks.grid_masks(isize, cells))
  assert m.shape == (2, isize, isize, 1)
  np.testing.assert_array_equal(m.sum(axis=0), 1.0)
  # Sample one pixel per cell: constant within a cell, neighbours in both directions differ.
  step = isize // cells
  cell_values = m[0, ::step, ::step, 0]
  np.testing.assert_array_equal(m[0, :, :, 0], np.kron(cell_values, np.ones((step, step))))
  assert np.all(cell_values[1:, :] != cell_values[:-1, :])
  assert np.all(cell_values[:, 1:] != cell_values[:, :-1])
  if cells % 2 == 0:
    assert m[0].sum() == m[1].sum() == isize * isize / 2


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
    expected[y0:y0 + side, x0:x0 + side] = 1
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
  m = masks.tiling_masks(8, 0.5) if mask_set == 'tiling' else masks.grid_masks(8, 4)
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


def test_eval_and_train_dispatch():
  np.testing.assert_array_equal(masks.eval_masks('square', 16, 0.5, 4), masks.tiling_masks(16, 0.5))
  np.testing.assert_array_equal(masks.eval_masks('grid', 16, 0.5, 4), masks.grid_masks(16, 4))
  assert masks.eval_masks('stain', 16, 0.5, 4).shape == (16, 16, 16, 1)
  rng = jax.random.PRNGKey(0)

  def shape(kind):  # eval_shape traces without compiling: fast
    out = jax.eval_shape(lambda r: masks.train_masks(kind, r, 5, 16, 0.5, 4), rng)
    return out.shape, out.dtype

  assert shape('square') == ((5, 16, 16, 1), jnp.float32)
  assert shape('stain') == ((5, 16, 16, 1), jnp.float32)
  assert shape('grid') == ((2, 16, 16, 1), jnp.float32)
  with pytest.raises(ValueError, match='mask.kind'):
    masks.eval_masks('circle', 16, 0.5, 4)
  with pytest.raises(ValueError, match='mask.kind'):
    masks.train_masks('none', rng, 5, 16, 0.5, 4)


@pytest.mark.parametrize('fn,args,key', [
    (masks.grid_masks, (16, 3), 'mask.cells'),
    (masks.grid_masks, (16, 1), 'mask.cells'),
    (masks.tiling_masks, (16, 0.3), 'mask.size'),
    (masks.tiling_masks, (16, 1.0), 'mask.size'),
    (masks.tiling_masks, (16, 0.0), 'mask.size'),
    (masks.tiling_masks, (16, 0.01), 'mask.size'),
])
def test_bad_mask_shapes_raise(fn, args, key):
  with pytest.raises(ValueError, match=key):
    fn(*args)


def test_size_at_least_one_says_larger_than_image():
  with pytest.raises(ValueError, match='larger than'):
    masks.tiling_masks(16, 1.5)


@pytest.mark.parametrize('kind,isize,size,cells,key', [
    ('circle', 16, 0.5, 4, 'mask.kind'),
    ('square', 16, 0.3, 4, 'mask.size'),
    ('square', 16, 1.0, 4, 'mask.size'),
    ('square', 16, -0.5, 4, 'mask.size'),
    ('grid', 16, 0.5, 5, 'mask.cells'),
    ('grid', 16, 0.5, 1, 'mask.cells'),
    ('stain', 30, 0.5, 4, 'mask.kind'),
])
def test_validate_mask_config_rejects(kind, isize, size, cells, key):
  with pytest.raises(ValueError, match=key) as info:
    masks.validate_mask_config(kind, isize, size, cells)
  assert '\n' not in str(info.value)


@pytest.mark.parametrize('kind,isize,size,cells', [
    ('none', 16, 7.0, 0),  # nothing to check when masking is off
    ('square', 256, 0.5, 4),
    ('grid', 32, 0.3, 4),  # grid ignores mask.size
    ('stain', 32, 2.0, 1),  # stain ignores mask.size and mask.cells
])
def test_validate_mask_config_accepts(kind, isize, size, cells):
  masks.validate_mask_config(kind, isize, size, cells)
