"""Evaluation: run the eval step over a split, normalise scores over the whole set, image and pixel
metrics, MC-dropout uncertainty, FID, and the pictures of the final report.

Honest by construction (docs/methods.md#evaluation): BatchNorm in eval mode (the eval step never updates
statistics), min-max normalisation over the *whole* evaluated set (not per batch with running
extremes), and the test split is only evaluated with a checkpoint chosen on validation normals.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterator

from absl import logging
import jax
from jax.experimental import multihost_utils
import numpy as np
from sklearn import metrics as sk_metrics

from ganomaly_jax import fid as fid_lib
from ganomaly_jax import parallel, pixel_metrics, plots, programs, rundir, uncertainty
from ganomaly_jax.data import pipeline

# The study computed FID on 50 reconstructions per split (docs/methods.md#extensions).
FID_SAMPLES = 50
# Images per group (most / least anomalous) in extremes.png.
EXTREMES_K = 8


def _global_batches(source, mesh, batch_size: int,
                    limit: int = 0) -> Iterator[tuple[dict[str, jax.Array], dict[str, np.ndarray]]]:
  """Ordered, padded batches of `source`: (global device batch {'image'}, full host batch).

  Every process reads the same ordered batches and contributes its slice of each global batch; the
  host batch ('image', 'label', 'valid') is the whole batch, identical on every process.
  """
  n_proc, proc = jax.process_count(), jax.process_index()
  for batch in pipeline.eval_batches(source, batch_size, limit):
    local = {'image': np.array_split(batch['image'], n_proc)[proc]}
    yield parallel.to_global(local, mesh), batch


def _fetch(out: dict[str, jax.Array], keys: tuple[str, ...],
           valid: np.ndarray) -> dict[str, np.ndarray]:
  """Brings the chosen outputs of one global batch to every host, real examples only."""
  out = {k: out[k] for k in keys}
  if jax.process_count() > 1:
    out = multihost_utils.process_allgather(out, tiled=True)
  out = jax.device_get(out)
  return {k: np.asarray(out[k])[valid] for k in keys}


def run_eval(eval_fn: Callable, state: Any, source, mesh, batch_size: int,
             keys: tuple[str, ...] = ('score', 'l1'), limit: int = 0) -> dict[str, np.ndarray]:
  """Applies `eval_fn(state, batch)` to every example of `source` in order; returns host arrays.

  Every process feeds the same ordered batches; each contributes its slice of a global batch.
  """
  pieces: dict[str, list[np.ndarray]] = {k: [] for k in keys + ('label',)}
  for inputs, batch in _global_batches(source, mesh, batch_size, limit):
    valid = batch['valid']
    out = _fetch(eval_fn(state, inputs), keys, valid)
    for k in keys:
      pieces[k].append(out[k])
    pieces['label'].append(batch['label'][valid])
  return {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in pieces.items()}


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

  Attributes:
    score: [N] raw anomaly scores (not normalised).
    l1: [N] mean |x - x̂| per image.
    label: [N] 0 normal, 1 abnormal.
    maps: [N, H, W] per-pixel anomaly maps (mean over channels of |x - x̂|), not yet smoothed.
    mc_score: [N] mean MC-dropout variance per image, or None without MC-dropout.
    uncertainty: [N, H, W] MC-dropout variance maps, or None.
    fid_sets: label -> (inputs [n, H, W, C], reconstructions [n, H, W, C]) in [-1, 1], the first
      `FID_SAMPLES` test images of each class; empty unless FID was asked for.
  """
  score: np.ndarray
  l1: np.ndarray
  label: np.ndarray
  maps: np.ndarray
  mc_score: np.ndarray | None = None
  uncertainty: np.ndarray | None = None
  fid_sets: dict[int, tuple[np.ndarray, np.ndarray]] = dataclasses.field(default_factory=dict)


def collect_test_outputs(eval_maps_fn: Callable, state: Any, source, mesh, batch_size: int, *,
                         mc_fn: Callable | None = None, mc_rng: jax.Array | None = None,
                         fid_samples: int = 0) -> TestOutputs:
  """One ordered pass over `source`: scores, maps, optional MC-dropout and FID samples.

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

  Returns:
    TestOutputs. Only the kept FID samples hold reconstructions, so host memory stays at the maps
    ([N, H, W] float32) plus one batch.
  """
  keys = ('score', 'l1', 'map', 'recon') if fid_samples else ('score', 'l1', 'map')
  pieces: dict[str, list[np.ndarray]] = {
      k: [] for k in ('score', 'l1', 'map', 'label', 'mc', 'unc')}
  fid_pieces: dict[int, tuple[list[np.ndarray], list[np.ndarray]]] = {0: ([], []), 1: ([], [])}
  for b, (inputs, batch) in enumerate(_global_batches(source, mesh, batch_size)):
    valid = batch['valid']
    out = _fetch(eval_maps_fn(state, inputs), keys, valid)
    labels = batch['label'][valid]
    pieces['score'].append(out['score'])
    pieces['l1'].append(out['l1'])
    pieces['map'].append(out['map'].astype(np.float32))
    pieces['label'].append(labels)
    if mc_fn is not None:
      mc = _fetch(mc_fn(state, inputs['image'], jax.random.fold_in(mc_rng, b)),
                  ('mc_score', 'uncertainty'), valid)
      pieces['mc'].append(mc['mc_score'])
      pieces['unc'].append(mc['uncertainty'].astype(np.float32))
    if fid_samples:
      images = batch['image'][valid]
      for cls, (xs, rs) in fid_pieces.items():
        room = fid_samples - sum(len(x) for x in xs)
        take = np.flatnonzero(labels == cls)[:max(room, 0)]
        if len(take):
          xs.append(images[take])
          rs.append(out['recon'][take])
  cat = lambda v: np.concatenate(v) if v else np.zeros((0,))
  return TestOutputs(
      score=cat(pieces['score']), l1=cat(pieces['l1']), label=cat(pieces['label']).astype(np.int32),
      maps=cat(pieces['map']),
      mc_score=cat(pieces['mc']) if mc_fn is not None else None,
      uncertainty=cat(pieces['unc']) if mc_fn is not None else None,
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


def pixel_results(maps: np.ndarray, source) -> dict[str, Any]:
  """pixel_auroc / pixel_pro over the test images with a known mask (None where undefined)."""
  known, masks = ground_truth_masks(source, len(maps))
  results: dict[str, Any] = {'pixel_auroc': None, 'pixel_pro': None,
                             'num_pixel_gt_images': int(len(known)),
                             'num_pixel_gt_defect_images': 0}
  if masks is None:
    return results
  results['num_pixel_gt_defect_images'] = int((masks.reshape(len(masks), -1).max(axis=1) > 0).sum())
  if masks.shape[1:] != maps.shape[1:]:
    raise ValueError(f'ground-truth masks {masks.shape[1:]} and anomaly maps {maps.shape[1:]} '
                     'differ in size')
  results['pixel_auroc'] = pixel_metrics.pixel_auroc(maps[known], masks)
  results['pixel_pro'] = pixel_metrics.pixel_pro(maps[known], masks)
  if results['pixel_auroc'] is None:
    logging.warning('Pixel metrics undefined: the %d test images with a known mask hold no defect '
                    'pixel (or no normal pixel).', len(known))
  return results


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


def _extremes(scores: np.ndarray, k: int) -> list[int]:
  """Indices of the k highest then the k lowest scores (no index twice); NaN never ranks as high."""
  key = np.where(np.isfinite(scores), scores, -np.inf)
  order = [int(i) for i in np.argsort(-key, kind='stable')]
  top = order[:k]
  bottom = order[len(top):][::-1][:k]
  return top + bottom


def _write_pictures(workdir: str, source, outputs: TestOutputs, maps: np.ndarray,
                    scores: np.ndarray, curves: dict[str, list[tuple[int, float]]]) -> None:
  """loss_curves.png, roc_pr.png, score_histogram.png, extremes.png (+ extremes_uncertainty.png)."""
  labels = outputs.label
  if curves:
    plots.plot_loss_curves(curves, rundir.path(workdir, 'loss_curves.png'))
  plots.plot_roc_pr(labels, scores, rundir.path(workdir, 'roc_pr.png'))
  plots.plot_score_histogram(labels, scores, rundir.path(workdir, 'score_histogram.png'))
  # plot_extremes only ever shows the k highest and k lowest: load just those 2k images from the
  # source rather than holding the whole test set in memory.
  chosen = _extremes(scores, EXTREMES_K)
  images = [source[i]['image'] for i in chosen]
  plots.plot_extremes(images, maps[chosen], scores[chosen], labels[chosen],
                      rundir.path(workdir, 'extremes.png'), k=EXTREMES_K)
  if outputs.mc_score is not None:
    mc_scores = normalise(outputs.mc_score)
    chosen_mc = _extremes(mc_scores, EXTREMES_K)
    plots.plot_extremes([source[i]['image'] for i in chosen_mc], outputs.uncertainty[chosen_mc],
                        mc_scores[chosen_mc], labels[chosen_mc],
                        rundir.path(workdir, 'extremes_uncertainty.png'), k=EXTREMES_K)


def final_image_grid(eval_maps_fn: Callable, state: Any, source, mesh, batch_size: int,
                     outputs: TestOutputs, maps: np.ndarray, scores: np.ndarray,
                     num_images: int) -> np.ndarray:
  """input | reconstruction | map (| MC uncertainty) for the most and least anomalous test images.

  Reconstructions are not kept for the whole set, so the chosen images are run once more (one padded
  batch of the usual size: no recompilation). Every process must call this (it runs a global batch).
  """
  chosen = _extremes(scores, max(num_images // 2, 1))
  rows = []
  for inputs, batch in _global_batches(Subset(source, chosen), mesh, batch_size):
    out = _fetch(eval_maps_fn(state, inputs), ('recon',), batch['valid'])
    for j, image in enumerate(batch['image'][batch['valid']]):
      i = chosen[len(rows)]
      row = [image, out['recon'][j], maps[i]]
      if outputs.uncertainty is not None:
        row.append(outputs.uncertainty[i])
      rows.append(row)
  return plots.image_grid(rows)


def evaluate_and_report(config, workdir: str, state: Any, components, hp, splits, mesh, writer,
                        run_info: dict[str, Any],
                        curves: dict[str, list[tuple[int, float]]],
                        eval_maps_fn: Callable | None = None) -> dict[str, Any]:
  """Final test evaluation of the selected state: metrics, TensorBoard scalars/images, PNG pictures.

  Image metrics use `config.eval.score` normalised over the whole test set (AUROC, AP, the oracle
  F1) and, for the deployable operating point (`threshold`, `image_f1`, `image_precision`,
  `image_recall`, `image_fpr`), the raw score against the `config.eval.threshold_quantile` quantile
  of the validation normals' raw scores (`splits.val`, never a test label); pixel metrics
  (`pixel_auroc`, `pixel_pro`) use |x - x̂| maps smoothed with `config.eval.smooth_sigma`, over the
  test images whose ground truth is known (None without any); MC-dropout (`eval.mc_samples`) adds
  `mc_auroc`; `eval.fid` adds `fid_normal`/`fid_abnormal` (None without weights). The raw test score
  range (`score_min`/`score_max`) and the largest map value (`pixel_map_max`) are recorded so that
  `ganomaly_jax.infer` can put new images on the same scale.

  `eval_maps_fn` is the caller's jitted `eval_step(..., with_maps=True)`, if it has one: reusing it
  saves compiling the same program twice.

  Returns the results dict (run_info + metrics) that the caller writes to results.json.
  """
  e = config.eval
  if eval_maps_fn is None:
    eval_maps_fn = programs.build(config, mesh, components).eval_maps
  mc_fn = None
  if e.mc_samples > 0:
    if config.model.dropout > 0:
      mc_fn = uncertainty.make_mc_fn(components, hp, max(int(e.mc_samples), 2))
    else:
      logging.warning('eval.mc_samples=%d ignored: the model has no dropout (model.dropout=0).',
                      e.mc_samples)
  outputs = collect_test_outputs(
      eval_maps_fn, state, splits.test, mesh, e.batch_size, mc_fn=mc_fn,
      mc_rng=jax.random.fold_in(jax.random.key(config.seed), 0x6d63),
      fid_samples=FID_SAMPLES if e.fid else 0)
  maps = pixel_metrics.smooth_maps(outputs.maps, e.smooth_sigma)
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
                  'pixel_map_max': float(np.max(maps)) if maps.size else None})
  results.update(pixel_results(maps, splits.test))
  if mc_fn is not None:
    mc = image_metrics(outputs.label, outputs.mc_score)
    results.update({'mc_samples': max(int(e.mc_samples), 2), 'mc_auroc': mc['image_auroc'],
                    'mc_ap': mc['image_ap']})
  if e.fid:
    results.update(fid_results(e.fid_weights, outputs.fid_sets))

  scalars = {f'test/{k}': v for k, v in results.items()
             if k.startswith(('image_', 'pixel_auroc', 'pixel_pro', 'mc_auroc', 'fid_', 'threshold'))
             and isinstance(v, float)}
  writer.write_scalars(results['steps'], scalars)
  scores = normalise(outputs.score)
  grid = final_image_grid(eval_maps_fn, state, splits.test, mesh, e.batch_size, outputs, maps,
                          scores, e.num_images)
  writer.write_images(results['steps'], {'test/final_input_recon_map': grid[None]})
  if jax.process_index() == 0:
    _write_pictures(workdir, splits.test, outputs, maps, scores, curves)
  return results
