"""grain input pipelines: an infinite, checkpointable training iterator and ordered eval batches."""

from __future__ import annotations

from typing import Any, Iterator

import grain
import jax
import numpy as np


class Augment(grain.transforms.RandomMap):
  """A uint8 [H, W, C] record's random flip and zoom (train only; drawn per image)."""

  def __init__(self, flip: bool = False, zoom: float = 0.0):
    self.flip = flip
    self.zoom = zoom

  def random_map(self, record: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
    image = record['image']
    if self.zoom > 0:
      image = random_zoom(image, rng, self.zoom)
    if self.flip and rng.random() < 0.5:
      image = image[:, ::-1]
    return {'image': image, 'label': record['label']}


class BatchToFloat(grain.transforms.Map):
  """A batch's uint8 images -> float32 in [-1, 1] and its labels -> int32, in one array operation
  each (per image it cost more than a small model's training step:
  docs/performance.md#the-loops-own-time)."""

  def map(self, batch: dict[str, Any]) -> dict[str, Any]:
    return {'image': to_float(batch['image']), 'label': np.asarray(batch['label'], np.int32)}


def to_float(image: np.ndarray) -> np.ndarray:
  """uint8 -> float32 in [-1, 1] (the generators end in tanh)."""
  return image.astype(np.float32) * (2.0 / 255.0) - 1.0


def random_zoom(image: np.ndarray, rng: np.random.Generator, max_zoom: float) -> np.ndarray:
  """Crops a random square of side (1 - U[0, max_zoom]) x size and resizes it back (zoom-in)."""
  from ganomaly_jax.data.images import resize_image  # PIL resize; local import keeps the hot path lean

  size = image.shape[0]
  side = max(2, int(round(size * (1.0 - rng.uniform(0.0, max_zoom)))))
  if side >= size:
    return image
  top, left = rng.integers(0, size - side + 1, size=2)
  return resize_image(np.ascontiguousarray(image[top : top + side, left : left + side]), size)


def augment_seed(seed: int, process_index: int) -> int:
  """The seed of process `process_index`'s random flips and zooms: a pure function of both.

  grain seeds each element's generator with (seed, element index), and every process numbers its
  own slice from 0, so one seed for all processes would give every host's k-th image the same flip
  and zoom. Process 0 keeps `seed` itself, so single-host runs (and their checkpoints' resumes)
  augment exactly as before; other processes draw from a SeedSequence of (seed, index), which
  keeps them apart from each other and from process 0 of any other small seed.
  """
  if process_index == 0:
    return seed
  return int(np.random.SeedSequence((seed, process_index)).generate_state(1, np.uint64)[0])


def train_iterator(
    source,
    *,
    batch_size: int,
    seed: int,
    flip: bool = False,
    zoom: float = 0.0,
    workers: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
):
  """Infinite shuffled iterator of per-process batches {'image': [b, H, W, C], 'label': [b]}.

  Each process reads its own slice of the source and augments it with its own seed
  (`augment_seed`); the iterator's state (`get_state`/`set_state`, or grain's orbax handlers)
  resumes exactly, so a restarted run sees the same batches. `process_index`/`process_count`
  default to JAX's (tests pass them to build another process's pipeline).
  """
  index = jax.process_index() if process_index is None else process_index
  count = jax.process_count() if process_count is None else process_count
  ds = grain.MapDataset.source(source)[index::count].shuffle(seed=seed).repeat(None)
  if flip or zoom > 0:  # grain seeds each image's draw with (seed, its index in this order)
    ds = ds.random_map(Augment(flip, zoom), seed=augment_seed(seed, index))
  ds = ds.batch(batch_size, drop_remainder=True).map(BatchToFloat())
  it = ds.to_iter_dataset()
  if workers > 0:
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return iter(it)


def eval_batches(
    source, batch_size: int, limit: int = 0, process_index: int = 0, process_count: int = 1
) -> Iterator[dict[str, np.ndarray]]:
  """Ordered batches of the whole source, the last one padded; `valid` marks real examples.

  Padding keeps every batch the same shape so the eval step compiles once. With `process_count` > 1
  each global batch of `batch_size` is split into equal contiguous slices and this process decodes
  only slice `process_index` (the part of the global batch its devices hold), so no host reads the
  whole batch. `index` holds each row's position in the source (-1 for padding).
  """
  if batch_size % process_count:
    raise ValueError(f'batch size {batch_size} does not split over {process_count} processes')
  per = batch_size // process_count
  n = len(source) if not limit else min(limit, len(source))
  for start in range(0, n, batch_size):
    first = start + process_index * per
    idx = range(min(first, n), min(first + per, n))
    records = [source[i] for i in idx]
    if records:
      images = np.stack([to_float(r['image']) for r in records])
    else:  # this slice is all padding: its shape is the first record's
      images = np.zeros((0,) + np.shape(to_float(source[0]['image'])), np.float32)
    labels = np.asarray([r['label'] for r in records], np.int32).reshape(-1)
    valid = np.ones(len(records), bool)
    index = np.asarray(idx, np.int64).reshape(-1)
    pad = per - len(records)
    if pad:
      images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
      labels = np.concatenate([labels, np.zeros(pad, np.int32)])
      valid = np.concatenate([valid, np.zeros(pad, bool)])
      index = np.concatenate([index, np.full(pad, -1, np.int64)])
    yield {'image': images, 'label': labels, 'valid': valid, 'index': index}
