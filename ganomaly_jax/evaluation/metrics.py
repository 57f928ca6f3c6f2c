"""Metrics of a test pass: min-max normalisation over the whole set, image AUROC / AP and the
validation-quantile threshold, pixel AUROC / PRO from the pixel histogram, and FID between inputs and
reconstructions.

Honest by construction (docs/methods.md#evaluation): scores are normalised over the *whole* evaluated
set, not per batch, and the threshold comes from validation normals only.
"""

from __future__ import annotations

from typing import Any

from absl import logging
import numpy as np
from sklearn import metrics as sk_metrics

from ganomaly_jax.evaluation import fid as fid_lib
from ganomaly_jax.evaluation import pixel_metrics


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


def threshold_metrics(
    labels: np.ndarray, raw_scores: np.ndarray, threshold: float | None
) -> dict[str, float | None]:
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


def image_metrics(
    labels: np.ndarray, scores: np.ndarray, threshold: float | None = None
) -> dict[str, float | None]:
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
  results: dict[str, Any] = {
      'pixel_auroc': None,
      'pixel_pro': None,
      'num_pixel_gt_images': 0,
      'num_pixel_gt_defect_images': 0,
  }
  if hist is None or hist.num_images == 0:
    return results
  results.update(
      {
          'num_pixel_gt_images': hist.num_images,
          'num_pixel_gt_defect_images': hist.num_defect_images,
          'pixel_auroc': hist.auroc(),
          'pixel_pro': hist.pro(),
      }
  )
  if hist.clipped:
    logging.warning(
        '%d map value(s) outside [0, %g] were clipped into the end bins of the pixel ' 'metrics.',
        hist.clipped,
        hist.max_value,
    )
  if results['pixel_auroc'] is None:
    logging.warning(
        'Pixel metrics undefined: the %d test images with a known mask hold no defect '
        'pixel (or no normal pixel), or a map is not finite.',
        hist.num_images,
    )
  return results


def pixel_results(maps: np.ndarray, source, max_value: float | None = None) -> dict[str, Any]:
  """pixel_auroc / pixel_pro of given maps [N, H, W] over the test images with a known mask.

  The same histogram computation as the streaming pass of `passes.collect_test_outputs`, for maps
  at hand; the histogram spans [0, max_value], by default [0, the maps' largest finite value]
  (maps at hand need no a-priori bound, so none is clipped).
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
      raise ValueError(
          f'ground-truth masks {np.shape(gt)} and anomaly maps {np.shape(amap)} ' 'differ in size'
      )
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
  results.update(
      {
          f'{key}_samples': int(len(fid_sets.get(cls, empty)[0]))
          for cls, key in ((0, 'fid_normal'), (1, 'fid_abnormal'))
      }
  )
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
