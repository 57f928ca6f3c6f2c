"""Checkpoints: the latest train state + data iterator for resuming, and the best state for evaluation.

Two orbax managers under the workdir:
  checkpoints/  latest states with the grain iterator state, saved together so a resumed run sees
                exactly the batches it would have seen (max_to_keep from the config);
  best/         the state with the lowest validation loss on held-out normals (model selection never
                looks at the test set).
Saves are asynchronous and atomic (orbax writes to a temporary directory and renames it), so a crash
during a save leaves the previous checkpoint usable.

Several runs may checkpoint in one process at once (a queue's `--parallel`, one thread per run).
orbax numbers its operations with one process-wide counter and reads it back while an operation
starts, to name the signals its background threads wait for; two threads starting saves together
mix up their numbers and wait for each other's signals until they time out. So every store starts
its orbax operations under one process-wide lock (`_ORBAX`); the writing itself still runs in
orbax's background threads, in parallel.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from etils import epath
import grain
import jax
import orbax.checkpoint as ocp

from ganomaly_jax import rundir

_ORBAX = threading.RLock()  # see the module docstring


def _abstract(tree: Any) -> Any:
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


def tree_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  """Slash-joined key path -> shape of every array leaf of a nested dict (or state) tree."""
  import flax

  tree = flax.serialization.to_state_dict(tree)
  shapes = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    shape = getattr(leaf, 'shape', None)
    if shape is not None:
      shapes['/'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path)] = tuple(shape)
  return shapes


class CheckpointStore:
  """Latest and best checkpoints of one run."""

  def __init__(self, workdir: str | epath.Path, keep: int = 2):
    self.latest_dir = rundir.path(workdir, rundir.CHECKPOINTS)  # local (absolute) or gs://
    self.best_dir = rundir.path(workdir, rundir.BEST)
    with _ORBAX:
      self._open(keep)

  def _open(self, keep: int) -> None:
    self.latest = ocp.CheckpointManager(
        self.latest_dir,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_names=('state', 'data'))
    self.best = ocp.CheckpointManager(
        self.best_dir,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, create=True, best_fn=lambda m: m['val_loss'], best_mode='min'),
        item_names=('state',))

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def best_step(self) -> int | None:
    return self.best.best_step()

  def save(self, step: int, state: Any, data_iter: Any, force: bool = False) -> bool:
    """Saves state and iterator position together (asynchronously)."""
    with _ORBAX:
      return self.latest.save(
          step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                        data=grain.checkpoint.CheckpointSave(data_iter)),
          force=force)

  def restore_latest(self, state_like: Any, data_iter: Any | None) -> tuple[Any, int] | None:
    """Restores the newest state (and the iterator in place); None if there is no checkpoint.

    `state_like` gives the structure, dtypes and shardings (e.g. the freshly initialised state).
    """
    step = self.latest.latest_step()
    if step is None:
      return None
    items = {'state': ocp.args.StandardRestore(_abstract(state_like))}
    if data_iter is not None:
      items['data'] = grain.checkpoint.CheckpointRestore(data_iter)
    with _ORBAX:
      restored = self.latest.restore(step, args=ocp.args.Composite(**items))
    return restored['state'], step

  def saved_process_count(self) -> int | None:
    """How many processes wrote the newest checkpoint's input-pipeline position (None: unknown).

    grain saves one file per process, `process_<i>-of-<n>.json`, in the checkpoint's `data` item.
    """
    step = self.latest.latest_step()
    if step is None:
      return None
    data_dir = self.latest_dir / str(step) / 'data'
    if not data_dir.is_dir():
      return None
    counts = {int(m.group(1)) for p in data_dir.iterdir()
              if (m := re.fullmatch(r'process_\d+-of-(\d+)\.json', p.name))}
    return counts.pop() if len(counts) == 1 else None

  def saved_shapes(self) -> dict[str, tuple[int, ...]] | None:
    """{'g_params/encoder1/conv_0/kernel': shape, ...} of the newest checkpoint's state, read from
    its metadata without restoring anything; None if there is no checkpoint."""
    directory, step = self.latest_dir, self.latest.latest_step()
    if step is None:
      directory, step = self.best_dir, self.best.best_step()
    if step is None:
      return None
    # A reader that knows the 'state' item's handler (the store's managers learn it only on use).
    with _ORBAX:
      reader = ocp.CheckpointManager(directory,
                                     item_handlers={'state': ocp.StandardCheckpointHandler()})
      try:
        metadata = reader.item_metadata(step)['state']
      finally:
        reader.close()
    return tree_shapes(getattr(metadata, 'tree', metadata))

  def save_best(self, step: int, state: Any, val_loss: float) -> None:
    """Offers a state to the best-checkpoint manager; orbax keeps it only if val_loss is lower."""
    with _ORBAX:
      self.best.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                     metrics={'val_loss': float(val_loss)})

  def restore_best(self, state_like: Any) -> tuple[Any, int] | None:
    step = self.best.best_step()
    if step is None:
      return None
    with _ORBAX:
      restored = self.best.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(_abstract(state_like))))
    return restored['state'], step

  def wait(self) -> None:
    """Blocks until asynchronous saves are on disk (call before exiting or reading them back)."""
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.wait()
    with _ORBAX:
      self.latest.close()
      self.best.close()
