"""The read-out of a trained model, chosen without test labels (`eval.readout`).

A read-out is a pair (eval.score, eval.map): the per-image anomaly score and the pixel map (the
map_* scores reduce that map, smoothed with eval.smooth_sigma; every other score ignores it, and
the map then only serves the pixel metrics). With `eval.readout=published` (the default) the test
split is read out with the config's own pair, the method's published one. With `auto`, after the
checkpoint is selected:

1. Candidates: every registered score (`scores.SCORES`) that fits the model, as validation decides
   it (`checks.score_problem`: generator outputs, masked or not), times every registered map
   (`losses.MAPS`). Nothing is listed by hand: a new score or map is a candidate at once.
2. A synthetic validation set: the validation normals (label 0) and CutPaste anomalies made from
   them alone (`data/synthetic_anomalies.py`, seeded by `config.seed`; label 1, the pasted region
   as pixel mask). No test image or label is read.
3. One pass of one compiled program (`programs.readout_program`: every candidate's score and every
   map from a single reconstruction per batch) over that set gives each candidate its synthetic
   image AUROC, and each map its synthetic pixel AUROC (streamed into histograms: memory holds
   per-image scores only).
4. The choice: the best synthetic image AUROC; ties (a score that ignores the map has the same
   image AUROC with every map) go to the better synthetic pixel AUROC, then to the published pair.

The test pass then runs as for a published read-out, with eval.score / eval.map set to the choice,
from the same compiled program (no further compile). results.json's `readout` records the mode,
the pair used and, for `auto`, the published pair, the synthetic set and every candidate's AUROCs.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Callable, NamedTuple

from absl import logging
import ml_collections
import numpy as np
from sklearn import metrics as sk_metrics

from ganomaly_jax import losses, programs
from ganomaly_jax import scores as scores_lib
from ganomaly_jax import step as step_lib
from ganomaly_jax.config import checks, frozen, schema
from ganomaly_jax.data import synthetic_anomalies
from ganomaly_jax.evaluation import feature_bank, passes, pixel_metrics


class Readout(NamedTuple):
  """One read-out: an `eval.score` and an `eval.map`."""

  score: str
  map: str

  def label(self) -> str:
    return f'{self.score}/{self.map}'


@dataclasses.dataclass
class Chosen:
  """The read-out a run's test pass uses, and what to record about it.

  Attributes:
    config: the run's config with eval.score / eval.map set to the read-out used.
    step_config: the step config of `config`.
    eval_maps: (state, batch) -> 'score', 'l1', 'recon', 'map' of that read-out, as
      `programs.Programs.eval_maps`.
    record: results.json's `readout` entry.
  """

  config: ml_collections.ConfigDict
  step_config: frozen.StepConfig
  eval_maps: Callable
  record: dict[str, Any]


def published(config: ml_collections.ConfigDict) -> Readout:
  """The config's own read-out (the method's published one unless overridden)."""
  return Readout(config.eval.score, config.eval.map)


def candidates(config: ml_collections.ConfigDict) -> list[Readout]:
  """Every (score, map) of the registries that fits this config's model, in registry order."""
  return [
      Readout(score, map_name)
      for score in scores_lib.SCORES
      if checks.score_problem(config, score) is None
      for map_name in losses.MAPS
  ]


def with_readout(config: ml_collections.ConfigDict, readout: Readout) -> ml_collections.ConfigDict:
  """A copy of `config` reading out with `readout`; the eval keys only other scores read (e.g.
  eval.topk_fraction) go back to their defaults, so the copy validates."""
  config = copy.deepcopy(config)
  config.eval.score, config.eval.map = readout.score, readout.map
  defaults = schema.base_config()
  for dotted in set().union(*(s.reads for s in scores_lib.SCORES.values())):
    if dotted not in scores_lib.SCORES[readout.score].reads:
      section, key = dotted.split('.')
      config[section][key] = defaults[section][key]
  return config


def recorded_config(
    config: ml_collections.ConfigDict, results: dict[str, Any]
) -> ml_collections.ConfigDict:
  """The config that reads out as a finished run's test pass did (its results.json `readout`):
  for tools that score new images on the run's scale (`infer`)."""
  record = results.get('readout')
  if isinstance(record, dict) and record.get('mode') == 'auto' and record.get('score'):
    return with_readout(config, Readout(record['score'], record['map']))
  return config


def _auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
  """Image AUROC of raw scores (min-max normalisation would not change it); None if undefined."""
  scores = np.asarray(scores, np.float64)
  if not np.all(np.isfinite(scores)) or len(np.unique(labels)) < 2:
    return None
  return float(sk_metrics.roc_auc_score(labels, scores))


def synthetic_aurocs(
    program: Callable,
    state: Any,
    source,
    mesh,
    batch_size: int,
    readouts: list[Readout],
    smooth_sigma: float,
) -> list[dict[str, Any]]:
  """Each read-out's image AUROC and its map's pixel AUROC on a labelled source with masks.

  `program` is `programs.readout_program(..., readouts)`; `source` has records with 'label' and
  `ground_truth(i)` (a `SyntheticAnomalies`). One ordered pass: per image only the scores are kept;
  the maps, smoothed as the test pass smooths them, go into one pixel histogram per map.
  """
  keys = tuple(dict.fromkeys(step_lib.readout_key(*r) for r in readouts))
  map_names = tuple(dict.fromkeys(r.map for r in readouts))
  scores: dict[str, list[np.ndarray]] = {k: [] for k in keys}
  labels: list[np.ndarray] = []
  hists = {m: pixel_metrics.PixelHistogram(losses.MAPS[m].max_value) for m in map_names}
  for out in passes.gathered_batches(
      program,
      state,
      source,
      mesh,
      batch_size,
      keys + tuple(f'map/{m}' for m in map_names),
      host_keys=('label', 'index'),
  ):
    labels.append(out['label'])
    for k in keys:
      scores[k].append(out[k])
    for m in map_names:
      for amap, i in zip(pixel_metrics.smooth_maps(out[f'map/{m}'], smooth_sigma), out['index']):
        hists[m].add(amap, source.ground_truth(int(i)))
  label = np.concatenate(labels)
  image = {k: _auroc(label, np.concatenate(v)) for k, v in scores.items()}
  pixel = {m: h.auroc() for m, h in hists.items()}
  return [
      {
          'score': r.score,
          'map': r.map,
          'image_auroc': image[step_lib.readout_key(*r)],
          'pixel_auroc': pixel[r.map],
      }
      for r in readouts
  ]


def select(rows: list[dict[str, Any]], fallback: Readout) -> Readout:
  """The row with the best image AUROC; ties go to the better pixel AUROC, then to `fallback`
  (the published pair), then to the first in order. `fallback` when no AUROC is defined."""

  def key(row):
    image, pixel = row['image_auroc'], row['pixel_auroc']
    return (
        -np.inf if image is None else image,
        -np.inf if pixel is None else pixel,
        Readout(row['score'], row['map']) == fallback,
    )

  defined = [row for row in rows if row['image_auroc'] is not None]
  if not defined:
    return fallback
  best = max(defined, key=key)  # max keeps the first of equal keys
  return Readout(best['score'], best['map'])


def _outputs_of(program: Callable, readout: Readout) -> Callable:
  """`eval_maps`-shaped outputs of one read-out, taken from the all-candidates program (with its
  banks bound)."""
  key = step_lib.readout_key(*readout)

  def eval_maps(state, batch):
    out = program(state, batch)
    return {
        'score': out[key],
        'l1': out['l1'],
        'recon': out['recon'],
        'map': out[f'map/{readout.map}'],
    }

  return eval_maps


def _with_banks(fn: Callable, banks: dict) -> Callable:
  """(state, batch) -> fn(state, batch, banks); `fn` itself where no score needs a bank (its
  program stays the one the run compiled)."""
  if not banks:
    return fn
  return lambda state, batch: fn(state, batch, banks)


def choose(
    config: ml_collections.ConfigDict, state: Any, progs: programs.Programs, splits, mesh
) -> Chosen:
  """The read-out of the test pass (see the module docstring); sees no test image or label.

  Args:
    config: the run's (resolved) config; `eval.readout` says how to choose.
    state: the selected train state.
    progs: the run's programs (their `eval_maps` is the published read-out's).
    splits: the run's data splits: the validation normals choose; the training normals are embedded
      for the scores that compare with them (`evaluation/feature_bank.py`), only where one is read.
    mesh: device mesh.
  """
  default = published(config)

  def banks_for(scores) -> dict:
    features = feature_bank.features_of(scores)
    return (
        feature_bank.build(config, progs, state, splits.train, mesh, features) if features else {}
    )

  if config.eval.readout == 'published':
    banks = banks_for([default.score])
    return Chosen(
        config,
        progs.step_config,
        _with_banks(progs.eval_maps, banks),
        {'mode': 'published', 'score': default.score, 'map': default.map},
    )
  readouts = candidates(config)
  banks = banks_for(r.score for r in readouts)
  program = _with_banks(programs.readout_program(config, progs, tuple(readouts)), banks)
  synthetic = synthetic_anomalies.SyntheticAnomalies(splits.val, config.seed)
  rows = synthetic_aurocs(
      program, state, synthetic, mesh, config.eval.batch_size, readouts, config.eval.smooth_sigma
  )
  best = select(rows, default)
  for row in rows:
    logging.info(
        'Read-out %s/%s: synthetic image AUROC %s, pixel AUROC %s',
        row['score'],
        row['map'],
        row['image_auroc'],
        row['pixel_auroc'],
    )
  logging.info('eval.readout=auto: %s (published: %s).', best.label(), default.label())
  chosen = with_readout(config, best)
  record = {
      'mode': 'auto',
      'score': best.score,
      'map': best.map,
      'published': {'score': default.score, 'map': default.map},
      'synthetic': {
          'recipe': 'cutpaste',
          'seed': int(config.seed),
          'normals': synthetic.num_normals,
          'anomalies': synthetic.num_anomalies,
      },
      'candidates': rows,
  }
  return Chosen(chosen, frozen.StepConfig.from_config(chosen), _outputs_of(program, best), record)
