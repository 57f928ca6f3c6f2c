"""Run length in epochs (`train.epochs`) and early stopping on the validation loss.

The official GANomaly / Skip-GANomaly code counts its budget in epochs (`niter`: 15 for MNIST, 25
in `run_cifar.sh`), so the paper suites do too. An epoch is one pass over this process's shard of
the training normals in batches of the local batch size, the last partial batch dropped (the
official training loader's `drop_last=True`; `pipeline.train_iterator` drops it too). The step
count therefore depends on the data, which is only known once the splits are loaded: the loop asks
`with_epoch_steps` for a config whose step keys are filled, and counts steps as before.
"""

from __future__ import annotations

import copy
import dataclasses
import math

import jax
import ml_collections

from ganomaly_jax.config import schema


class ScheduleError(ValueError):
  """A training split too small for one step of an epoch."""


def steps_per_epoch(num_train: int, batch_size: int, process_count: int = 1) -> int:
  """Steps of one pass over one process's shard of `num_train` images at global `batch_size`.

  Process i reads records i, i + P, ... (`pipeline.train_iterator`), so its shard holds
  ceil(num_train / P) images for the first processes; every process must take the same number of
  steps, so the smallest shard (floor) sets the count.
  """
  local_batch = batch_size // process_count
  shard = num_train // process_count
  steps = shard // local_batch
  if steps < 1:
    raise ScheduleError(
        f'train.epochs: {num_train} training images over {process_count} '
        f'process(es) give no full batch of {local_batch}; lower '
        'train.batch_size or use train.num_steps.'
    )
  return steps


def with_epoch_steps(
    config: ml_collections.ConfigDict, num_train: int
) -> ml_collections.ConfigDict:
  """`config` with its step keys filled from `train.epochs` (itself when epochs are off).

  train.num_steps = epochs × steps_per_epoch; eval_every, checkpoint_every and image_every left
  AUTO (schema.EPOCH_KEYS) become one epoch, so validation (and checkpoint selection) and
  checkpoints come once per epoch; explicit values stay, in steps. The returned config counts in
  steps (train.epochs = 0): it is what config.json records, and it validates as it is when
  a finished run is loaded again (mode=eval, rescore, infer).
  """
  t = config.train
  if t.epochs <= 0:
    return config
  per_epoch = steps_per_epoch(num_train, t.batch_size, jax.process_count())
  config = copy.deepcopy(config)
  config.train.num_steps = t.epochs * per_epoch
  config.train.epochs = 0
  for dotted in schema.EPOCH_KEYS[1:]:
    key = dotted.split('.')[1]
    if config.train[key] == schema.AUTO:
      config.train[key] = per_epoch
  return config


def epoch_steps(config: ml_collections.ConfigDict, num_train: int) -> int:
  """Steps per epoch of this run (whether its budget is in epochs or in steps)."""
  return steps_per_epoch(num_train, config.train.batch_size, jax.process_count())


@dataclasses.dataclass
class EarlyStop:
  """`train.early_stop_patience`: stop after `patience` validations without a new best loss.

  patience 0 never stops. A non-finite loss counts as no improvement.
  """

  patience: int
  best: float = math.inf
  waited: int = 0

  def update(self, val_loss: float) -> bool:
    """Records one validation loss; True when training should stop now."""
    if self.patience <= 0:
      return False
    if math.isfinite(val_loss) and val_loss < self.best:
      self.best, self.waited = val_loss, 0
      return False
    self.waited += 1
    return self.waited >= self.patience
