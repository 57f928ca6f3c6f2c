"""Checkpoints: the latest train state + data iterator for resuming, and the best state for evaluation.

Two orbax managers under the workdir:
  checkpoints/  latest states with the grain iterator state, saved together so a resumed run sees
                exactly the batches it would have seen (max_to_keep from the config);
  best/         the state with the lowest validation loss on held-out normals (model selection never
                looks at the test set).
Saves are asynchronous and atomic (orbax writes to a temporary directory and renames it), so a crash
during a save leaves the previous checkpoint usable. A checkpoint damaged afterwards (a truncated or
deleted file, a bad disk block) fails to restore: it is named in one warning line, moved to
`damaged/` beside the run's files (kept, not deleted), and the next older one is used.

A run directory in a bucket that stops answering mid-run (a network or service outage) stops the run
with one line naming the bucket and the last checkpoint that is known to have reached it; the same
command resumes from that checkpoint once the bucket answers again.

Several runs may checkpoint in one process at once (a queue's `--parallel`, one thread per run).
orbax numbers its operations with one process-wide counter and reads it back while an operation
starts, to name the signals its background threads wait for; two threads starting saves together
mix up their numbers and wait for each other's signals until they time out. So every store starts
its orbax operations under one process-wide lock (`_ORBAX`); the writing itself still runs in
orbax's background threads, in parallel.
"""

from __future__ import annotations

import contextlib
import logging as std_logging
import os
import re
import sys
import tempfile
import threading
import time
from typing import Any, Iterator


from absl import logging
from etils import epath
import grain
import jax
import orbax.checkpoint as ocp

from ganomaly_jax.runtime import rundir

# How long a failed restore's leftover native-stderr output may take to drain.
_STDERR_SETTLE_S = 3.0

_ORBAX = threading.RLock()  # see the module docstring


def _abstract(tree: Any) -> Any:
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


@contextlib.contextmanager
def _native_stderr_held() -> Iterator[None]:
  """Holds what is written to file descriptor 2 while a restore runs; gives it back if the restore
  succeeds, and keeps it to the debug log if it fails.

  When one array of a damaged checkpoint fails to read, orbax closes its event loop while
  tensorstore's other reads are still in flight; each of them then prints an 'Event loop is closed'
  traceback from native code, dozens in all, which no Python hook sees. The one-line warning of
  `_damaged` says what happened instead.
  """
  sys.stderr.flush()
  saved = os.dup(2)
  held = tempfile.TemporaryFile()
  os.dup2(held.fileno(), 2)
  failed = False
  try:
    yield
  except Exception:
    failed = True
    # The stray reads finish within moments: wait until nothing more is written (at most
    # _STDERR_SETTLE_S seconds).
    size, still, deadline = -1, 0, time.time() + _STDERR_SETTLE_S
    while still < 3 and time.time() < deadline:
      now = os.fstat(held.fileno()).st_size
      still = still + 1 if now == size else 0
      size = now
      time.sleep(0.1)
    raise
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
    held.seek(0)
    text = held.read()
    held.close()
    if failed:
      logging.debug('Output of the failed restore:\n%s', text.decode('utf-8', 'replace'))
    elif text:
      os.write(2, text)


def _is_restore_leftover(unraisable: Any) -> bool:
  """An error a failed restore leaves behind: its abandoned reads ('Event loop is closed', or an
  orbax read coroutine collected with its error unretrieved)."""
  exc, obj = unraisable.exc_value, unraisable.object
  return (
      (isinstance(exc, RuntimeError) and 'Event loop is closed' in str(exc))
      or '_read_array_index_and_device_put' in repr(obj)
      or str(exc).startswith('Encountered error while reading array index')
  )


def _quiet_restore_leftovers() -> None:
  """From the first failed restore on, its leftovers go to the debug log instead of a traceback
  each, printed whenever Python collects them (often at exit); other unraisable errors are
  reported as before."""
  previous = sys.unraisablehook
  if getattr(previous, 'drops_restore_leftovers', False):
    return

  def hook(unraisable):
    if _is_restore_leftover(unraisable):
      logging.debug('Leftover of a failed checkpoint restore: %r', unraisable.exc_value)
      return
    previous(unraisable)

  hook.drops_restore_leftovers = True
  sys.unraisablehook = hook
  # asyncio reports the same abandoned reads as 'Task exception was never retrieved' when it
  # collects their tasks; orbax is this program's only user of asyncio.
  std_logging.getLogger('asyncio').addFilter(
      lambda record: 'exception was never retrieved' not in record.getMessage()
  )


def _first_line(error: BaseException) -> str:
  lines = [l.strip() for l in str(error).splitlines() if l.strip()]
  return lines[0][:200] if lines else ''


def connection_failure(error: BaseException) -> BaseException | None:
  """The network error behind `error` (itself or one of its causes), or None.

  gcsfs raises aiohttp's connection errors (OSErrors) once its retries are spent; orbax passes them
  on from its background threads, wrapped or not; tensorstore reports an unreachable server as
  UNAVAILABLE. A full local disk is an OSError too, but never on a bucket, where this is asked.
  """
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, (ConnectionError, TimeoutError)) or (
        isinstance(error, OSError) and 'connect' in str(error).lower()
    ):
      return error
    if 'UNAVAILABLE' in str(error) or 'Cannot connect to host' in str(error):
      return error
    error = error.__cause__ or error.__context__
  return None


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
    self.workdir = workdir
    self.latest_dir = rundir.path(workdir, rundir.CHECKPOINTS)  # local (absolute) or gs://
    self.best_dir = rundir.path(workdir, rundir.BEST)
    # The newest step whose save is known to have finished, and the one still being written.
    self.committed_step: int | None = None
    self._pending_step: int | None = None
    with _ORBAX:
      self._open(keep)

  def _open(self, keep: int) -> None:
    self.latest = ocp.CheckpointManager(
        self.latest_dir,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_names=('state', 'data'),
    )
    self.best = ocp.CheckpointManager(
        self.best_dir,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, create=True, best_fn=lambda m: m['val_loss'], best_mode='min'
        ),
        item_names=('state',),
    )

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def best_step(self) -> int | None:
    return self.best.best_step()

  def save(self, step: int, state: Any, data_iter: Any, force: bool = False) -> bool:
    """Saves state and iterator position together (asynchronously)."""
    with _ORBAX:
      saved = self.latest.save(
          step,
          args=ocp.args.Composite(
              state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iter)
          ),
          force=force,
      )
    if saved:
      # orbax finished the previous save (or raised its failure) before starting this one.
      self._mark_committed()
      self._pending_step = step
    return saved

  def _mark_committed(self) -> None:
    if self._pending_step is not None:
      self.committed_step = self._pending_step
      self._pending_step = None

  def restore_latest(
      self, state_like: Any, data_iter: Any | None, set_aside: bool = True
  ) -> tuple[Any, int] | None:
    """Restores the newest state that restores (and the iterator in place); None if none does.

    `state_like` gives the structure, dtypes and shardings (e.g. the freshly initialised state).
    A checkpoint that fails to restore is named in one warning line and, with `set_aside` (the
    training chief; never a reader such as `infer`), moved to `damaged/`; the next older one is tried.
    """
    items = {'state': ocp.args.StandardRestore(_abstract(state_like))}
    if data_iter is not None:
      items['data'] = grain.checkpoint.CheckpointRestore(data_iter)
    for step in sorted(self.latest.all_steps(), reverse=True):
      try:
        with _ORBAX, _native_stderr_held():
          restored = self.latest.restore(step, args=ocp.args.Composite(**items))
      except Exception as e:  # pylint: disable=broad-except  # orbax/tensorstore raise many types
        self._damaged(self.latest, self.latest_dir, step, e, set_aside)
        continue
      self.committed_step = step  # a resumed run's starting point is on storage already
      return restored['state'], step
    return None

  def _damaged(
      self,
      manager: ocp.CheckpointManager,
      directory: epath.Path,
      step: int,
      error: Exception,
      set_aside: bool,
      then: str = 'using the next older one',
  ) -> None:
    """Names a checkpoint that failed to restore in one line and (set_aside) moves it away."""
    _quiet_restore_leftovers()
    lines = [l.strip() for l in str(error).strip().splitlines() if l.strip()]
    first = lines[0].split(' See full TensorStore details')[0][:200] if lines else ''
    why = f'{type(error).__name__}: {first}'
    source = directory / str(step)
    if not set_aside:
      logging.warning('Checkpoint %s cannot be restored (%s); %s.', source, why, then)
      return
    target = rundir.path(
        self.workdir, rundir.DAMAGED, f'{directory.name}_{step}_{time.strftime("%Y%m%d_%H%M%S")}'
    )
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
      source.rename(target)
      where = f'moved to {target}'
    except OSError as e:  # an object store without directory renames: the copy is lost anyway
      where = f'could not be moved ({e}); removed'
      source.rmtree(missing_ok=True)
    manager.reload()  # forget the step
    logging.warning('Checkpoint %s cannot be restored (%s); %s; %s.', source, why, where, then)

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
    counts = {
        int(m.group(1))
        for p in data_dir.iterdir()
        if (m := re.fullmatch(r'process_\d+-of-(\d+)\.json', p.name))
    }
    return counts.pop() if len(counts) == 1 else None

  def saved_shapes(self) -> dict[str, tuple[int, ...]] | None:
    """{'g_params/encoder1/conv_0/kernel': shape, ...} of the newest checkpoint's state, read from
    its metadata without restoring anything; None if there is no checkpoint."""
    for directory, manager in ((self.latest_dir, self.latest), (self.best_dir, self.best)):
      # A reader that knows the 'state' item's handler (the store's managers learn it only on use).
      with _ORBAX:
        reader = ocp.CheckpointManager(
            directory, item_handlers={'state': ocp.StandardCheckpointHandler()}
        )
      try:
        for step in sorted(manager.all_steps(), reverse=True):
          try:
            with _ORBAX, _native_stderr_held():
              metadata = reader.item_metadata(step)['state']
          except Exception:  # pylint: disable=broad-except  # damaged: restore_latest names it
            _quiet_restore_leftovers()
            continue
          if metadata is not None:
            return tree_shapes(getattr(metadata, 'tree', metadata))
      finally:
        reader.close()
    return None

  def save_best(self, step: int, state: Any, val_loss: float) -> None:
    """Offers a state to the best-checkpoint manager; orbax keeps it only if val_loss is lower."""
    with _ORBAX:
      self.best.save(
          step,
          args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
          metrics={'val_loss': float(val_loss)},
      )

  def restore_best(self, state_like: Any, set_aside: bool = True) -> tuple[Any, int] | None:
    """The best-by-validation state; None if there is none or it fails to restore (named in one
    warning line and, with `set_aside`, moved to `damaged/`: the caller then uses its own state)."""
    step = self.best.best_step()
    if step is None:
      return None
    try:
      with _ORBAX, _native_stderr_held():
        restored = self.best.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(_abstract(state_like)))
        )
    except Exception as e:  # pylint: disable=broad-except
      self._damaged(self.best, self.best_dir, step, e, set_aside, 'using the last state instead')
      return None
    return restored['state'], step

  def wait(self) -> None:
    """Blocks until asynchronous saves are on disk (call before exiting or reading them back)."""
    self.latest.wait_until_finished()
    self._mark_committed()
    self.best.wait_until_finished()

  @contextlib.contextmanager
  def saves_finished_on_error(self) -> Iterator[None]:
    """Lets the saves under way reach the disk when the block raises.

    The process usually exits right after a failed run, which would kill orbax's background commit
    of the last good checkpoint with it; a run that stops on an error keeps that checkpoint. An
    error that is a bucket run directory becoming unreachable becomes one line (TrainingError)
    naming the bucket and the last checkpoint that reached it.
    """
    try:
      yield
    except BaseException as error:
      try:
        self.wait()
      except Exception as e:  # pylint: disable=broad-except
        logging.warning('A checkpoint save under way failed as well: %s', _first_line(e))
      unreachable = self.unreachable(error)
      if unreachable is not None:
        raise unreachable from error
      raise

  def unreachable(self, error: BaseException) -> rundir.TrainingError | None:
    """The one-line error for `error` if it is this run's bucket failing to answer, else None."""
    cause = connection_failure(error)
    if cause is None or not rundir.is_remote(self.latest_dir):
      return None
    bucket = '/'.join(str(self.latest_dir).split('/')[:3])
    if self.committed_step is None:
      kept = 'no checkpoint of this run reached it yet, so a relaunch starts afresh'
    else:
      kept = (
          f'the last checkpoint that reached it is step {self.committed_step} '
          f'({self.latest_dir / str(self.committed_step)}); the same command resumes from it'
      )
    return rundir.TrainingError(
        f'{bucket} stopped answering ({type(cause).__name__}: {_first_line(cause)}); {kept} '
        'once the bucket answers again.'
    )

  def close(self) -> None:
    self.wait()
    with _ORBAX:
      self.latest.close()
      self.best.close()
