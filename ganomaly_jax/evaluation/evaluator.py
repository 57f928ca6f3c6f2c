"""The final report of a run (`final_evaluation`): the test pass with a checkpoint chosen on
validation, its image and pixel metrics, MC-dropout uncertainty and FID (passes.py, metrics.py),
and the report's pictures.

Honest by construction (docs/methods.md#evaluation): BatchNorm in eval mode (the eval step never updates
statistics), min-max normalisation over the *whole* evaluated set (not per batch with running
extremes), and the test split is only evaluated with a checkpoint chosen on validation normals.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

from absl import logging
import jax
import ml_collections
import numpy as np

from ganomaly_jax import losses, programs
from ganomaly_jax.runtime import checkpoint, rundir, timing
from ganomaly_jax.evaluation import heatmaps, metrics, passes, plots, readout, uncertainty

# The study computed FID on 50 reconstructions per split (docs/methods.md#extensions).
FID_SAMPLES = 50
# Images per group (most / least anomalous) in extremes.png.
EXTREMES_K = 8


def _top_then_bottom(scores: np.ndarray, k: int) -> list[int]:
  """The k highest then the k lowest scores' indices (plots.extreme_indices: no index twice)."""
  top, bottom = plots.extreme_indices(scores, k)
  return top + bottom


def _write_pictures(
    workdir: str,
    outputs: passes.TestOutputs,
    scores: np.ndarray,
    curves: dict[str, list[tuple[int, float]]],
    extremes: dict[str, np.ndarray],
    chosen: list[int],
    mc_extremes: dict[str, np.ndarray] | None,
    chosen_mc: list[int],
) -> None:
  """loss_curves.png, roc_pr.png, score_histogram.png, extremes.png (+ extremes_uncertainty.png).

  plot_extremes only ever shows the k highest and k lowest: `extremes` holds just those 2k images
  (`passes.pictures_of` for `chosen`) rather than the whole test set.
  """
  labels = outputs.label
  if curves:
    plots.plot_loss_curves(curves, rundir.path(workdir, 'loss_curves.png'))
  plots.plot_roc_pr(labels, scores, rundir.path(workdir, 'roc_pr.png'))
  plots.plot_score_histogram(labels, scores, rundir.path(workdir, 'score_histogram.png'))
  plots.plot_extremes(
      list(extremes['image']),
      extremes['map'],
      scores[chosen],
      labels[chosen],
      rundir.path(workdir, 'extremes.png'),
      k=EXTREMES_K,
  )
  if mc_extremes is not None:
    mc_scores = metrics.normalise(outputs.mc_score)
    plots.plot_extremes(
        list(mc_extremes['image']),
        mc_extremes['uncertainty'],
        mc_scores[chosen_mc],
        labels[chosen_mc],
        rundir.path(workdir, 'extremes_uncertainty.png'),
        k=EXTREMES_K,
    )


def image_grid(pictures: dict[str, Any]) -> np.ndarray:
  """input | reconstruction | map (| MC uncertainty) rows of the TensorBoard grids: the loop's
  (`passes.first_pictures`) and the final report's (`passes.pictures_of`)."""
  rows = []
  for j in range(len(pictures['image'])):
    row = [pictures['image'][j], pictures['recon'][j], pictures['map'][j]]
    if pictures.get('uncertainty') is not None:
      row.append(pictures['uncertainty'][j])
    rows.append(row)
  return heatmaps.image_grid(rows)


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


def evaluate_and_report(
    chosen: Any, components, state: Any, splits, mesh, report: Report, run_info: dict[str, Any]
) -> dict[str, Any]:
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
      logging.warning(
          'eval.mc_samples=%d ignored: the model has no dropout (model.dropout=0).', e.mc_samples
      )
  outputs = passes.collect_test_outputs(
      eval_maps_fn,
      state,
      splits.test,
      mesh,
      e.batch_size,
      mc_fn=mc_fn,
      mc_rng=jax.random.fold_in(jax.random.key(config.seed), 0x6D63),
      fid_samples=FID_SAMPLES if e.fid else 0,
      smooth_sigma=e.smooth_sigma,
      map_max_value=losses.MAPS[e.map].max_value,
  )
  # The operating point is fixed on validation normals (the selected state's raw scores), before
  # any test label is looked at. eval_maps_fn is already compiled: no second program.
  val = passes.run_eval(eval_maps_fn, state, splits.val, mesh, e.batch_size, keys=('score',))
  threshold = metrics.validation_threshold(val['score'], e.threshold_quantile)
  if threshold is None:
    logging.warning(
        'No validation normals (dataset.val_fraction=0): no threshold, so image_f1, '
        'image_precision, image_recall and image_fpr are null.'
    )

  results = dict(run_info)
  results.update(metrics.image_metrics(outputs.label, outputs.score, threshold))
  results.update(
      {
          'threshold_quantile': float(e.threshold_quantile),
          'num_val': int(len(val['score'])),
          'score': e.score,
          'num_test': int(len(outputs.label)),
          'num_test_abnormal': int(outputs.label.sum()),
          'score_min': float(np.min(outputs.score)),
          'score_max': float(np.max(outputs.score)),
          'smooth_sigma': float(e.smooth_sigma),
          'pixel_map_max': float(outputs.map_max) if len(outputs.label) else None,
      }
  )
  results.update(metrics.histogram_results(outputs.pixel))
  if mc_fn is not None:
    mc = metrics.image_metrics(outputs.label, outputs.mc_score)
    results.update(
        {
            'mc_samples': max(int(e.mc_samples), 2),
            'mc_auroc': mc['image_auroc'],
            'mc_ap': mc['image_ap'],
        }
    )
  if e.fid:
    results.update(metrics.fid_results(e.fid_weights, outputs.fid_sets))

  scalars = {
      f'test/{k}': v
      for k, v in results.items()
      if k.startswith(('image_', 'pixel_auroc', 'pixel_pro', 'mc_auroc', 'fid_', 'threshold'))
      and isinstance(v, float)
  }
  report.writer.write_scalars(results['steps'], scalars)
  if e.pictures:
    with timing.phase('pictures'):
      _report_pictures(
          config, report, state, splits, mesh, results['steps'], outputs, eval_maps_fn, mc_fn
      )
  return results


def _report_pictures(
    config,
    report: Report,
    state: Any,
    splits,
    mesh,
    step: int,
    outputs: passes.TestOutputs,
    eval_maps_fn: Callable,
    mc_fn: Callable | None,
) -> None:
  """The final TensorBoard image grid and the PNG pictures (`_write_pictures`)."""
  e = config.eval
  scores = metrics.normalise(outputs.score)
  pictures = functools.partial(
      passes.pictures_of,
      eval_maps_fn,
      state,
      splits.test,
      mesh,
      e.batch_size,
      smooth_sigma=e.smooth_sigma,
  )
  pic_rng = jax.random.fold_in(jax.random.key(config.seed), 0x706963)
  grid_rows = pictures(
      _top_then_bottom(scores, max(e.num_images // 2, 1)), mc_fn=mc_fn, mc_rng=pic_rng
  )
  report.writer.write_images(step, {'test/final_input_recon_map': image_grid(grid_rows)[None]})
  chosen = _top_then_bottom(scores, EXTREMES_K)
  extremes = pictures(chosen)
  chosen_mc, mc_extremes = [], None
  if mc_fn is not None:
    chosen_mc = _top_then_bottom(metrics.normalise(outputs.mc_score), EXTREMES_K)
    mc_extremes = pictures(chosen_mc, mc_fn=mc_fn, mc_rng=pic_rng)
  if jax.process_index() == 0:
    _write_pictures(
        report.workdir, outputs, scores, report.curves(), extremes, chosen, mc_extremes, chosen_mc
    )


def final_evaluation(
    config: ml_collections.ConfigDict,
    workdir: str,
    state: Any,
    store: checkpoint.CheckpointStore,
    progs: programs.Programs,
    splits,
    mesh,
    writer,
    run_info: dict[str, Any],
) -> dict[str, Any]:
  """Evaluates the selected state (the best by val loss, or the last) on the test split.

  Writes TensorBoard scalars and images and the pictures; returns the results (for results.json).
  """
  selected_step = int(state.step)
  if config.eval.select == 'val_loss':
    with timing.phase('checkpoints'):
      best = store.restore_best(state, set_aside=jax.process_index() == 0)
    if best is not None:
      state, selected_step = best
  # The read-out (eval.score, eval.map): the config's, or with eval.readout=auto the one best on
  # validation normals + synthetic anomalies, chosen before the test split is read.
  chosen = readout.choose(config, state, progs, splits, mesh)
  run_info = {
      **run_info,
      'selected_step': selected_step,
      'd_reinits': int(jax.device_get(state.d_reinits)),
      'skipped_steps': int(jax.device_get(state.skipped_steps)),
      'readout': chosen.record,
  }
  with timing.phase('test'):
    results = evaluate_and_report(
        chosen, progs.components, state, splits, mesh, Report(workdir, writer), run_info
    )
    writer.flush()
  return results
