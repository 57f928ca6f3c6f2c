"""Evaluation: run the eval step over a split, normalise scores over the whole set, image and pixel
metrics, MC-dropout uncertainty, FID, and the pictures of the final report.

Honest by construction (docs/methods.md#evaluation): BatchNorm in eval mode (the eval step never updates
statistics), min-max normalisation over the *whole* evaluated set (not per batch with running
extremes), and the test split is only evaluated with a checkpoint chosen on validation normals.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Iterator

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
from sklearn import metrics as sk_metrics

from ganomaly_jax.evaluation import fid as fid_lib
from ganomaly_jax import losses
from ganomaly_jax.runtime import parallel, rundir, timing
from ganomaly_jax.evaluation import pixel_metrics, plots, uncertainty
from ganomaly_jax.data import pipeline

# The study computed FID on 50 reconstructions per split (docs/methods.md#extensions).
FID_SAMPLES = 50
# Images per group (most / least anomalous) in extremes.png.
EXTREMES_K = 8


def _global_batches(source, mesh, batch_size: int,
                    limit: int = 0) -> Iterator[tuple[dict[str, jax.Array], dict[str, np.ndarray]]]:
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


def _fetch(out: dict[str, jax.Array], keys: tuple[str, ...], local: dict[str, np.ndarray],
           host_keys: tuple[str, ...] = ('label',)) -> dict[str, np.ndarray]:
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


def run_eval(eval_fn: Callable, state: Any, source, mesh, batch_size: int,
             keys: tuple[str, ...] = ('score', 'l1'), limit: int = 0) -> dict[str, np.ndarray]:
  """Applies `eval_fn(state, batch)` to every example of `source` in order; returns host arrays.

  Each process decodes its own slice of every global batch; the outputs are gathered on every host.
  """
  pieces: dict[str, list[np.ndarray]] = {k: [] for k in keys + ('label',)}
  for out in gathered_batches(eval_fn, state, source, mesh, batch_size, keys, limit=limit):
    for k in keys + ('label',):
      pieces[k].append(out[k])
  return {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in pieces.items()}


def gathered_batches(eval_fn: Callable, state: Any, source, mesh, batch_size: int,
                     keys: tuple[str, ...], host_keys: tuple[str, ...] = ('label',),
                     limit: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """`eval_fn(state, batch)` over `source` in order, one global batch at a time: its `keys` and the
  records' `host_keys` ('label', 'index', ...), real examples only, the same on every host.

  For passes that reduce each batch as it comes (e.g. into histograms) instead of keeping it.
  """
  for inputs, local in _global_batches(source, mesh, batch_size, limit):
    yield _fetch(eval_fn(state, inputs), keys, local, host_keys)


def normalise(scores: np.ndarray) -> np.ndarray:
  """Min-max normalisation over the whole set (constant scores map to 0)."""
  scores = np.asarray(scores, np.float64)
  lo, hi = np.min(scores), np.max(scores)
  return (scores - lo) / (hi - lo) if hi > lo else np.zeros_like(scores)


def validation_threshold(val_scores: np.ndarray, quantile: float) -> float | None:
  """The deployable threshold: the `quantile` of the validation normals' RAW scores.

  Chosen without any test label, so it is what a deployed detector would use: about a fraction
  1 - quantile of normal images score above it (the false-alarm budget). None without validation
  scores (dataset.val_fraction=0) or without a finite one.
  """
  val_scores = np.asarray(val_scores, np.float64)
  val_scores = val_scores[np.isfinite(val_scores)]
  if not val_scores.size:
    return None
  return float(np.quantile(val_scores, quantile))


def threshold_metrics(labels: np.ndarray, raw_scores: np.ndarray,
                      threshold: float | None) -> dict[str, float | None]:
  """F1, precision, recall and false-positive rate of `raw_score > threshold` (1 = abnormal).

  `threshold` must be on the raw score scale (not min-max normalised: the test set's range is not
  known when the threshold is fixed). All None without a threshold.
  """
  keys = ('image_f1', 'image_precision', 'image_recall', 'image_fpr')
  if threshold is None:
    return dict.fromkeys(keys)
  labels = np.asarray(labels).astype(int)
  predicted = (np.asarray(raw_scores, np.float64) > threshold).astype(int)
  negatives = int((labels == 0).sum())
  false_positives = int(((predicted == 1) & (labels == 0)).sum())
  return {
      'image_f1': float(sk_metrics.f1_score(labels, predicted, zero_division=0)),
      'image_precision': float(sk_metrics.precision_score(labels, predicted, zero_division=0)),
      'image_recall': float(sk_metrics.recall_score(labels, predicted, zero_division=0)),
      'image_fpr': false_positives / negatives if negatives else 0.0,
  }


def image_metrics(labels: np.ndarray, scores: np.ndarray,
                  threshold: float | None = None) -> dict[str, float | None]:
  """Image metrics of raw test `scores` (label 1 = abnormal).

  - `image_auroc`, `image_ap`: threshold-free, on the scores min-max normalised over the whole set.
  - `image_f1_oracle`, `threshold_oracle`: the best F1 over every threshold, i.e. a threshold chosen
    WITH the test labels. An upper bound for comparison with papers that report it, never an
    operating point; `threshold_oracle` is on the raw score scale.
  - `threshold`, `image_f1`, `image_precision`, `image_recall`, `image_fpr`: at the raw `threshold`
    fixed without test labels (`validation_threshold`); None without one.
  """
  labels = np.asarray(labels).astype(int)
  raw = np.asarray(scores, np.float64)
  scores = normalise(raw)
  if labels.min() == labels.max():
    raise ValueError('Test set has a single class; AUROC is undefined (check dataset.abnormal).')
  # On raw scores: normalisation is monotone, so the best F1 is the same and the threshold raw.
  precision, recall, thresholds = sk_metrics.precision_recall_curve(labels, raw)
  f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
  best = int(np.argmax(f1[:-1])) if len(thresholds) else 0
  results = {
      'image_auroc': float(sk_metrics.roc_auc_score(labels, scores)),
      'image_ap': float(sk_metrics.average_precision_score(labels, scores)),
      'image_f1_oracle': float(f1[best]),
      'threshold_oracle': float(thresholds[best]) if len(thresholds) else 0.0,
      'threshold': threshold,
  }
  results.update(threshold_metrics(labels, raw, threshold))
  return results


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
  not grow with N*H*W. The pictures re-run the few images they show (`_pictures_of`).

  Attributes:
    score: [N] raw anomaly scores (not normalised).
    l1: [N] mean |x - x̂| per image.
    label: [N] 0 normal, 1 abnormal.
    pixel: the test images' pixel-metric histogram (smoothed maps vs. known masks), or None when the
      source has no ground truth.
    map_max: largest value of the smoothed maps (0 for an empty set).
    mc_score: [N] mean MC-dropout variance per image, or None without MC-dropout.
    fid_sets: label -> (inputs [n, H, W, C], reconstructions [n, H, W, C]) in [-1, 1], the first
      `FID_SAMPLES` test images of each class; empty unless FID was asked for.
  """
  score: np.ndarray
  l1: np.ndarray
  label: np.ndarray
  pixel: pixel_metrics.PixelHistogram | None = None
  map_max: float = 0.0
  mc_score: np.ndarray | None = None
  fid_sets: dict[int, tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=dict)


def _add_local_maps(hist: pixel_metrics.PixelHistogram, source, maps: np.ndarray,
                    index: np.ndarray) -> None:
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
      {k: np.asarray(v).sum(axis=0) for k, v in stacked.items()}, hist.max_value)


def collect_test_outputs(eval_maps_fn: Callable, state: Any, source, mesh, batch_size: int, *,
                         mc_fn: Callable | None = None, mc_rng: jax.Array | None = None,
                         fid_samples: int = 0, smooth_sigma: float = 0.0,
                         map_max_value: float = pixel_metrics.MAP_MAX_VALUE) -> TestOutputs:
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
  hist = (pixel_metrics.PixelHistogram(map_max_value) if hasattr(source, 'ground_truth')
          else None)
  map_max = 0.0
  fid_pieces: dict[int, tuple[list[np.ndarray], list[np.ndarray]]] = {0: ([], []), 1: ([], [])}
  for b, (inputs, local) in enumerate(_global_batches(source, mesh, batch_size)):
    raw = eval_maps_fn(state, inputs)
    # FID needs the inputs of the first few images of each class; gather them only while needed
    # (the condition depends on gathered labels only, so every process takes the same branch).
    need_fid = fid_samples and any(sum(len(x) for x in xs) < fid_samples
                                   for xs, _ in fid_pieces.values())
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
      mc = _fetch(mc_fn(state, inputs['image'], jax.random.fold_in(mc_rng, b)), ('mc_score',),
                  local, ())
      pieces['mc'].append(mc['mc_score'])
    if need_fid:
      for cls, (xs, rs) in fid_pieces.items():
        room = fid_samples - sum(len(x) for x in xs)
        take = np.flatnonzero(labels == cls)[:max(room, 0)]
        if len(take):
          xs.append(out['image'][take])
          rs.append(out['recon'][take])
  if jax.process_count() > 1:
    map_max = float(np.max(multihost_utils.process_allgather(np.float64(map_max))))
  cat = lambda v: np.concatenate(v) if v else np.zeros((0,))
  return TestOutputs(
      score=cat(pieces['score']), l1=cat(pieces['l1']), label=cat(pieces['label']).astype(np.int32),
      pixel=_merge_hosts(hist) if hist is not None else None, map_max=map_max,
      mc_score=cat(pieces['mc']) if mc_fn is not None else None,
      fid_sets={cls: (np.concatenate(xs), np.concatenate(rs))
                for cls, (xs, rs) in fid_pieces.items() if xs})


def ground_truth_masks(source, n: int) -> tuple[np.ndarray, np.ndarray | None]:
  """Ground-truth masks of the first n test images: (indices with a known mask, masks [k, H, W]).

  Sources without `ground_truth` (class-labelled arrays) have none: (empty, None). Normal images of
  a folder source count as known (all-zero masks); defect images without a mask are left out.
  """
  if not hasattr(source, 'ground_truth'):
    return np.zeros((0,), np.int64), None
  known, masks = [], []
  for i in range(n):
    gt = source.ground_truth(i)
    if gt is not None:
      known.append(i)
      masks.append(np.asarray(gt, np.float32))
  if not known:
    return np.zeros((0,), np.int64), None
  return np.asarray(known, np.int64), np.stack(masks)


def histogram_results(hist: pixel_metrics.PixelHistogram | None) -> dict[str, Any]:
  """pixel_auroc / pixel_pro from a filled histogram (None where undefined or without one)."""
  results: dict[str, Any] = {'pixel_auroc': None, 'pixel_pro': None,
                             'num_pixel_gt_images': 0, 'num_pixel_gt_defect_images': 0}
  if hist is None or hist.num_images == 0:
    return results
  results.update({'num_pixel_gt_images': hist.num_images,
                  'num_pixel_gt_defect_images': hist.num_defect_images,
                  'pixel_auroc': hist.auroc(), 'pixel_pro': hist.pro()})
  if hist.clipped:
    logging.warning('%d map value(s) outside [0, %g] were clipped into the end bins of the pixel '
                    'metrics.', hist.clipped, hist.max_value)
  if results['pixel_auroc'] is None:
    logging.warning('Pixel metrics undefined: the %d test images with a known mask hold no defect '
                    'pixel (or no normal pixel), or a map is not finite.', hist.num_images)
  return results


def pixel_results(maps: np.ndarray, source, max_value: float | None = None) -> dict[str, Any]:
  """pixel_auroc / pixel_pro of given maps [N, H, W] over the test images with a known mask.

  The same histogram computation as the streaming pass of `collect_test_outputs`, for maps at hand;
  the histogram spans [0, max_value], by default [0, the maps' largest finite value] (maps at hand
  need no a-priori bound, so none is clipped).
  """
  if not hasattr(source, 'ground_truth'):
    return histogram_results(None)
  if max_value is None:
    finite = np.asarray(maps, np.float64)
    finite = finite[np.isfinite(finite)]
    max_value = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
    max_value *= 1.0 + 1e-6  # the largest value falls inside the top bin, float32 rounding too
  hist = pixel_metrics.PixelHistogram(max_value)
  for i, amap in enumerate(maps):
    gt = source.ground_truth(i)
    if gt is None:
      continue
    if np.shape(gt) != np.shape(amap):
      raise ValueError(f'ground-truth masks {np.shape(gt)} and anomaly maps {np.shape(amap)} '
                       'differ in size')
    hist.add(amap, gt)
  return histogram_results(hist)


def fid_results(weights: str, fid_sets: dict[int, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
  """fid_normal / fid_abnormal between inputs and their reconstructions (None when not computed).

  Missing weights give None with fid.compute_fid's one warning line. A weights file that exists but is
  invalid (or features that are not finite) is logged and recorded under `fid_error` instead of
  failing the report of a finished run.
  """
  empty = (np.zeros((0,)), np.zeros((0,)))
  results: dict[str, Any] = {'fid_normal': None, 'fid_abnormal': None}
  results.update({f'{key}_samples': int(len(fid_sets.get(cls, empty)[0]))
                  for cls, key in ((0, 'fid_normal'), (1, 'fid_abnormal'))})
  for cls, key in ((0, 'fid_normal'), (1, 'fid_abnormal')):
    inputs, recons = fid_sets.get(cls, empty)
    if len(inputs) < 2:
      logging.warning('FID (%s) skipped: needs at least 2 test images, have %d.', key, len(inputs))
      continue
    try:
      value = fid_lib.compute_fid(weights, inputs, recons)
    except ValueError as e:  # FidWeightsError, or a covariance of non-finite features
      logging.error('FID skipped: %s', e)
      results['fid_error'] = str(e)
      break
    if value is None:  # no weights: compute_fid has said how to get them; do not repeat it
      break
    results[key] = float(value)
  return results


def _top_then_bottom(scores: np.ndarray, k: int) -> list[int]:
  """The k highest then the k lowest scores' indices (plots.extreme_indices: no index twice)."""
  top, bottom = plots.extreme_indices(scores, k)
  return top + bottom


def _pictures_of(eval_maps_fn: Callable, state: Any, source, mesh, batch_size: int,
                 indices: list[int], smooth_sigma: float, mc_fn: Callable | None = None,
                 mc_rng: jax.Array | None = None) -> dict[str, np.ndarray]:
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
      mc = _fetch(mc_fn(state, inputs['image'], jax.random.fold_in(mc_rng, b)), ('uncertainty',),
                  local, ())
      pieces['uncertainty'].append(mc['uncertainty'].astype(np.float32))
  return {k: np.concatenate(v) if v else None for k, v in pieces.items()}


def _write_pictures(workdir: str, outputs: TestOutputs, scores: np.ndarray,
                    curves: dict[str, list[tuple[int, float]]], extremes: dict[str, np.ndarray],
                    chosen: list[int], mc_extremes: dict[str, np.ndarray] | None,
                    chosen_mc: list[int]) -> None:
  """loss_curves.png, roc_pr.png, score_histogram.png, extremes.png (+ extremes_uncertainty.png).

  plot_extremes only ever shows the k highest and k lowest: `extremes` holds just those 2k images
  (`_pictures_of` for `chosen`) rather than the whole test set.
  """
  labels = outputs.label
  if curves:
    plots.plot_loss_curves(curves, rundir.path(workdir, 'loss_curves.png'))
  plots.plot_roc_pr(labels, scores, rundir.path(workdir, 'roc_pr.png'))
  plots.plot_score_histogram(labels, scores, rundir.path(workdir, 'score_histogram.png'))
  plots.plot_extremes(list(extremes['image']), extremes['map'], scores[chosen], labels[chosen],
                      rundir.path(workdir, 'extremes.png'), k=EXTREMES_K)
  if mc_extremes is not None:
    mc_scores = normalise(outputs.mc_score)
    plots.plot_extremes(list(mc_extremes['image']), mc_extremes['uncertainty'],
                        mc_scores[chosen_mc], labels[chosen_mc],
                        rundir.path(workdir, 'extremes_uncertainty.png'), k=EXTREMES_K)


def image_grid(pictures: dict[str, Any]) -> np.ndarray:
  """input | reconstruction | map (| MC uncertainty) rows of the TensorBoard grids: the loop's
  (`first_pictures`) and the final report's (`_pictures_of`)."""
  rows = []
  for j in range(len(pictures['image'])):
    row = [pictures['image'][j], pictures['recon'][j], pictures['map'][j]]
    if pictures.get('uncertainty') is not None:
      row.append(pictures['uncertainty'][j])
    rows.append(row)
  return plots.image_grid(rows)


def first_pictures(eval_maps_fn: Callable, state: Any, source, mesh, batch_size: int,
                   n: int) -> dict[str, Any]:
  """Inputs, reconstructions and anomaly maps of the first n images of a split (for `image_grid`;
  every process must call it)."""
  out = run_eval(eval_maps_fn, state, source, mesh, batch_size, keys=('recon', 'map'), limit=n)
  images = [pipeline.to_float(source[i]['image']) for i in range(len(out['label']))]
  return {'image': images, 'recon': out['recon'], 'map': out['map']}


@dataclasses.dataclass(frozen=True)
class Report:
  """Where a test pass reports: the run directory of its pictures, TensorBoard's writer, and the
  run whose loss curves loss_curves.png plots (`curves_of`, default: `workdir`; a re-scored run
  plots the curves of the run it re-scores)."""

  workdir: str
  writer: Any
  curves_of: str | None = None

  def curves(self) -> dict[str, list[tuple[int, float]]]:
    return rundir.read_curves(self.curves_of or self.workdir)


def evaluate_and_report(chosen: Any, components, state: Any, splits, mesh, report: Report,
                        run_info: dict[str, Any]) -> dict[str, Any]:
  """Final test evaluation of the selected state: metrics, TensorBoard scalars/images, PNG pictures.

  `chosen` is the read-out of the test pass (`readout.Chosen`): its `config` (the run's config with
  the chosen eval.score / eval.map), `step_config` and jitted `eval_maps`; `components` are the
  run's networks (`programs.Programs.components`).

  Image metrics use `config.eval.score` normalised over the whole test set (AUROC, AP, the oracle
  F1) and, for the deployable operating point (`threshold`, `image_f1`, `image_precision`,
  `image_recall`, `image_fpr`), the raw score against the `config.eval.threshold_quantile` quantile
  of the validation normals' raw scores (`splits.val`, never a test label); pixel metrics
  (`pixel_auroc`, `pixel_pro`) use |x - x̂| maps smoothed with `config.eval.smooth_sigma`, over the
  test images whose ground truth is known (None without any); MC-dropout (`eval.mc_samples`) adds
  `mc_auroc`; `eval.fid` adds `fid_normal`/`fid_abnormal` (None without weights). The raw test score
  range (`score_min`/`score_max`) and the largest map value (`pixel_map_max`) are recorded so that
  `ganomaly_jax.infer` can put new images on the same scale. `eval.pictures=False` leaves out the
  pictures (the metrics do not depend on them).

  Returns the results dict (run_info + metrics) that the caller writes to results.json.
  """
  config, eval_maps_fn = chosen.config, chosen.eval_maps
  e = config.eval
  mc_fn = None
  if e.mc_samples > 0:
    if config.model.dropout > 0:
      mc_fn = uncertainty.make_mc_fn(components, chosen.step_config, max(int(e.mc_samples), 2))
    else:
      logging.warning('eval.mc_samples=%d ignored: the model has no dropout (model.dropout=0).',
                      e.mc_samples)
  outputs = collect_test_outputs(
      eval_maps_fn, state, splits.test, mesh, e.batch_size, mc_fn=mc_fn,
      mc_rng=jax.random.fold_in(jax.random.key(config.seed), 0x6d63),
      fid_samples=FID_SAMPLES if e.fid else 0, smooth_sigma=e.smooth_sigma,
      map_max_value=losses.MAPS[e.map].max_value)
  # The operating point is fixed on validation normals (the selected state's raw scores), before
  # any test label is looked at. eval_maps_fn is already compiled: no second program.
  val = run_eval(eval_maps_fn, state, splits.val, mesh, e.batch_size, keys=('score',))
  threshold = validation_threshold(val['score'], e.threshold_quantile)
  if threshold is None:
    logging.warning('No validation normals (dataset.val_fraction=0): no threshold, so image_f1, '
                    'image_precision, image_recall and image_fpr are null.')

  results = dict(run_info)
  results.update(image_metrics(outputs.label, outputs.score, threshold))
  results.update({'threshold_quantile': float(e.threshold_quantile), 'num_val': int(len(val['score'])),
                  'score': e.score, 'num_test': int(len(outputs.label)),
                  'num_test_abnormal': int(outputs.label.sum()),
                  'score_min': float(np.min(outputs.score)),
                  'score_max': float(np.max(outputs.score)),
                  'smooth_sigma': float(e.smooth_sigma),
                  'pixel_map_max': float(outputs.map_max) if len(outputs.label) else None})
  results.update(histogram_results(outputs.pixel))
  if mc_fn is not None:
    mc = image_metrics(outputs.label, outputs.mc_score)
    results.update({'mc_samples': max(int(e.mc_samples), 2), 'mc_auroc': mc['image_auroc'],
                    'mc_ap': mc['image_ap']})
  if e.fid:
    results.update(fid_results(e.fid_weights, outputs.fid_sets))

  scalars = {f'test/{k}': v for k, v in results.items()
             if k.startswith(('image_', 'pixel_auroc', 'pixel_pro', 'mc_auroc', 'fid_', 'threshold'))
             and isinstance(v, float)}
  report.writer.write_scalars(results['steps'], scalars)
  if e.get('pictures', True):  # configs saved before the switch existed drew them
    with timing.phase('pictures'):
      _report_pictures(config, report, state, splits, mesh, results['steps'], outputs,
                       eval_maps_fn, mc_fn)
  return results


def _report_pictures(config, report: Report, state: Any, splits, mesh, step: int,
                     outputs: TestOutputs, eval_maps_fn: Callable, mc_fn: Callable | None) -> None:
  """The final TensorBoard image grid and the PNG pictures (`_write_pictures`)."""
  e = config.eval
  scores = normalise(outputs.score)
  pictures = functools.partial(_pictures_of, eval_maps_fn, state, splits.test, mesh, e.batch_size,
                               smooth_sigma=e.smooth_sigma)
  pic_rng = jax.random.fold_in(jax.random.key(config.seed), 0x706963)
  grid_rows = pictures(_top_then_bottom(scores, max(e.num_images // 2, 1)), mc_fn=mc_fn, mc_rng=pic_rng)
  report.writer.write_images(step, {'test/final_input_recon_map': image_grid(grid_rows)[None]})
  chosen = _top_then_bottom(scores, EXTREMES_K)
  extremes = pictures(chosen)
  chosen_mc, mc_extremes = [], None
  if mc_fn is not None:
    chosen_mc = _top_then_bottom(normalise(outputs.mc_score), EXTREMES_K)
    mc_extremes = pictures(chosen_mc, mc_fn=mc_fn, mc_rng=pic_rng)
  if jax.process_index() == 0:
    _write_pictures(report.workdir, outputs, scores, report.curves(), extremes, chosen, mc_extremes,
                    chosen_mc)
