"""What the training loop does when a step diverges (train.on_nonfinite, train.max_rollbacks,
train.loss_limit): `divergence` names the loss terms that went wrong, `Rollback` stops the run or
rolls it back to the last checkpoint and marks the diverged batches for the loop to skip
(docs/reliability.md).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from absl import logging
import jax
import ml_collections
import numpy as np

from ganomaly_jax.runtime import checkpoint, rundir


def divergence(metrics: dict[str, Any], limit: float) -> str:
  """Names the loss terms that were non-finite (or beyond the loss limit) in one step."""
  terms = {k: float(v) for k, v in metrics.items() if k not in ('nonfinite', 'd_reinit')}
  bad = [k for k, v in terms.items() if not np.isfinite(v)]
  if bad:
    return 'non-finite ' + ', '.join(sorted(bad))
  big = [k for k in ('g_loss', 'd_loss') if limit > 0 and abs(terms.get(k, 0.0)) >= limit]
  return f'{", ".join(big)} beyond train.loss_limit={limit:g}' if big else 'non-finite gradients'


@dataclasses.dataclass
class Rollback:
  """What the loop does when a logged step diverged (train.on_nonfinite, train.max_rollbacks).

  `stop`, or an exhausted budget, raises TrainingError naming the step and the terms; `rollback`
  restores the last checkpoint (or the initial state when there is none, via `restart`) and marks
  the diverged steps, whose batches the loop then skips.
  """

  t: ml_collections.ConfigDict  # config.train
  store: checkpoint.CheckpointStore
  restart: Callable[[], tuple[Any, Any]]  # () -> (initial state, fresh train iterator)
  count: int = 0
  skip_batches: set[int] = dataclasses.field(default_factory=set)

  def __call__(
      self, fetched: list[tuple[int, dict[str, Any]]], state: Any, train_iter: Any
  ) -> tuple[Any, Any]:
    """Returns the state and iterator to go on from, or raises TrainingError."""
    bad = [(s, m) for s, m in fetched if m['nonfinite'] > 0]
    bad_step, bad_metrics = bad[0]
    what = divergence(bad_metrics, self.t.loss_limit)
    self.store.wait()
    if self.t.on_nonfinite == 'stop' or self.count >= self.t.max_rollbacks:
      reason = (
          'stopping' if self.t.on_nonfinite == 'stop' else f'stopping after {self.count} rollbacks'
      )
      last = self.store.latest_step()
      kept = (
          f'The last checkpoint (step {last}) is intact'
          if last is not None
          else 'No checkpoint was written yet'
      )
      raise rundir.TrainingError(
          f'Divergence at step {bad_step} ({what}); {reason}. {kept}; the '
          'diverged update was not applied.'
      )
    restored = self.store.restore_latest(state, train_iter, set_aside=jax.process_index() == 0)
    self.count += 1
    self.skip_batches.update(s for s, _ in bad)
    if restored is None:  # no checkpoint yet: restart from the initial state
      state, train_iter = self.restart()
    else:
      state, _ = restored
    logging.warning(
        'Divergence at step %d (%s): rollback %d/%d to step %d, skipping that batch.',
        bad_step,
        what,
        self.count,
        self.t.max_rollbacks,
        int(state.step),
    )
    return state, train_iter
