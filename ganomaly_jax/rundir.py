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
  old_<time>/          what --config.restart moved aside
  *.png, events.*      pictures (evaluate) and TensorBoard events (clu's writer, via tf.io.gfile)
"""

from __future__ import annotations

import json
import logging
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
  if not _is_remote(p):
    p = p.expanduser().resolve()
  return p.joinpath(*names)


def _is_remote(p: epath.Path) -> bool:
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
  """The one rule: a run is finished when its results record at least the steps asked for."""
  return bool(results) and results.get('steps', 0) >= num_steps


def finished_results(workdir: PathLike, num_steps: int) -> dict[str, Any] | None:
  """The results of a run that needs no more training, else None."""
  results = read_results(workdir)
  return results if is_finished(results, num_steps) else None


def append_curves(workdir: PathLike, step: int, summary: Mapping[str, float]) -> None:
  """Appends one line of averaged train metrics to train_metrics.jsonl."""
  with path(workdir, CURVES).open('a') as f:
    f.write(json.dumps({'step': step, **summary}) + '\n')


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


def check_parameters(saved: Mapping[str, tuple[int, ...]] | None,
                     wanted: Mapping[str, tuple[int, ...]], workdir: PathLike) -> None:
  """Refuses to resume a checkpoint whose parameter tree differs from the config's (names, shapes).

  `saved` and `wanted` map slash-joined state paths to shapes (`checkpoint.tree_shapes`); only the
  parameter fields count, so settings that change no parameter (runtime.*: kernels, compute dtype,
  cache) resume, and a real architecture change stops with the differing paths.
  """
  if saved is None:
    return
  diff = sorted(k for k in set(saved) | set(wanted)
                if saved.get(k) != wanted.get(k) and k.split('/')[0] in PARAMETER_FIELDS)
  if diff:
    shown = ', '.join(f'{k} {saved.get(k, "absent")} -> {wanted.get(k, "absent")}'
                      for k in diff[:4])
    more = f' and {len(diff) - 4} more' if len(diff) > 4 else ''
    raise TrainingError(
        f'{workdir} holds a run with a different architecture (parameters differ: {shown}{more}); '
        'use another --workdir or --config.restart=True to move the old checkpoints aside.')


def runtime_changes(runtime: Mapping[str, Any], workdir: PathLike) -> list[tuple[str, Any, Any]]:
  """(key, now, before) for each runtime setting that differs from the one in config.json."""
  from ganomaly_jax import config_lib  # ml_collections only; no TensorFlow

  saved = read_json(path(workdir, CONFIG))
  if saved is None:
    return []
  old = config_lib.upgrade_legacy(saved.get('config', {})).get('runtime', {})
  return [(k, v, old[k]) for k, v in sorted(runtime.items()) if k in old and old[k] != v]


def has_steps(directory: PathLike) -> bool:
  """True when an orbax checkpoint folder holds a finished step (orbax names them by the step)."""
  directory = epath.Path(directory)
  return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())
