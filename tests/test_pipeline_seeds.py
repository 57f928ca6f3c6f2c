"""Per-process augmentation: two processes of one run flip and zoom their k-th images differently,
and each process reproduces its own augmentation (so a resumed run sees the same batches).

The processes are faked by passing `process_index`/`process_count` to the pipeline builder, as
process 0 and 1 of a 2-process run would get them from JAX. Every source image is the same
asymmetric picture, so two outputs can differ only by their flip and zoom.
"""

import numpy as np
import pytest

from ganomaly_jax.data import pipeline

SIZE, N, BATCH, STEPS = 16, 64, 8, 2


class SameImage:
  """N copies of one asymmetric uint8 image (a diagonal ramp), label 0."""

  def __init__(self, n: int = N):
    self.n = n
    ramp = np.add.outer(np.arange(SIZE), 3 * np.arange(SIZE)) * 4
    self.image = np.repeat(ramp.astype(np.uint8)[..., None], 3, axis=-1)

  def __len__(self) -> int:
    return self.n

  def __getitem__(self, i: int) -> dict:
    return {'image': self.image, 'label': 0}

  def __repr__(self) -> str:  # grain compares reprs when restoring an iterator's state
    return f'SameImage({self.n})'


def images(
    process_index: int, *, seed: int = 0, flip: bool = True, zoom: float = 0.25, steps: int = STEPS
) -> np.ndarray:
  """The first `steps` local batches of process `process_index` of 2, stacked [steps*b, H, W, C]."""
  it = pipeline.train_iterator(
      SameImage(),
      batch_size=BATCH,
      seed=seed,
      flip=flip,
      zoom=zoom,
      process_index=process_index,
      process_count=2,
  )
  return np.concatenate([next(it)['image'] for _ in range(steps)])


def test_two_processes_augment_their_kth_images_differently():
  first, second = images(0), images(1)
  # Without augmentation the k-th images agree, so any difference below is the flip/zoom.
  np.testing.assert_array_equal(images(0, flip=False, zoom=0.0), images(1, flip=False, zoom=0.0))
  same = [np.array_equal(a, b) for a, b in zip(first, second)]
  # Independent flips and zooms coincide for a k-th pair only by chance (a zoom is continuous).
  assert sum(same) <= 2, f'{sum(same)} of {len(same)} k-th images augmented identically'

  # Flips alone: each process flips about half of its images, and not the same half.
  flipped = []
  for p in (0, 1):
    out = images(p, zoom=0.0)
    plain = images(p, flip=False, zoom=0.0)
    flipped.append(np.asarray([not np.array_equal(o, q) for o, q in zip(out, plain)]))
    assert np.array_equal(out[flipped[-1]], plain[flipped[-1]][:, :, ::-1])
  assert 0 < flipped[0].sum() < len(flipped[0]) and 0 < flipped[1].sum() < len(flipped[1])
  assert not np.array_equal(flipped[0], flipped[1])


def test_each_process_reproduces_its_own_augmentation():
  for p in (0, 1):
    np.testing.assert_array_equal(images(p), images(p))
  # A resumed iterator continues with the same augmented batches.
  it = pipeline.train_iterator(
      SameImage(), batch_size=BATCH, seed=3, flip=True, zoom=0.25, process_index=1, process_count=2
  )
  next(it)
  state = it.get_state()
  expected = next(it)['image']
  resumed = pipeline.train_iterator(
      SameImage(), batch_size=BATCH, seed=3, flip=True, zoom=0.25, process_index=1, process_count=2
  )
  resumed.set_state(state)
  np.testing.assert_array_equal(next(resumed)['image'], expected)


def test_augment_seed_is_a_pure_function_of_seed_and_process():
  # Process 0 keeps the config seed: single-host runs augment exactly as before per-process seeds.
  assert [pipeline.augment_seed(s, 0) for s in range(4)] == [0, 1, 2, 3]
  seeds = {pipeline.augment_seed(s, p) for s in range(8) for p in range(8)}
  assert len(seeds) == 64  # no two (seed, process) pairs share an augmentation stream
  assert pipeline.augment_seed(5, 3) == pipeline.augment_seed(5, 3)


@pytest.mark.parametrize('seed', [0, 7])
def test_process_index_defaults_to_jax(seed, monkeypatch):
  import jax

  monkeypatch.setattr(jax, 'process_index', lambda: 1)
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  it = pipeline.train_iterator(SameImage(), batch_size=BATCH, seed=seed, flip=True, zoom=0.25)
  np.testing.assert_array_equal(next(it)['image'], images(1, seed=seed, steps=1))
