"""Evaluation: run the eval step over a split, normalise scores over the whole set, image metrics.

Honest by construction (REFERENCE §7): BatchNorm in eval mode (the eval step never updates
statistics), min-max normalisation over the *whole* evaluated set (not per batch with running
extremes), and the test split is only evaluated with a checkpoint chosen on validation normals.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Callable

import jax
from jax.experimental import multihost_utils
import numpy as np
from sklearn import metrics as sk_metrics

from ganomaly_jax import parallel, plots, step as step_lib
from ganomaly_jax.data import pipeline


def run_eval(eval_fn: Callable, state: Any, source, mesh, batch_size: int,
             keys: tuple[str, ...] = ('score', 'l1'), limit: int = 0) -> dict[str, np.ndarray]:
  """Applies `eval_fn(state, batch)` to every example of `source` in order; returns host arrays.

  Every process feeds the same ordered batches; each contributes its slice of a global batch.
  """
  pieces: dict[str, list[np.ndarray]] = {k: [] for k in keys + ('label',)}
  n_proc, proc = jax.process_count(), jax.process_index()
  for batch in pipeline.eval_batches(source, batch_size, limit):
    valid = batch.pop('valid')
    local = {k: np.array_split(v, n_proc)[proc] for k, v in batch.items() if k == 'image'}
    out = eval_fn(state, parallel.to_global(local, mesh))
    out = {k: out[k] for k in keys}
    if n_proc > 1:
      out = multihost_utils.process_allgather(out, tiled=True)
    out = jax.device_get(out)
    for k in keys:
      pieces[k].append(np.asarray(out[k])[valid])
    pieces['label'].append(batch['label'][valid])
  return {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in pieces.items()}


def normalise(scores: np.ndarray) -> np.ndarray:
  """Min-max normalisation over the whole set (constant scores map to 0)."""
  scores = np.asarray(scores, np.float64)
  lo, hi = np.min(scores), np.max(scores)
  return (scores - lo) / (hi - lo) if hi > lo else np.zeros_like(scores)


def image_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
  """Image AUROC, average precision and the F1 at the best threshold (label 1 = abnormal)."""
  labels = np.asarray(labels).astype(int)
  scores = normalise(scores)
  if labels.min() == labels.max():
    raise ValueError('Test set has a single class; AUROC is undefined (check dataset.abnormal).')
  precision, recall, thresholds = sk_metrics.precision_recall_curve(labels, scores)
  f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
  best = int(np.argmax(f1[:-1])) if len(thresholds) else 0
  return {
      'image_auroc': float(sk_metrics.roc_auc_score(labels, scores)),
      'image_ap': float(sk_metrics.average_precision_score(labels, scores)),
      'image_f1': float(f1[best]),
      'threshold': float(thresholds[best]) if len(thresholds) else 0.0,
  }


def evaluate_and_report(config, workdir: str, state: Any, components, hp, splits, mesh, writer,
                        run_info: dict[str, Any],
                        curves: dict[str, list[tuple[int, float]]]) -> dict[str, Any]:
  """Final test evaluation of the selected state: metrics, TensorBoard scalars and PNG pictures.

  Returns the results dict (run_info + metrics) that the caller writes to results.json.
  """
  eval_fn = jax.jit(functools.partial(step_lib.eval_step, components=components, hp=hp))
  test = run_eval(eval_fn, state, splits.test, mesh, config.eval.batch_size)
  results = dict(run_info)
  results.update(image_metrics(test['label'], test['score']))
  results.update({'score': config.eval.score, 'num_test': int(len(test['label'])),
                  'num_test_abnormal': int(test['label'].sum())})
  writer.write_scalars(results['steps'], {f'test/{k}': v for k, v in results.items()
                                          if k.startswith('image_')})
  if jax.process_index() == 0:
    scores = normalise(test['score'])
    if curves:
      plots.plot_loss_curves(curves, os.path.join(workdir, 'loss_curves.png'))
    plots.plot_roc_pr(test['label'], scores, os.path.join(workdir, 'roc_pr.png'))
    plots.plot_score_histogram(test['label'], scores, os.path.join(workdir, 'score_histogram.png'))
  return results
