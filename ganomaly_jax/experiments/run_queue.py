"""The one run queue of sweeps and benchmark suites: skip what is finished, run the rest, tabulate.

A sweep (`sweep.py`) and a suite (`benchmark.py`) differ in how they name and expand their runs and in
the columns of their tables; what they do with the runs is the same and lives here:
- a run whose workdir already holds final results is skipped (rundir's finished rule), so rerunning
  the same command continues a sweep or a suite;
- the others run one after another, runs of one method together so that they share its compiled
  programs (`execution_order`), or several at once, each on its own devices (`placement.device_groups`,
  the `--parallel` flag); a failed run (divergence, bad data) is recorded with its first error line
  and the queue goes on; a preempted run stops the queue (rerun to resume);
- consecutive runs with the same program (the seeds of a method and class) train as one group of
  up to `stack_size` runs (`runtime.step_group`: one program steps them all, each keeps its own run
  directory and results); the unit the queue hands out, also to `--parallel`, is such a group;
- several hosts may each run their share of one queue (`placement.Share`, the `--share` flag) with nothing
  between them but the run directories;
- the tables are rewritten before the first run, after a run at most every `TABLES_EVERY_S`
  seconds, and at the end (with several hosts: once, when every run is settled);
- where the time went is logged per run (the phases a run records in its results.json,
  `ganomaly_jax.runtime.timing`) and totalled for the session at the end
  (`session_timing.PhaseTotals`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import os
import queue
import time
from typing import Any, Callable, Generic, Sequence, TypeVar

from absl import logging
import ml_collections

from ganomaly_jax.experiments import placement, session_timing
from ganomaly_jax.runtime import cli, rundir

RunT = TypeVar('RunT')
RESULTS_CSV, RESULTS_MD = 'results.csv', 'results.md'  # a queue root's tables, one row per run
# A queue root's record of where its last session's time went
# (`session_timing.PhaseTotals.as_dict`).
TIMING_JSON = 'timing.json'
# Rewriting the tables (csv, markdown, plot) takes a good part of a second: at most this often.
TABLES_EVERY_S = 30.0
# (config, workdir) -> results; called with devices=[...] too when the queue runs several at once.
TrainFn = Callable[..., dict[str, Any]]


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


def train_in_process(
    config: ml_collections.ConfigDict, workdir: str, devices: Sequence[Any] | None = None
) -> dict[str, Any]:
  """`train.train_and_evaluate` in this process, on `devices` (default: all of them).

  The run's compiled programs stay in `programs`' bounded cache, so the next run of the same
  method (another class or seed) reuses them instead of compiling again.
  """
  from ganomaly_jax import train

  return train.train_and_evaluate(config, workdir, devices=devices)


def call_train(
    train_fn: TrainFn,
    config: ml_collections.ConfigDict,
    workdir: str,
    devices: Sequence[Any] | None,
) -> dict[str, Any]:
  """`train_fn(config, workdir)`, with `devices=` only when the queue chose devices for the run."""
  if devices is None:
    return train_fn(config, workdir)
  return train_fn(config, workdir, devices=devices)


def report_session(root: str, records: Sequence[Record[Any]]) -> None:
  """A sweep's or suite's last words: ROOT/results.md (with --share: once every host is done),
  then one `error:` line and exit 1 if any run failed, so a calling script sees the failure."""
  if rundir.path(root, RESULTS_MD).exists():
    print(rundir.path(root, RESULTS_MD).read_text(), end='')
  if failed := [r.run.name for r in records if r.status.startswith('failed')]:
    cli.exit_with_error(f'{len(failed)} run(s) failed: {", ".join(failed)} (see {RESULTS_CSV})')


def _first_line(error: Exception) -> str:
  text = str(error)
  return text.splitlines()[0] if text else type(error).__name__


@dataclasses.dataclass
class _Outcome:
  """What one attempt at a run gave (computed in the thread that ran it)."""

  results: dict[str, Any] | None
  error: Exception | None
  wall_s: float
  cpu_s: float


def _attempt(execute: Callable[[RunT, Any], dict[str, Any]], run: RunT, devices: Any) -> _Outcome:
  from ganomaly_jax.runtime import rundir

  wall, cpu = time.perf_counter(), time.process_time()
  try:
    if devices is None:
      results, error = execute(run, None), None
    else:
      import jax

      with jax.default_device(devices[0]):  # the run's small host-side ops stay on its devices
        results, error = execute(run, devices), None
  except (ValueError, rundir.TrainingError) as e:
    results, error = None, e
  return _Outcome(results, error, time.perf_counter() - wall, time.process_time() - cpu)


def execution_order(keys: Sequence[Any], share: placement.Share = placement.Share()) -> list[int]:
  """Indices of the runs this host runs, in the order it runs them.

  Runs with the same key (same programs: a method's classes and seeds) run one after another, in
  the order of the key's first run, so that each method compiles once and its programs stay
  cached; the host's share is every `share.count`-th run of that order, so every host gets a
  like mix of cheap and costly methods.
  """
  first: dict[Any, int] = {}
  for i, key in enumerate(keys):
    first.setdefault(key, i)
  order = sorted(range(len(keys)), key=lambda i: (first[keys[i]], i))
  return order[share.index :: share.count]


def run_all(
    records: list[Record[RunT]],
    *,
    name: Callable[[RunT], str],
    workdir: Callable[[RunT], str],
    finished: Callable[[RunT], dict[str, Any] | None],
    execute: Callable[[RunT, Any], dict[str, Any]],
    run_info: Callable[[RunT], dict[str, Any]],
    write_tables: Callable[[], None],
    commit: str | None = None,
    what: str = 'queue',
    timing_file: str | None = None,
    group: Callable[[RunT], Any] | None = None,
    stack: Callable[[RunT], Any] | None = None,
    stack_size: int = 1,
    device_groups: Sequence[Sequence[Any]] | None = None,
    share: placement.Share = placement.Share(),
    tables_every_s: float = TABLES_EVERY_S,
) -> list[Record[RunT]]:
  """Runs every unfinished record of this host's share; returns the records.

  Args:
    records: one per run, all 'pending'.
    name, workdir: a run's name (for the log) and its run directory.
    finished: a run's final results if it needs nothing more, else None.
    execute: `execute(run, devices)` trains (or evaluates) one run on `devices` (None: the
      default, every device) and returns its results.
    run_info: what the sidecar of a run that finishes now records beside its wall time and commit.
    write_tables: rewrites the tables from `records`.
    commit: the code's commit, recorded per finished run.
    what: 'sweep' or 'suite', for the log lines.
    timing_file: where to write the session's `session_timing.PhaseTotals` as JSON (None: only
      logged).
    group: a run's program key (`execution_order`); None runs the records in their order.
    stack: the key under which a run may train in one group with others (`programs.group_key`); runs
      with the same key that follow each other in the order train as a group of at most
      `stack_size` (None: no key, the run trains alone).
    device_groups: with two or more groups, that many runs are in flight at once, each on its own
      group of devices (threads of this process); None or one group: one run at a time, in this
      thread, on the default devices.
    share: this host's part of the runs (`placement.Share`); with several hosts the tables are written only
      when every run of every host is settled, by the host that settles the last one.
    tables_every_s: one host: the tables are rewritten after a run when this long has passed since
      they were last written (and always before the first run and at the end).
  """
  totals = session_timing.PhaseTotals(in_flight=len(device_groups) if device_groups else 1)
  start = session_timing.process_age()
  totals.add('start', *start)
  clock = (time.perf_counter() - start[0], time.process_time() - start[1])
  for record in records:  # finished runs first, so the first table already shows them
    previous = finished(record.run)
    if previous is not None:
      _mark_skipped(record, previous, workdir(record.run))
  alone = share.count == 1
  last_tables = [time.perf_counter()]

  def tables_now() -> None:
    session_timing.timed(totals, 'tables', write_tables)
    last_tables[0] = time.perf_counter()

  if alone:
    tables_now()

  keys = [group(r.run) if group is not None else i for i, r in enumerate(records)]
  order = execution_order(keys, share)
  mine = [records[i] for i in order if records[i].status != 'skipped']
  logging.info(
      '%s: %d runs, %d finished before; this %s runs %d of them%s.',
      what.capitalize(),
      len(records),
      sum(r.status == 'skipped' for r in records),
      f'host ({share.index} of {share.count})' if not alone else 'session',
      len(mine),
      f', {len(device_groups)} at a time' if device_groups and len(device_groups) > 1 else '',
  )

  def settle(i: int, record: Record[RunT], outcome: _Outcome) -> bool:
    """Records an outcome; True when the run was preempted (the queue stops)."""
    run = record.run
    if outcome.error is not None:
      record.status = f'failed: {_first_line(outcome.error)}'
      logging.error('Run %s failed: %s', name(run), outcome.error)
      totals.add('failed runs', outcome.wall_s, outcome.cpu_s)
      if not alone:  # the other hosts learn of it from the sidecar
        write_run_info(workdir(run), {**run_info(run), 'status': record.status})
    else:
      results = outcome.results
      record.results = results
      if results.get('preempted'):
        record.status = 'preempted'
        logging.warning(
            'Preempted during run %s; rerun the same command to resume the %s.', name(run), what
        )
        return True
      record.status, record.commit = 'done', commit
      record.wall_time_s = outcome.wall_s
      info = {**run_info(run), 'wall_time_s': record.wall_time_s}
      if commit is not None:
        info['commit'] = commit
      write_run_info(workdir(run), info)
      if 'phase_seconds' in results:
        totals.add_run(results['phase_seconds'])
        logging.info(
            'Run %d/%d %s took %.1f s; phases, wall/CPU s: %s',
            i,
            len(mine),
            name(run),
            record.wall_time_s,
            session_timing.phase_line(results['phase_seconds']),
        )
      else:
        totals.add(
            'baselines' if results.get('baseline') else 'untimed runs',
            outcome.wall_s,
            outcome.cpu_s,
        )
    if alone and time.perf_counter() - last_tables[0] >= tables_every_s:
      tables_now()
    return False

  units = make_units(mine, stack, stack_size)
  if device_groups is None or len(device_groups) < 2:
    preempted = _run_in_turn(units, name, execute, settle)
  else:
    preempted = _run_at_once(units, name, execute, settle, device_groups)
  if alone:
    tables_now()
  if not alone and not preempted:
    session_timing.timed(
        totals,
        'tables',
        lambda: _tables_when_settled(records, finished, workdir, write_tables, share),
    )
  elapsed = (time.perf_counter() - clock[0], time.process_time() - clock[1])
  logging.info(
      'Where the time of this %s session went (wall / CPU seconds; CPU = this process, '
      'all threads, %s cores):\n%s',
      what,
      os.cpu_count(),
      '\n'.join(totals.lines(elapsed)),
  )
  if timing_file is not None:
    rundir.write_json(rundir.path(timing_file), totals.as_dict(elapsed))
  return records


def _mark_skipped(record: Record[RunT], results: dict[str, Any], where: str) -> None:
  record.status, record.results = 'skipped', results
  record.commit = read_run_info(where).get('commit')
  record.wall_time_s = recorded_wall_time(where, results)


def make_units(
    records: list[Record[RunT]], stack: Callable[[RunT], Any] | None, size: int
) -> list[list[tuple[int, Record[RunT]]]]:
  """The queue's units: (1-based index, record) lists, consecutive runs with one stack key together."""
  units: list[list[tuple[int, Record[RunT]]]] = []
  last = None
  for i, record in enumerate(records, start=1):
    key = stack(record.run) if stack is not None else None
    if key is not None and key == last and len(units[-1]) < size:
      units[-1].append((i, record))
    else:
      units.append([(i, record)])
    last = key
  return units


def _attempt_unit(execute, unit: list[tuple[int, Record[RunT]]], devices: Any) -> list[_Outcome]:
  """Runs a unit: one run as it is, several as one step group (`step_group.run_together`)."""
  if len(unit) == 1:
    return [_attempt(execute, unit[0][1].run, devices)]
  from ganomaly_jax.runtime import step_group

  outcomes = step_group.run_together(
      [lambda run=record.run: _attempt(execute, run, devices) for _, record in unit]
  )
  for outcome in outcomes:
    if isinstance(outcome, BaseException):  # not a run's own failure (those are outcomes)
      raise outcome
  return outcomes


def _unit_name(unit: list[tuple[int, Record[RunT]]], name) -> str:
  names = [name(record.run) for _, record in unit]
  return names[0] if len(names) == 1 else f'{names[0]} and {len(names) - 1} more as one group'


def _run_in_turn(units: list[list[tuple[int, Record[RunT]]]], name, execute, settle) -> bool:
  """One unit after another in this thread; True when a run was preempted."""
  total = sum(len(unit) for unit in units)
  for unit in units:
    logging.info('Run %d/%d %s', unit[0][0], total, _unit_name(unit, name))
    preempted = False
    for (i, record), outcome in zip(unit, _attempt_unit(execute, unit, None)):
      preempted = settle(i, record, outcome) or preempted
    if preempted:
      return True
  return False


def _run_at_once(
    units: list[list[tuple[int, Record[RunT]]]],
    name,
    execute,
    settle,
    device_groups: Sequence[Sequence[Any]],
) -> bool:
  """`len(device_groups)` units in flight on threads, each on a free group of devices.

  This thread hands out the units and settles their runs' outcomes (the tables are written here
  only). A stop signal (SIGTERM, SIGINT) reaches every run in flight (`preemption.StopRequest`):
  each checkpoints and returns, and no further unit starts. True when a run was preempted.
  """
  from ganomaly_jax.runtime import preemption

  free: queue.Queue = queue.Queue()
  for devices in device_groups:
    free.put(list(devices))

  def work(unit: list[tuple[int, Record[RunT]]]) -> list[_Outcome]:
    devices = free.get()
    try:
      logging.info('Run %s on devices %s', _unit_name(unit, name), [d.id for d in devices])
      return _attempt_unit(execute, unit, devices)
    finally:
      free.put(devices)

  todo = collections.deque(units)
  in_flight: dict[concurrent.futures.Future, list[tuple[int, Record[RunT]]]] = {}
  preempted = False
  with (
      concurrent.futures.ThreadPoolExecutor(len(device_groups), 'run') as pool,
      preemption.StopRequest() as stop,
  ):
    while todo or in_flight:
      while todo and len(in_flight) < len(device_groups) and not preempted and not stop.requested:
        unit = todo.popleft()
        in_flight[pool.submit(work, unit)] = unit
      if not in_flight:
        break
      done, _ = concurrent.futures.wait(
          in_flight, timeout=1.0, return_when=concurrent.futures.FIRST_COMPLETED
      )
      for future in done:
        unit = in_flight.pop(future)
        for (i, record), outcome in zip(unit, future.result()):
          preempted = settle(i, record, outcome) or preempted
  return preempted or stop.requested


def _tables_when_settled(
    records: list[Record[RunT]], finished, workdir, write_tables, share: placement.Share
) -> None:
  """Several hosts: writes the tables when every run is settled (finished, or failed on some host).

  The host that settles the last run sees every other run settled and writes; the others leave the
  tables to it. Two hosts that finish together may both write: each reads the run directories
  again after writing and writes once more if they changed meanwhile, so the last write holds all.
  """
  seen = None
  while True:
    state = []
    for record in records:
      if record.status in ('done', 'skipped') or record.status.startswith('failed'):
        state.append(record.status)
        continue
      previous = finished(record.run)
      if previous is not None:
        _mark_skipped(record, previous, workdir(record.run))
      else:
        status = read_run_info(workdir(record.run)).get('status', 'pending')
        if status.startswith('failed'):
          record.status = status
      state.append(record.status)
    unsettled = sum(s == 'pending' for s in state)
    if unsettled:
      logging.info(
          'Host %d of %d is done; %d runs of other hosts are not yet settled: the host '
          'that settles the last one writes the tables.',
          share.index,
          share.count,
          unsettled,
      )
      return
    if state == seen:
      return
    write_tables()
    seen = state
