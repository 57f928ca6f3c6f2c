"""The reference protocol (`eval.protocol=reference`): the official code's test read-out, per epoch.

The official GANomaly and Skip-GANomaly code evaluates the test split after every epoch and
reports the best epoch's AUC, i.e. it selects the model on the test set, and it never switches
BatchNorm to inference mode, so each test image is normalised with the statistics of its own test
batch (docs/evaluation.md#reference-protocol). To set a published figure beside ours, this module
reproduces that read-out from the same run, as a second, labelled result that changes nothing of
the honest one (inference-mode BatchNorm, checkpoint and threshold from validation normals):

  * after every epoch, the test split in the official loader's order (its test normals, then the
    abnormal images: `sources.one_class_splits` keeps that order), in batches of
    `OFFICIAL_BATCH` = 64 (`opt.batchsize`), the last one partial (the official test loader has
    `shuffle=False`, `drop_last=False`): an unpadded batch, since zero padding would enter the
    batch statistics;
  * the method's score with test-batch statistics (`step.reference_scores`), min-max scaled over
    the split, AUC by scikit-learn's `roc_curve` + `auc` as in their `evaluate.roc`;
  * results.json's `reference`: the best epoch's AUROC and that epoch, the per-epoch curve, the
    last epoch's AUROC, and `selection` saying that the epoch was chosen on the test set.

The curve is kept in WORKDIR/reference_curve.json, so a resumed run keeps its earlier epochs.
"""

from __future__ import annotations

import json
from typing import Any

import jax
import numpy as np
from sklearn import metrics as sk_metrics

from ganomaly_jax import programs, schedule
from ganomaly_jax import step as step_lib
from ganomaly_jax.config import checks
from ganomaly_jax.data import pipeline
from ganomaly_jax.evaluation import metrics
from ganomaly_jax.runtime import rundir

PROTOCOLS = checks.PROTOCOLS
# The official code's test batch (`--batchsize`, 64 in run_mnist.sh / run_cifar.sh).
OFFICIAL_BATCH = 64
CURVE_FILE = 'reference_curve.json'
SELECTION = "test (the official code's best epoch)"


def official_auc(labels: np.ndarray, scores: np.ndarray) -> float:
  """The official `evaluate.roc`: scores min-max scaled over the set, then scikit-learn's
  roc_curve + auc."""
  scaled = metrics.normalise(scores)
  fpr, tpr, _ = sk_metrics.roc_curve(np.asarray(labels).astype(int), scaled)
  return float(sk_metrics.auc(fpr, tpr))


def program(config, progs) -> Any:
  """(state, images) -> raw reference scores, jitted once per kept programs (their `aot` dict)."""
  return programs.kept_program(config, progs, step_lib.reference_scores)


def test_scores(
    score_fn, state: Any, source, batch_size: int = OFFICIAL_BATCH
) -> tuple[np.ndarray, np.ndarray]:
  """(raw scores, labels) of every image of `source`, in order, in unpadded batches.

  Single process (ReferenceCurve refuses more): the batches go in from this host, whole.
  """
  scores, labels = [], []
  for start in range(0, len(source), batch_size):
    records = [source[i] for i in range(start, min(start + batch_size, len(source)))]
    images = np.stack([pipeline.to_float(r['image']) for r in records])
    scores.append(np.asarray(jax.device_get(score_fn(state, images)), np.float64))
    labels.append(np.asarray([r['label'] for r in records], np.int32))
  return np.concatenate(scores), np.concatenate(labels)


class ReferenceCurve:
  """The per-epoch reference AUROC of one run; `None`-like (does nothing) with eval.protocol=honest.

  Args:
    config: the run's config (resolved, step keys filled).
    progs: the run's programs.
    test: the test split.
    num_train: the training split's size (an epoch is `schedule.epoch_steps` of it).
    workdir: where the curve is kept between restarts.
    restored_step: the step the run resumes from (entries after it are dropped).
  """

  def __init__(self, config, progs, test, num_train: int, workdir: str, restored_step: int):
    self.enabled = config.eval.protocol == 'reference'
    self.steps_per_epoch = schedule.epoch_steps(config, num_train) if self.enabled else 0
    self.test = test
    self.workdir = workdir
    self.points: list[dict[str, Any]] = []
    if not self.enabled:
      return
    if jax.process_count() > 1:
      # Each batch is fed whole from this host (an unpadded last batch cannot be split evenly).
      raise rundir.TrainingError(
          'eval.protocol=reference runs in a single process (its test batches are fed from one '
          'host); use eval.protocol=honest on a multi-host run.'
      )
    self.score_fn = program(config, progs)
    saved = rundir.path(workdir, CURVE_FILE)
    if saved.exists():
      self.points = [
          p for p in json.loads(saved.read_text())['curve'] if p['step'] <= restored_step
      ]

  def due(self, step: int) -> bool:
    """Whether `step` ends an epoch and the reference read-out is on."""
    return self.enabled and step % self.steps_per_epoch == 0

  def evaluate(self, state: Any, step: int) -> None:
    """Evaluates the test split the official way (at the end of an epoch) and keeps the point."""
    scores, labels = test_scores(self.score_fn, state, self.test)
    point = {
        'epoch': step // self.steps_per_epoch,
        'step': step,
        'image_auroc': official_auc(labels, scores),
    }
    self.points = [p for p in self.points if p['step'] < step] + [point]
    if jax.process_index() == 0:
      rundir.write_json(rundir.path(self.workdir, CURVE_FILE), {'curve': self.points})

  def results(self) -> dict[str, Any]:
    """{'reference': ...} for results.json (empty with the honest protocol alone)."""
    if not self.enabled:
      return {}
    return {'reference': summary(self.points)}


def summary(points: list[dict[str, Any]]) -> dict[str, Any]:
  """The `reference` entry: best epoch (the first of equal maxima, as the official `>` keeps it),
  its AUROC, the curve, the last epoch's AUROC."""
  curve = [p['image_auroc'] for p in points]
  if not curve:
    return {
        'image_auroc': None,
        'epoch': None,
        'curve': [],
        'last_image_auroc': None,
        'selection': SELECTION,
        'note': 'no epoch ended before the last step',
    }
  best = int(np.argmax(curve))
  return {
      'image_auroc': curve[best],
      'epoch': points[best]['epoch'],
      'curve': curve,
      'last_image_auroc': curve[-1],
      'selection': SELECTION,
      'batch_size': OFFICIAL_BATCH,
      'batch_norm': 'test-batch statistics',
  }
