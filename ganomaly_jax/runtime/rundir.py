"""The run directory: its file names, JSON files, loss curves, the "finished" rule and restarts.

One home for what `train`, `sweep`, `benchmark`, `infer` and `evaluate` know about a workdir, so a
file name or a rule changes in one place. Every read and write goes through `etils.epath` (as orbax
does), so a workdir may be a local path or `gs://bucket/run`. This module imports neither
TensorFlow nor clu: `infer` uses it without paying for them.

Layout of a run directory:
  config.json          the resolved config the run trained with ({'config': {...}})
  results.json         the final metrics; its 'steps' says how far the run got
  train_metrics.jsonl  one line of averaged train metrics per log step (all sessions of a run)
  data_report.json     what the input pipeline found (skipped files, class counts), if anything
  checkpoints/ best/   orbax checkpoints: latest states for resuming, the best-by-val-loss state
  sweep_run.json       a sweep's or benchmark's sidecar (overrides, wall time of the session)
  run.lock             who runs here: a kernel lock (local disk) or a renewed lease (gs://)
  old_<time>/          what --config.restart moved aside
  damaged/             checkpoints that failed to restore, moved aside (`checkpoint.py`)
  *.png, events.*      pictures (evaluate) and TensorBoard events (clu's writer, via tf.io.gfile)
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from typing import Any, Mapping

from etils import epath

CONFIG = 'config.json'
RESULTS = 'results.json'
CURVES = 'train_metrics.jsonl'
DATA_REPORT = 'data_report.json'
CHECKPOINTS = 'checkpoints'
BEST = 'best'
RUN_INFO = 'sweep_run.json'
LOCK = 'run.lock'
DAMAGED = 'damaged'
OLD_PREFIX = 'old_'
# What --config.restart moves aside: everything the old run wrote that a new run would write too
# (the curves as well, or the new run's loss plot would carry the old run's steps).
RESTART_MOVES = (CHECKPOINTS, BEST, RESULTS, CONFIG, CURVES)
# The state fields that hold parameters: a difference there is a different architecture.
PARAMETER_FIELDS = ('g_params', 'd_params', 'g_stats', 'd_stats')

PathLike = str | epath.PathLike


class TrainingError(RuntimeError):
  """Training cannot go on (divergence, incompatible workdir); the message is one line."""


def path(workdir: PathLike, *names: str) -> epath.Path:
  """`workdir/names...` as an epath (local paths made absolute, as orbax needs; gs:// kept)."""
  p = epath.Path(workdir)
  if not is_remote(p):
    p = p.expanduser().resolve()
  return p.joinpath(*names)


def is_remote(p: epath.Path) -> bool:
  return '://' in str(p)


def write_text(target: PathLike, text: str) -> None:
  """Writes text atomically (temporary file + rename) so a crash never leaves half a file.

  On GCS the object appears whole on close anyway; the rename keeps one code path for both. The
  temporary name is the writer's own, so two writers of one file (hosts sharing a queue's tables)
  never rename each other's half-written file: the last rename wins whole.
  """
  target = epath.Path(target)
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = target.parent / f'{target.name}.{uuid.uuid4().hex[:12]}.tmp'
  tmp.write_text(text, encoding='utf-8')
  tmp.replace(target)


def write_json(target: PathLike, payload: Mapping[str, Any]) -> None:
  """Writes JSON atomically (`write_text`)."""
  write_text(target, json.dumps(payload, indent=2, sort_keys=True, default=str))


def read_json(source: PathLike) -> dict[str, Any] | None:
  """The JSON object in `source`, or None if there is no such file."""
  source = epath.Path(source)
  if not source.exists():
    return None
  return json.loads(source.read_text())


def read_results(workdir: PathLike) -> dict[str, Any] | None:
  """results.json of a run, or None if the run has not finished a session."""
  return read_json(path(workdir, RESULTS))


def is_finished(results: Mapping[str, Any] | None, num_steps: int) -> bool:
  """The one rule: a run is finished when its results record at least the steps asked for, or
  that it stopped early (train.early_stop_patience)."""
  return bool(results) and (
      results.get('steps', 0) >= num_steps or bool(results.get('early_stopped'))
  )


def finished_results(workdir: PathLike, num_steps: int) -> dict[str, Any] | None:
  """The results of a run that needs no more training, else None."""
  results = read_results(workdir)
  return results if is_finished(results, num_steps) else None


def append_curves(workdir: PathLike, step: int, summary: Mapping[str, float]) -> None:
  """Appends one line of averaged train metrics to train_metrics.jsonl."""
  target = path(workdir, CURVES)
  line = json.dumps({'step': step, **summary}) + '\n'
  if is_remote(target):
    # Objects are immutable, and gcsfs opens 'a' as a new object (the earlier rows would be
    # lost): the file is rewritten whole, cheap at a line per log step.
    write_text(target, (target.read_text() if target.exists() else '') + line)
    return
  with target.open('a') as f:
    f.write(line)


def read_curves(workdir: PathLike) -> dict[str, list[tuple[int, float]]]:
  """Loss curves logged so far: every session of a resumed run; a re-logged step keeps its last
  value."""
  source = path(workdir, CURVES)
  if not source.exists():
    return {}
  by_step: dict[int, dict[str, float]] = {}
  for line in source.read_text().splitlines():
    try:
      row = json.loads(line)
    except json.JSONDecodeError:  # a line cut short by a kill
      continue
    by_step[int(row.pop('step'))] = row
  curves: dict[str, list[tuple[int, float]]] = {}
  for step in sorted(by_step):
    for k, v in by_step[step].items():
      curves.setdefault(k, []).append((step, v))
  return curves


def trim_curves(workdir: PathLike, step: int) -> int:
  """Drops the train_metrics.jsonl rows past `step` (and lines cut short by a kill).

  Called when a run resumes from (or rolls back to) the checkpoint of `step`: the rows logged after
  it belong to steps that are trained again, and would otherwise stand beside the new ones in the
  curves. Returns the number of rows dropped. Call it on one process.
  """
  source = path(workdir, CURVES)
  if not source.exists():
    return 0
  kept, dropped = [], 0
  for line in source.read_text().splitlines():
    try:
      row_step = int(json.loads(line)['step'])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
      dropped += 1
      continue
    if row_step <= step:
      kept.append(line)
    else:
      dropped += 1
  if dropped:
    write_text(source, ''.join(f'{line}\n' for line in kept))
    logging.info('%s: dropped %d row(s) past step %d.', source, dropped, step)
  return dropped


def move_aside(workdir: PathLike, stamp: str | None = None) -> epath.Path | None:
  """--config.restart: moves the old run's files under old_<time>/ instead of deleting them.

  Returns the folder they went to (None when there was nothing to move). Call it on one process.
  """
  root = path(workdir)
  present = [n for n in RESTART_MOVES if (root / n).exists()]
  if not present:
    return None
  target = root / (OLD_PREFIX + (stamp or time.strftime('%Y%m%d_%H%M%S')))
  target.mkdir(parents=True, exist_ok=True)
  for n in present:
    (root / n).rename(target / n)
  logging.warning('restart: moved %s to %s', ', '.join(present), target)
  return target


def check_parameters(
    saved: Mapping[str, tuple[int, ...]] | None,
    wanted: Mapping[str, tuple[int, ...]],
    workdir: PathLike,
) -> None:
  """Refuses to resume a checkpoint whose parameter tree differs from the config's (names, shapes).

  `saved` and `wanted` map slash-joined state paths to shapes (`checkpoint.tree_shapes`); only the
  parameter fields count, so settings that change no parameter (runtime.*: kernels, compute dtype,
  cache) resume, and a real architecture change stops with the differing paths.
  """
  if saved is None:
    return
  diff = sorted(
      k
      for k in set(saved) | set(wanted)
      if saved.get(k) != wanted.get(k) and k.split('/')[0] in PARAMETER_FIELDS
  )
  if diff:
    shown = ', '.join(
        f'{k} {saved.get(k, "absent")} -> {wanted.get(k, "absent")}' for k in diff[:4]
    )
    more = f' and {len(diff) - 4} more' if len(diff) > 4 else ''
    raise TrainingError(
        f'{workdir} holds a run with a different architecture (parameters differ: {shown}{more}); '
        'use another --workdir or --config.restart=True to move the old checkpoints aside.'
    )


def runtime_changes(runtime: Mapping[str, Any], workdir: PathLike) -> list[tuple[str, Any, Any]]:
  """(key, now, before) for each runtime setting that differs from the one in config.json."""
  saved = read_json(path(workdir, CONFIG))
  if saved is None:
    return []
  old = saved.get('config', {}).get('runtime', {})
  return [(k, v, old[k]) for k, v in sorted(runtime.items()) if k in old and old[k] != v]


# The libraries whose releases decide whether a checkpoint restores: the arrays and their tree
# (jax, flax), the checkpoint format (orbax) and the data iterator's saved position (grain).
CHECKPOINT_LIBRARIES = ('jax', 'jaxlib', 'flax', 'orbax-checkpoint', 'grain')


def library_versions() -> dict[str, str]:
  """{distribution: installed version} of CHECKPOINT_LIBRARIES (recorded in config.json)."""
  from importlib import metadata

  return {name: metadata.version(name) for name in CHECKPOINT_LIBRARIES}


def version_changes(workdir: PathLike) -> list[tuple[str, str, str]]:
  """(library, now, before) for each CHECKPOINT_LIBRARIES release that differs from the one the
  run's last session recorded in config.json (none for a run that recorded none)."""
  saved = read_json(path(workdir, CONFIG))
  before = (saved or {}).get('versions', {})
  return [
      (k, v, before[k]) for k, v in library_versions().items() if k in before and before[k] != v
  ]


def has_steps(directory: PathLike) -> bool:
  """True when an orbax checkpoint folder holds a finished step (orbax names them by the step)."""
  directory = epath.Path(directory)
  return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


# ---------------------------------------------------------------------------------------------
# One run per workdir.
# ---------------------------------------------------------------------------------------------


def _holder() -> dict[str, Any]:
  return {
      'host': socket.gethostname(),
      'pid': os.getpid(),
      'started': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
      'command': ' '.join(sys.argv)[:300],
  }


def _describe(holder: Mapping[str, Any] | None) -> str:
  if not holder:
    return 'another process (no holder recorded)'
  return f'pid {holder.get("pid")} on {holder.get("host")}, started {holder.get("started")}' + (
      f': {holder["command"]}' if holder.get('command') else ''
  )


def pid_alive(pid: int) -> bool:
  """Whether a process with this pid runs on this host (someone else's counts as running)."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # someone else's process: alive
    return True
  return True


class WorkdirLock:
  """An exclusive claim on a workdir for one run, taken before anything there is read or written.

  Local disks: `fcntl.flock` on `run.lock`. The kernel drops the lock when the process ends however
  it ends (SIGKILL, OOM, power loss of a network client aside), so a stale lock never blocks; the
  file only records the holder (host, pid, start time, command) for the refusal message.

  gs:// (and file systems without flock): a lease object `run.lock` holding the holder and an
  expiry `ttl_s` ahead, renewed every `ttl_s / 4` by a daemon thread. A lease that is past its expiry,
  or held by a dead pid on this host, is taken over; a live one refuses the launch. Object stores
  have no compare-and-swap through epath, so two launches within `settle_s` of each other are told
  apart by writing, waiting `settle_s` and reading back: the last writer keeps the lease and the
  other stops.

  Raises TrainingError (one line naming the holder) from `acquire` when another run holds it.
  """

  def __init__(self, workdir: PathLike, ttl_s: float = 120.0, settle_s: float = 2.0):
    self.workdir = workdir
    self.root = path(workdir)
    self.file = self.root / LOCK
    self.ttl_s, self.settle_s = ttl_s, settle_s
    self._fd: int | None = None
    self._lease: dict[str, Any] | None = None
    self._stop = threading.Event()
    self._thread: threading.Thread | None = None
    self._created = False

  def __enter__(self) -> WorkdirLock:
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()

  def _refuse(self, holder: Mapping[str, Any] | None) -> TrainingError:
    return TrainingError(
        f'{self.workdir} is in use by another run ({_describe(holder)}); wait '
        f'for it to end or use another --workdir (lock: {self.file}).'
    )

  def acquire(self) -> None:
    self._created = not self.root.exists()
    self.root.mkdir(parents=True, exist_ok=True)
    if not is_remote(self.root):
      try:
        self._acquire_flock()
        return
      except OSError as e:  # NFS without lockd, some FUSE mounts: fall back to the lease
        if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
          raise
        logging.warning('%s: flock not supported (%s); using a lease file instead.', self.file, e)
    self._acquire_lease()

  def _acquire_flock(self) -> None:
    import fcntl

    while True:
      fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        try:
          holder = json.loads(os.pread(fd, 65536, 0) or b'null')
        except ValueError:
          holder = None
        os.close(fd)
        raise self._refuse(holder) from None
      except BaseException:
        os.close(fd)
        raise
      # A run that was releasing may have removed the file between our open and flock: the lock
      # must be on the file that is at the path now.
      try:
        same = os.stat(self.file).st_ino == os.fstat(fd).st_ino
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(_holder()).encode(), 0)
    self._fd = fd

  def _read_lease(self) -> dict[str, Any] | None:
    try:
      return json.loads(self.file.read_text())
    except (FileNotFoundError, ValueError):
      return None

  def _acquire_lease(self) -> None:
    current = self._read_lease()
    if current and not self._stale(current):
      raise self._refuse(current)
    lease = {**_holder(), 'token': uuid.uuid4().hex, 'ttl_s': self.ttl_s}
    self._write_lease(lease)
    time.sleep(self.settle_s)
    current = self._read_lease()
    if not current or current.get('token') != lease['token']:
      raise self._refuse(current)
    self._lease = lease
    self._stop.clear()
    self._thread = threading.Thread(target=self._renew, name='workdir-lease', daemon=True)
    self._thread.start()

  def _stale(self, lease: Mapping[str, Any]) -> bool:
    if float(lease.get('expires', 0)) < time.time():
      return True
    return lease.get('host') == socket.gethostname() and not pid_alive(int(lease.get('pid', 0)))

  def _write_lease(self, lease: dict[str, Any]) -> None:
    now = time.time()
    lease.update(heartbeat=now, expires=now + self.ttl_s)
    write_json(self.file, lease)

  def _renew(self) -> None:
    while not self._stop.wait(self.ttl_s / 4):
      try:
        current = self._read_lease()
      except OSError as e:  # the store is unreachable for now: retried, the lease lasts ttl_s
        logging.warning('%s: could not read the lease to renew it: %s', self.file, e)
        continue
      if not current or current.get('token') != self._lease['token']:
        logging.error(
            '%s: the lease was taken over by %s; this run no longer holds the workdir.',
            self.file,
            _describe(current),
        )
        return
      try:
        self._write_lease(self._lease)
      except OSError as e:  # a missed renewal is retried; the lease lasts ttl_s
        logging.warning('%s: could not renew the lease: %s', self.file, e)

  def release(self) -> None:
    """Gives the workdir back; a workdir this lock created and nothing else wrote is removed."""
    if self._fd is not None:
      import fcntl

      empty = self._created and [p.name for p in self.root.iterdir()] == [LOCK]
      if empty:  # a launch that failed before writing anything leaves no trace
        self.file.unlink()
      else:
        os.ftruncate(self._fd, 0)
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None
      if empty:
        with contextlib.suppress(OSError):
          self.root.rmdir()
    if self._lease is not None:
      self._stop.set()
      if self._thread is not None:
        self._thread.join(timeout=5)
      try:
        current = self._read_lease()
        if current and current.get('token') == self._lease['token']:
          self.file.unlink()
      except OSError as e:  # never hides the error a run stops on; an unrenewed lease expires
        logging.warning('%s: could not release the lease (%s); it expires by itself.', self.file, e)
      self._lease = None
      if self._created:
        with contextlib.suppress(OSError):
          if not list(self.root.iterdir()):
            self.root.rmdir()
