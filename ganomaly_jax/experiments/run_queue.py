"""The one run queue of sweeps and benchmark suites: skip what is finished, run the rest, tabulate.

A sweep (`sweep.py`) and a suite (`benchmark.py`) differ in how they name and expand their runs and in
the columns of their tables; what they do with the runs is the same and lives here:
- a run whose workdir already holds final results is skipped (rundir's finished rule), so rerunning
  the same command continues a sweep or a suite;
- the others run one after another; a failed run (divergence, bad data) is recorded with its first
  error line and the queue goes on; a preempted run stops the queue (rerun to resume);
- the tables are rewritten before the first run and after every run, so they always show the state.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Generic, TypeVar

from absl import logging
import ml_collections

from ganomaly_jax import rundir

RunT = TypeVar('RunT')
TrainFn = Callable[[ml_collections.ConfigDict, str], dict[str, Any]]


@dataclasses.dataclass
class Record(Generic[RunT]):
  """One run's row: status (pending | done | skipped | preempted | failed: <reason>) and results."""

  run: RunT
  status: str = 'pending'
  results: dict[str, Any] | None = None
  wall_time_s: float | None = None
  commit: str | None = None


def read_run_info(workdir: str) -> dict[str, Any]:
  """The sidecar a queue wrote next to a finished run's results ({} if none)."""
  return rundir.read_json(rundir.path(workdir, rundir.RUN_INFO)) or {}


def write_run_info(workdir: str, info: dict[str, Any]) -> None:
  """Writes the sidecar (overrides, wall time of the session that ran the run, commit, ...)."""
  rundir.write_json(rundir.path(workdir, rundir.RUN_INFO), info)


def recorded_wall_time(workdir: str, results: dict[str, Any]) -> float | None:
  """Wall time of the session that finished a run: the sidecar's, else the training loop's."""
  return read_run_info(workdir).get('wall_time_s', results.get('train_wall_time_s'))


def train_in_process(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """`train.train_and_evaluate` in this process, dropping the run's executables afterwards."""
  import jax

  from ganomaly_jax import train

  try:
    return train.train_and_evaluate(config, workdir)
  finally:
    jax.clear_caches()  # each run compiles its own functions: drop the previous run's executables


def _first_line(error: Exception) -> str:
  text = str(error)
  return text.splitlines()[0] if text else type(error).__name__


def run_all(records: list[Record[RunT]], *,
            name: Callable[[RunT], str],
            workdir: Callable[[RunT], str],
            finished: Callable[[RunT], dict[str, Any] | None],
            execute: Callable[[RunT], dict[str, Any]],
            run_info: Callable[[RunT], dict[str, Any]],
            write_tables: Callable[[], None],
            commit: str | None = None,
            what: str = 'queue') -> list[Record[RunT]]:
  """Runs every unfinished record in order; returns the records, whose tables `write_tables` writes.

  Args:
    records: one per run, all 'pending'.
    name, workdir: a run's name (for the log) and its run directory.
    finished: a run's final results if it needs nothing more, else None.
    execute: trains (or evaluates) one run and returns its results.
    run_info: what the sidecar of a run that finishes now records beside its wall time and commit.
    write_tables: rewrites the tables from `records`.
    commit: the code's commit, recorded per finished run.
    what: 'sweep' or 'suite', for the log lines.
  """
  from ganomaly_jax import train  # imports TensorFlow (clu): not needed to expand or --dry_run

  for record in records:  # finished runs first, so the first table already shows them
    previous = finished(record.run)
    if previous is not None:
      where = workdir(record.run)
      record.status, record.results = 'skipped', previous
      record.commit = read_run_info(where).get('commit')
      record.wall_time_s = recorded_wall_time(where, previous)
  write_tables()

  for i, record in enumerate(records, start=1):
    if record.status == 'skipped':
      logging.info('Run %d/%d %s: already finished, skipped.', i, len(records), name(record.run))
      continue
    logging.info('Run %d/%d %s', i, len(records), name(record.run))
    started = time.time()
    try:
      results = execute(record.run)
    except (ValueError, train.TrainingError) as e:
      record.status = f'failed: {_first_line(e)}'
      logging.error('Run %s failed: %s', name(record.run), e)
    else:
      record.results = results
      if results.get('preempted'):
        record.status = 'preempted'
        write_tables()
        logging.warning('Preempted during run %s; rerun the same command to resume the %s.',
                        name(record.run), what)
        return records
      record.status, record.commit = 'done', commit
      record.wall_time_s = time.time() - started
      info = {**run_info(record.run), 'wall_time_s': record.wall_time_s}
      if commit is not None:
        info['commit'] = commit
      write_run_info(workdir(record.run), info)
    write_tables()
  return records
