"""The one run queue of sweeps and benchmark suites: skip what is finished, run the rest, tabulate.

A sweep (`sweep.py`) and a suite (`benchmark.py`) differ in how they name and expand their runs and in
the columns of their tables; what they do with the runs is the same and lives here:
- a run whose workdir already holds final results is skipped (rundir's finished rule), so rerunning
  the same command continues a sweep or a suite;
- the others run one after another; a failed run (divergence, bad data) is recorded with its first
  error line and the queue goes on; a preempted run stops the queue (rerun to resume);
- the tables are rewritten before the first run and after every run, so they always show the state;
- where the time went is logged per run (the phases a run records in its results.json,
  `ganomaly_jax.timing`) and totalled for the session at the end (`PhaseTotals`).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import time
from typing import Any, Callable, Generic, TypeVar

from absl import logging
import ml_collections

from ganomaly_jax import rundir

RunT = TypeVar('RunT')
# A queue root's record of where its last session's time went (`PhaseTotals.as_dict`).
TIMING_JSON = 'timing.json'
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


def process_age() -> tuple[float, float]:
  """(wall, CPU) seconds since this process started: interpreter, imports, process set-up."""
  try:
    import psutil

    me = psutil.Process()
    cpu = me.cpu_times()
    return time.time() - me.create_time(), cpu.user + cpu.system
  except ImportError:  # psutil comes with TensorBoard; without it the start-up is not measured
    return 0.0, time.process_time()


@dataclasses.dataclass
class PhaseTotals:
  """Wall and CPU seconds of one session of a queue, by phase, summed over the runs it ran.

  The trained runs' phases come from their results.json (`phase_seconds`); `start` is the process
  up to the first run (interpreter, imports, set-up, expanding the runs, generated data),
  `baselines` the baseline runs, `tables` rewriting the tables. CPU is the process's (all threads).
  """

  wall: dict[str, float] = dataclasses.field(default_factory=lambda: collections.defaultdict(float))
  cpu: dict[str, float] = dataclasses.field(default_factory=lambda: collections.defaultdict(float))
  trained: int = 0

  def add(self, name: str, wall: float, cpu: float) -> None:
    self.wall[name] += wall
    self.cpu[name] += cpu

  def add_run(self, phases: dict[str, dict[str, float]]) -> None:
    self.trained += 1
    for name, wall in phases.get('wall', {}).items():
      self.add(name, wall, phases.get('cpu', {}).get(name, 0.0))

  def lines(self, elapsed: tuple[float, float]) -> list[str]:
    """A small table: each phase's wall and CPU seconds and share of the session's wall time."""
    total_wall = max(elapsed[0], 1e-9)
    out = [f'{"phase":<14} {"wall s":>9} {"CPU s":>9} {"% wall":>7}']
    for name in sorted(self.wall, key=self.wall.get, reverse=True):
      out.append(f'{name:<14} {self.wall[name]:9.1f} {self.cpu[name]:9.1f} '
                 f'{100 * self.wall[name] / total_wall:6.1f}%')
    accounted = sum(self.wall.values()), sum(self.cpu.values())
    out.append(f'{"(other)":<14} {elapsed[0] - accounted[0]:9.1f} {elapsed[1] - accounted[1]:9.1f}')
    out.append(f'{"total":<14} {elapsed[0]:9.1f} {elapsed[1]:9.1f}   ({self.trained} trained runs)')
    return out

  def as_dict(self, elapsed: tuple[float, float]) -> dict[str, Any]:
    return {'wall': {k: round(v, 3) for k, v in self.wall.items()},
            'cpu': {k: round(v, 3) for k, v in self.cpu.items()},
            'total': {'wall': round(elapsed[0], 3), 'cpu': round(elapsed[1], 3)},
            'trained_runs': self.trained, 'cpu_count': os.cpu_count()}


def _phase_line(phases: dict[str, dict[str, float]]) -> str:
  wall, cpu = phases.get('wall', {}), phases.get('cpu', {})
  return ', '.join(f'{k} {wall[k]:.2f}/{cpu.get(k, 0.0):.2f}'
                   for k in sorted(wall, key=wall.get, reverse=True))


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
            what: str = 'queue',
            timing_file: str | None = None) -> list[Record[RunT]]:
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
    timing_file: where to write the session's `PhaseTotals` as JSON (None: only logged).
  """
  from ganomaly_jax import train  # imports TensorFlow (clu): not needed to expand or --dry_run

  totals = PhaseTotals()
  start = process_age()
  totals.add('start', *start)
  clock = (time.perf_counter() - start[0], time.process_time() - start[1])
  for record in records:  # finished runs first, so the first table already shows them
    previous = finished(record.run)
    if previous is not None:
      where = workdir(record.run)
      record.status, record.results = 'skipped', previous
      record.commit = read_run_info(where).get('commit')
      record.wall_time_s = recorded_wall_time(where, previous)
  _timed(totals, 'tables', write_tables)

  def summary() -> None:
    elapsed = (time.perf_counter() - clock[0], time.process_time() - clock[1])
    logging.info('Where the time of this %s session went (wall / CPU seconds; CPU = this process, '
                 'all threads, %s cores):\n%s', what, os.cpu_count(),
                 '\n'.join(totals.lines(elapsed)))
    if timing_file is not None:
      rundir.write_json(rundir.path(timing_file), totals.as_dict(elapsed))

  for i, record in enumerate(records, start=1):
    if record.status == 'skipped':
      logging.info('Run %d/%d %s: already finished, skipped.', i, len(records), name(record.run))
      continue
    logging.info('Run %d/%d %s', i, len(records), name(record.run))
    started = time.time()
    cpu_started = time.process_time()
    try:
      results = execute(record.run)
    except (ValueError, train.TrainingError) as e:
      record.status = f'failed: {_first_line(e)}'
      logging.error('Run %s failed: %s', name(record.run), e)
      totals.add('failed runs', time.time() - started, time.process_time() - cpu_started)
    else:
      record.results = results
      if results.get('preempted'):
        record.status = 'preempted'
        write_tables()
        logging.warning('Preempted during run %s; rerun the same command to resume the %s.',
                        name(record.run), what)
        summary()
        return records
      record.status, record.commit = 'done', commit
      record.wall_time_s = time.time() - started
      info = {**run_info(record.run), 'wall_time_s': record.wall_time_s}
      if commit is not None:
        info['commit'] = commit
      write_run_info(workdir(record.run), info)
      if 'phase_seconds' in results:
        totals.add_run(results['phase_seconds'])
        logging.info('Run %s took %.1f s; phases, wall/CPU s: %s', name(record.run),
                     record.wall_time_s, _phase_line(results['phase_seconds']))
      else:
        totals.add('baselines' if results.get('baseline') else 'untimed runs',
                   record.wall_time_s, time.process_time() - cpu_started)
    _timed(totals, 'tables', write_tables)
  summary()
  return records


def _timed(totals: PhaseTotals, name: str, fn: Callable[[], None]) -> None:
  wall, cpu = time.perf_counter(), time.process_time()
  fn()
  totals.add(name, time.perf_counter() - wall, time.process_time() - cpu)
