"""A trained run (finished or not), loaded for scoring: its config, results and selected checkpoint.

Shared by the inference CLI (`ganomaly_jax.infer`) and post-hoc re-scoring
(`ganomaly_jax.experiments.rescore`), which both evaluate a run's checkpoint without training it.
"""

from __future__ import annotations

from typing import Any

from absl import logging
import jax
import ml_collections

from ganomaly_jax import state as state_lib
from ganomaly_jax.config import schema
from ganomaly_jax.runtime import checkpoint, rundir


class InferError(ValueError):
  """Inference cannot run as asked; the message is one line naming the problem."""


def load_run(workdir: str) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
  """The run's config (from config.json) and results.json ({} if the run has not finished).

  Raises:
    InferError: the workdir, its config.json, or any checkpoint is missing.
  """
  if not rundir.path(workdir).is_dir():
    raise InferError(f'workdir not found: {workdir}')
  path = rundir.path(workdir, rundir.CONFIG)
  if not path.is_file():
    raise InferError(f'{workdir} has no {rundir.CONFIG}: not a training run directory.')
  if not (
      rundir.has_steps(rundir.path(workdir, rundir.BEST))
      or rundir.has_steps(rundir.path(workdir, rundir.CHECKPOINTS))
  ):
    raise InferError(
        f'{workdir} has no checkpoint (neither best/ nor checkpoints/ holds a step); '
        'train it first.'
    )
  try:
    config = schema.from_saved(rundir.read_json(path)['config'])
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise InferError(f'{path} cannot be read as a run config: {e!r}') from None
  results: dict[str, Any] = {}
  results_path = rundir.path(workdir, rundir.RESULTS)
  if results_path.is_file():
    try:
      results = rundir.read_json(results_path)
    except (OSError, ValueError) as e:
      logging.warning('Ignoring unreadable %s: %r', results_path, e)
  return config, results


def abstract_state_like(config: ml_collections.ConfigDict, components) -> Any:
  """Shapes, dtypes and a one-device sharding of the train state, without computing it.

  Restoring into this instead of a freshly initialised state skips compiling the initialisers, which
  on a CPU costs more than the whole inference of a small folder.
  """
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=device),
      state_lib.abstract_state(config, components),
  )


def restore_state(config: ml_collections.ConfigDict, workdir: str, which: str = 'auto'):
  """Restores the selected checkpoint: (components, state, step, 'best' | 'latest').

  Raises:
    InferError: the requested checkpoint does not exist.
  """
  components = state_lib.build_components(config)
  store = checkpoint.CheckpointStore(workdir)
  try:
    restored, kind = None, which
    state_like = abstract_state_like(config, components)
    if which in ('auto', 'best') and rundir.has_steps(store.best_dir):
      restored, kind = store.restore_best(state_like, set_aside=False), 'best'
    if restored is None and which in ('auto', 'latest') and rundir.has_steps(store.latest_dir):
      restored, kind = store.restore_latest(state_like, None, set_aside=False), 'latest'
  except Exception as e:  # orbax raises many types for a damaged or foreign checkpoint
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    raise InferError(f'cannot restore the checkpoint in {workdir}: {first}') from e
  finally:
    store.close()
  if restored is None:
    what = 'checkpoint' if which == 'auto' else f'{which} checkpoint'
    raise InferError(f'{workdir} has no {what} to restore.')
  state, step = restored
  return components, state, int(step), kind
