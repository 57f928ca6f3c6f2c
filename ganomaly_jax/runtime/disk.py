"""Disk space of a run directory: what a run still needs, what is free, and one line when it
does not fit.

`check_free_space` is the one check, asked before the run (nothing written yet) and before each
save of the loop (a disk that filled up meanwhile); `out_of_space` turns a full disk met anywhere
else (orbax, TensorBoard, a JSON file) into the same kind of line. Local disks only: a `gs://`
workdir has no free-space figure, and the checks pass.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from typing import Any

import jax
import numpy as np

from ganomaly_jax.runtime import rundir

# Besides checkpoints, a run writes pictures, TensorBoard events and small JSON files.
_OTHER_OUTPUT_BYTES = 2**20
# Orbax's per-checkpoint metadata (tree structure, sharding) beside the arrays.
_CHECKPOINT_OVERHEAD_BYTES = 128 * 2**10


def free_bytes(workdir: rundir.PathLike) -> int | None:
  """Free bytes on the file system of a local workdir (its nearest existing parent); None for
  gs://."""
  p = rundir.path(workdir)
  if rundir.is_remote(p):
    return None
  p = os.fspath(p)
  while not os.path.exists(p):
    p = os.path.dirname(p)
  return shutil.disk_usage(p).free


def used_bytes(directory: rundir.PathLike) -> int:
  """Bytes of the files under a local folder (0 if absent or remote)."""
  p = rundir.path(directory)
  if rundir.is_remote(p) or not p.exists():
    return 0
  total = 0
  for dirpath, _, filenames in os.walk(os.fspath(p)):
    for f in filenames:
      with contextlib.suppress(OSError):
        total += os.lstat(os.path.join(dirpath, f)).st_size
  return total


def megabytes(n: float) -> str:
  return f'{n / 2**20:.1f} MB'


def disk_full(error: BaseException) -> OSError | None:
  """The ENOSPC / EDQUOT error in `error`'s chain of causes (orbax and TF wrap them), if any."""
  seen = set()
  e: BaseException | None = error
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
      return e
    if 'No space left on device' in str(e) or 'Disk quota exceeded' in str(e):
      return e if isinstance(e, OSError) else OSError(errno.ENOSPC, str(e).splitlines()[0][:200])
    e = e.__cause__ or e.__context__
  return None


def state_bytes(state_shapes: Any) -> int:
  """The bytes of a state of these shapes (every array leaf)."""
  return sum(
      int(np.prod(x.shape)) * x.dtype.itemsize
      for x in jax.tree.leaves(state_shapes)
      if hasattr(x, 'shape')
  )


def checkpoint_bytes(state_shapes: Any) -> int:
  """About what one checkpoint of a state of these shapes takes on disk."""
  return state_bytes(state_shapes) + _CHECKPOINT_OVERHEAD_BYTES


def run_needs(workdir: rundir.PathLike, state_shapes: Any, keep_checkpoints: int) -> int:
  """Bytes a run still needs on its workdir's disk: the latest checkpoints it keeps, one more being
  written, the best one, and its other outputs, less the checkpoints already there."""
  one = checkpoint_bytes(state_shapes)
  total = (keep_checkpoints + 2) * one + _OTHER_OUTPUT_BYTES
  have = used_bytes(rundir.path(workdir, rundir.CHECKPOINTS)) + used_bytes(
      rundir.path(workdir, rundir.BEST)
  )
  return max(total - have, 2 * one)


def check_free_space(
    workdir: rundir.PathLike,
    state_shapes: Any,
    keep_checkpoints: int,
    store: Any = None,
    step: int | None = None,
) -> None:
  """Raises TrainingError (one line) when the workdir's disk cannot hold what the run writes next.

  Before the run (`step` None), the whole run must fit (`run_needs`), so a run that cannot finish
  stops before anything is written. Before the loop saves at `step`, its latest and best checkpoint
  and pictures must fit: a save would otherwise fail inside orbax's background threads (each logging
  its own traceback); `store`'s saves under way finish first, so the line names the last good
  checkpoint. Saves are checked in single-process runs only: processes of a multi-host run could
  see different free space and stop at different steps.
  """
  if step is not None and jax.process_count() > 1:
    return
  free = free_bytes(workdir)
  if free is None:
    return
  if step is None:
    needed = run_needs(workdir, state_shapes, keep_checkpoints)
    if free < needed:
      raise rundir.TrainingError(
          f'not enough space for {rundir.path(workdir)}: {megabytes(free)} free on its file '
          f'system, the run needs about {megabytes(needed)} (train.keep_checkpoints='
          f'{keep_checkpoints} checkpoints, one being written, the best one, pictures); free '
          'space or use another --workdir.'
      )
    return
  needed = 2 * checkpoint_bytes(state_shapes) + _OTHER_OUTPUT_BYTES  # latest and best, pictures
  if free < needed:
    store.wait()
    raise rundir.TrainingError(
        f'the disk of {rundir.path(workdir)} is full ({megabytes(free)} free, the checkpoint of '
        f'step {step} needs about {megabytes(needed)}); the last good checkpoint (step '
        f'{store.latest_step()}) is kept: free space and run the same command to resume.'
    )


def out_of_space(
    error: BaseException, workdir: rundir.PathLike, state_shapes: Any, keep_checkpoints: int
) -> rundir.TrainingError | None:
  """One line for a run that met a full disk (`disk_full` in `error`'s causes), else None."""
  full = disk_full(error)
  if full is None:
    return None
  return rundir.TrainingError(
      f'no space left on the device of {getattr(full, "filename", None) or workdir} '
      f'({megabytes(free_bytes(workdir) or 0)} free; a run here needs about '
      f'{megabytes(run_needs(workdir, state_shapes, keep_checkpoints))}): free space and run the '
      'same command to resume from the last good checkpoint.'
  )
