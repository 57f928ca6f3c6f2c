"""The streamed passes of evaluation over a split: ordered global batches gathered on every host,
the eval step over a whole split (`run_eval`), the single test pass of the final report
(`collect_test_outputs`) and the re-run of the few images it pictures.

Each process decodes only its own slice of every global batch; the outputs are gathered so that every
host holds the same arrays (docs/methods.md#evaluation).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator

import jax
from jax.experimental import multihost_utils
import numpy as np

from ganomaly_jax.runtime import parallel
from ganomaly_jax.evaluation import pixel_metrics
from ganomaly_jax.data import pipeline


def _global_batches(
    source, mesh, batch_size: int, limit: int = 0
) -> Iterator[tuple[dict[str, jax.Array], dict[str, np.ndarray]]]:
  """Ordered, padded batches of `source`: (global device batch {'image'}, this process's host part).

  Each process decodes only its own contiguous slice of every global batch (`pipeline.eval_batches`
  with its process index): the host part holds that slice's 'image', 'label', 'valid' and 'index'
  (position in `source`, -1 for padding). `_fetch` gathers what every host needs.
  """
  n_proc, proc = jax.process_count(), jax.process_index()
  for local in pipeline.eval_batches(source, batch_size, limit, proc, n_proc):
    yield parallel.to_global({'image': local['image']}, mesh), local


def _gather_hosts(tree: dict[str, Any]) -> dict[str, np.ndarray]:
  """Concatenates the processes' host arrays (and global device arrays) in process order."""
  if jax.process_count() > 1:
    tree = multihost_utils.process_allgather(tree, tiled=True)
  return {k: np.asarray(v) for k, v in jax.device_get(tree).items()}


def _fetch(
    out: dict[str, jax.Array],
    keys: tuple[str, ...],
    local: dict[str, np.ndarray],
    host_keys: tuple[str, ...] = ('label',),
) -> dict[str, np.ndarray]:
  """The chosen outputs of one global batch plus the processes' `host_keys`, real examples only.

  Every host gets the same arrays: `keys` of the device outputs and `host_keys` of the host parts
  (e.g. 'label', 'index', or 'image' where the inputs themselves are needed), one all-gather.
  """
  tree = {k: out[k] for k in keys}
  tree.update({f'host/{k}': local[k] for k in host_keys + ('valid',)})
  tree = _gather_hosts(tree)
  valid = tree.pop('host/valid')
  return {k.removeprefix('host/'): v[valid] for k, v in tree.items()}


def _local_rows(out: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded global array (its devices' shards, in batch order)."""
  shards = sorted(out.addressable_shards, key=lambda s: s.index[0].start or 0)
  return np.concatenate([np.asarray(s.data) for s in shards])


def run_eval(
    eval_fn: Callable,
    state: Any,
    source,
    mesh,
    batch_size: int,
    keys: tuple[str, ...] = ('score', 'l1'),
    limit: int = 0,
) -> dict[str, np.ndarray]:
  """Applies `eval_fn(state, batch)` to every example of `source` in order; returns host arrays.

  Each process decodes its own slice of every global batch; the outputs are gathered on every host.
  """
  pieces: dict[str, list[np.ndarray]] = {k: [] for k in keys + ('label',)}
  for out in gathered_batches(eval_fn, state, source, mesh, batch_size, keys, limit=limit):
    for k in keys + ('label',):
      pieces[k].append(out[k])
  return {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in pieces.items()}


def gathered_batches(
    eval_fn: Callable,
    state: Any,
    source,
    mesh,
    batch_size: int,
    keys: tuple[str, ...],
    host_keys: tuple[str, ...] = ('label',),
    limit: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
  """`eval_fn(state, batch)` over `source` in order, one global batch at a time: its `keys` and the
  records' `host_keys` ('label', 'index', ...), real examples only, the same on every host.

  For passes that reduce each batch as it comes (e.g. into histograms) instead of keeping it.
  """
  for inputs, local in _global_batches(source, mesh, batch_size, limit):
    yield _fetch(eval_fn(state, inputs), keys, local, host_keys)


class Subset:
  """The records `indices` of a source, in that order (a source itself, for `eval_batches`)."""

  def __init__(self, source, indices):
    self.source = source
    self.indices = [int(i) for i in indices]

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int) -> dict[str, Any]:
    return self.source[self.indices[index]]


@dataclasses.dataclass
class TestOutputs:
  """Everything the final report needs from one pass over the test split (host arrays).

  Per image only scalars are kept; maps go straight into the pixel-metric histogram, so memory does
  not grow with N*H*W. The pictures re-run the few images they show (`pictures_of`).

  Attributes:
    score: [N] raw anomaly scores (not normalised).
    l1: [N] mean |x - x̂| per image.
    label: [N] 0 normal, 1 abnormal.
    pixel: the test images' pixel-metric histogram (smoothed maps vs. known masks), or None when the
      source has no ground truth.
    map_max: largest value of the smoothed maps (0 for an empty set).
    mc_score: [N] mean MC-dropout variance per image, or None without MC-dropout.
    fid_sets: label -> (inputs [n, H, W, C], reconstructions [n, H, W, C]) in [-1, 1], the first
      `evaluator.FID_SAMPLES` test images of each class; empty unless FID was asked for.
  """

  score: np.ndarray
  l1: np.ndarray
  label: np.ndarray
  pixel: pixel_metrics.PixelHistogram | None = None
  map_max: float = 0.0
  mc_score: np.ndarray | None = None
  fid_sets: dict[int, tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=dict)


def _add_local_maps(
    hist: pixel_metrics.PixelHistogram, source, maps: np.ndarray, index: np.ndarray
) -> None:
  """Adds this process's maps whose ground truth is known (padding has index -1)."""
  for amap, i in zip(maps, index):
    if i < 0:
      continue
    gt = source.ground_truth(int(i))
    if gt is not None:
      hist.add(amap, gt)


def _merge_hosts(hist: pixel_metrics.PixelHistogram) -> pixel_metrics.PixelHistogram:
  """Sums the processes' histograms (each saw only its own slice of every batch)."""
  if jax.process_count() == 1:
    return hist
  stacked = multihost_utils.process_allgather(hist.state(), tiled=False)
  return pixel_metrics.PixelHistogram.from_state(
      {k: np.asarray(v).sum(axis=0) for k, v in stacked.items()}, hist.max_value
  )


def collect_test_outputs(
    eval_maps_fn: Callable,
    state: Any,
    source,
    mesh,
    batch_size: int,
    *,
    mc_fn: Callable | None = None,
    mc_rng: jax.Array | None = None,
    fid_samples: int = 0,
    smooth_sigma: float = 0.0,
    map_max_value: float = pixel_metrics.MAP_MAX_VALUE,
) -> TestOutputs:
  """One ordered pass over `source`: scores, pixel-metric histogram, optional MC-dropout and FID.

  Args:
    eval_maps_fn: jitted `eval_step(..., with_maps=True)`, called as fn(state, batch).
    state: the selected train state.
    source: the test source.
    mesh: device mesh.
    batch_size: global eval batch size.
    mc_fn: optional `uncertainty.make_mc_fn(...)`, called as fn(state, images, rng).
    mc_rng: key for MC-dropout; batch b uses fold_in(mc_rng, b), so results do not depend on how
      many batches came before on other runs.
    fid_samples: keep inputs and reconstructions of the first this-many images of each class.
    smooth_sigma: Gaussian smoothing of the maps before the pixel metrics (as `eval.smooth_sigma`).
    map_max_value: the largest value the map can take (`losses.MAPS[eval.map].max_value`): the
      pixel histogram spans [0, map_max_value], so no map value is clipped.

  Returns:
    TestOutputs. Each process decodes only its slice of each batch and adds its own devices' maps to
    its histogram (summed over processes at the end); only scalars per image, one batch of maps and
    the kept FID samples are held, so host memory is O(N) scalars + O(batch) pixels.
  """
  keys = ('score', 'l1', 'recon') if fid_samples else ('score', 'l1')
  pieces: dict[str, list[np.ndarray]] = {k: [] for k in ('score', 'l1', 'label', 'mc')}
  hist = pixel_metrics.PixelHistogram(map_max_value) if hasattr(source, 'ground_truth') else None
  map_max = 0.0
  fid_pieces: dict[int, tuple[list[np.ndarray], list[np.ndarray]]] = {0: ([], []), 1: ([], [])}
  for b, (inputs, local) in enumerate(_global_batches(source, mesh, batch_size)):
    raw = eval_maps_fn(state, inputs)
    # FID needs the inputs of the first few images of each class; gather them only while needed
    # (the condition depends on gathered labels only, so every process takes the same branch).
    need_fid = fid_samples and any(
        sum(len(x) for x in xs) < fid_samples for xs, _ in fid_pieces.values()
    )
    out = _fetch(raw, keys, local, ('label', 'image') if need_fid else ('label',))
    maps = pixel_metrics.smooth_maps(_local_rows(raw['map'])[local['valid']], smooth_sigma)
    if maps.size:
      map_max = max(map_max, float(np.max(maps)))
    if hist is not None:
      _add_local_maps(hist, source, maps, local['index'][local['valid']])
    labels = out['label']
    pieces['score'].append(out['score'])
    pieces['l1'].append(out['l1'])
    pieces['label'].append(labels)
    if mc_fn is not None:
      mc = _fetch(
          mc_fn(state, inputs['image'], jax.random.fold_in(mc_rng, b)), ('mc_score',), local, ()
      )
      pieces['mc'].append(mc['mc_score'])
    if need_fid:
      for cls, (xs, rs) in fid_pieces.items():
        room = fid_samples - sum(len(x) for x in xs)
        take = np.flatnonzero(labels == cls)[: max(room, 0)]
        if len(take):
          xs.append(out['image'][take])
          rs.append(out['recon'][take])
  if jax.process_count() > 1:
    map_max = float(np.max(multihost_utils.process_allgather(np.float64(map_max))))
  cat = lambda v: np.concatenate(v) if v else np.zeros((0,))
  return TestOutputs(
      score=cat(pieces['score']),
      l1=cat(pieces['l1']),
      label=cat(pieces['label']).astype(np.int32),
      pixel=_merge_hosts(hist) if hist is not None else None,
      map_max=map_max,
      mc_score=cat(pieces['mc']) if mc_fn is not None else None,
      fid_sets={
          cls: (np.concatenate(xs), np.concatenate(rs))
          for cls, (xs, rs) in fid_pieces.items()
          if xs
      },
  )


def pictures_of(
    eval_maps_fn: Callable,
    state: Any,
    source,
    mesh,
    batch_size: int,
    indices: list[int],
    smooth_sigma: float,
    mc_fn: Callable | None = None,
    mc_rng: jax.Array | None = None,
) -> dict[str, np.ndarray]:
  """Inputs, reconstructions, smoothed maps (and MC uncertainty maps) of a few chosen test images.

  The test pass keeps no pixels, so the pictures run their images once more (padded batches of the
  usual size: no recompilation). Uncertainty maps are a fresh MC-dropout draw (key `mc_rng`), of the
  same distribution as the pass's. Every process must call this (it runs global batches).
  """
  pieces: dict[str, list[np.ndarray]] = {'image': [], 'recon': [], 'map': [], 'uncertainty': []}
  for b, (inputs, local) in enumerate(_global_batches(Subset(source, indices), mesh, batch_size)):
    out = _fetch(eval_maps_fn(state, inputs), ('recon', 'map'), local, ('image',))
    pieces['image'].append(out['image'])
    pieces['recon'].append(out['recon'])
    pieces['map'].append(pixel_metrics.smooth_maps(out['map'], smooth_sigma))
    if mc_fn is not None:
      mc = _fetch(
          mc_fn(state, inputs['image'], jax.random.fold_in(mc_rng, b)), ('uncertainty',), local, ()
      )
      pieces['uncertainty'].append(mc['uncertainty'].astype(np.float32))
  return {k: np.concatenate(v) if v else None for k, v in pieces.items()}


def first_pictures(
    eval_maps_fn: Callable, state: Any, source, mesh, batch_size: int, n: int
) -> dict[str, Any]:
  """Inputs, reconstructions and anomaly maps of the first n images of a split (for `image_grid`;
  every process must call it)."""
  out = run_eval(eval_maps_fn, state, source, mesh, batch_size, keys=('recon', 'map'), limit=n)
  images = [pipeline.to_float(source[i]['image']) for i in range(len(out['label']))]
  return {'image': images, 'recon': out['recon'], 'map': out['map']}
