"""Benchmark: a suite of methods × classes × seeds at one step budget, with baselines, tabulated.

  python -m ganomaly_jax.experiments.benchmark --suite=digits --workdir=runs/bench_digits
  python -m ganomaly_jax.experiments.benchmark --suite=digits --workdir=runs/bench_digits --dry_run
  python -m ganomaly_jax.experiments.benchmark --suite=folder_categories:/data/mvtec --workdir=runs/mvtec
  python -m ganomaly_jax.experiments.benchmark --suite=textures --workdir=runs/textures

Suites are files in configs/suites/ (`--suite=NAME[:ARG]`, or a path to a suite file; see
`suites`). Every run trains through the normal path (`train.train_and_evaluate`, in this process,
as `ganomaly_jax.experiments.sweep` does) in `WORKDIR/runs/<class>/<method>/seed-<seed>`; baselines (PCA, k-NN)
are evaluated on the same splits (`baselines`). A run whose workdir holds final results is skipped
(sweep's rule), an interrupted one resumes from its checkpoint, and a failed one is recorded and
retried next time, so rerunning the same command continues a suite. After every run
`WORKDIR/results.csv`, `results.md` and `results.png` are rewritten (`tables`). A row that
re-evaluates another (`<method>+auto`: eval.readout=auto, `suites.Method.reevaluates`) trains
nothing: once its base run has finished it evaluates that run's selected checkpoint again
(`rescore.rescore_run`), so both rows describe the same checkpoints.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import subprocess
import sys
import time
from typing import Any, Callable

from absl import app, flags, logging
import ml_collections

from ganomaly_jax import rundir
from ganomaly_jax.experiments import suites, sweep, tables

_SUITE = flags.DEFINE_string('suite', None, 'Suite: NAME[:ARG] of configs/suites/, or a file path.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Benchmark root: runs/, data/ and the tables.')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'List the runs (one line each) and run nothing.')

TrainFn = Callable[[ml_collections.ConfigDict, str], dict[str, Any]]


@dataclasses.dataclass
class Record:
  """One run's row: status (pending | done | skipped | preempted | failed: <reason>) and results."""
  run: suites.BenchRun
  status: str = 'pending'
  results: dict[str, Any] | None = None
  wall_time_s: float | None = None
  commit: str | None = None

  def row(self, suite: str) -> dict[str, Any]:
    r = self.results or {}
    return {'suite': suite, 'method': self.run.method.name, 'class': self.run.cls,
            'seed': self.run.seed, 'status': self.status,
            **{k: r.get(k) for k in tables.METRICS}, 'steps': r.get('steps'),
            'readout': tables.readout_label(r),
            'wall_time_s': None if self.wall_time_s is None else round(self.wall_time_s, 1),
            'commit': self.commit, 'workdir': self.run.workdir}


def commit() -> str:
  """The repository's short commit, `+dirty` with uncommitted changes; `unknown` outside git."""
  repo = os.path.dirname(suites.CONFIGS_DIR)
  try:
    head = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=repo, capture_output=True,
                          text=True, timeout=10, check=True).stdout.strip()
    dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], cwd=repo,
                           capture_output=True, text=True, timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return 'unknown'
  return f'{head}+dirty' if dirty else head


def describe(run: suites.BenchRun) -> str:
  """One line per run: the `ganomaly_jax.main` command that trains it alone, the baseline, or the
  run whose checkpoint it evaluates again."""
  settings = ' '.join(shlex.quote(f'--config.{k}={v}') for k, v in run.overrides.items())
  if run.method.reevaluates:
    variant = ','.join(f'{k}={v}' for k, v in run.variant.items())
    return f'{run.name}: re-evaluates {run.base_workdir} with eval {variant} (nothing trained)'
  if run.method.baseline:
    return (f'{run.name}: baseline {run.method.baseline} on the splits of '
            f'--config={run.method.config} {settings}')
  return (f'{run.name}: python -m ganomaly_jax.main --config={shlex.quote(run.method.config)} '
          f'--workdir={shlex.quote(run.workdir)} {settings}')


def _finished(run: suites.BenchRun) -> dict[str, Any] | None:
  """Final results of a run that needs nothing more, else None (trained runs: sweep's rule)."""
  if run.method.baseline:
    previous = rundir.read_results(run.workdir)
    return previous if previous and previous.get('baseline') == run.method.baseline else None
  if run.method.reevaluates:
    base = sweep.finished_results(run.config, run.base_workdir)
    previous = rundir.read_results(run.workdir)
    # Still the evaluation of the base run's selected checkpoint with this row's eval keys.
    same = (base is not None and previous is not None
            and previous.get('rescored_from') == run.base_workdir
            and previous.get('variant') == run.variant
            and all(previous.get(k) == base.get(k) for k in ('steps', 'selected_step')))
    return previous if same else None
  return sweep.finished_results(run.config, run.workdir)


def _run_reevaluation(run: suites.BenchRun) -> dict[str, Any]:
  """Evaluates the base run's selected checkpoint again with the row's eval keys (rescore)."""
  import jax

  from ganomaly_jax.experiments import rescore

  if sweep.finished_results(run.config, run.base_workdir) is None:
    raise ValueError(f'{run.base_workdir} has not finished: no checkpoint to re-evaluate.')
  try:
    results = {**rescore.rescore_run(run.base_workdir, run.variant, run.workdir),
               'variant': run.variant}
  finally:
    jax.clear_caches()  # as after a trained run: drop this evaluation's executables
  rundir.write_json(rundir.path(run.workdir, rundir.RESULTS), results)
  return results


def _run_baseline(run: suites.BenchRun) -> dict[str, Any]:
  from ganomaly_jax.experiments import baselines

  results = baselines.evaluate(run.method.baseline, run.config)
  rundir.path(run.workdir).mkdir(parents=True, exist_ok=True)
  rundir.write_json(rundir.path(run.workdir, rundir.RESULTS), results)
  return results


def run_benchmark(suite: suites.Suite, root: str, train_fn: TrainFn | None = None
                  ) -> list[Record]:
  """Expands and validates every run, prepares generated data, then runs the unfinished runs.

  `train_fn(config, workdir)` defaults to `sweep.train_in_process`. A failed run (divergence, bad
  data) is recorded and the suite goes on; a preempted run stops it (rerun to resume). Returns one
  Record per run; the tables in `root` hold the same.
  """
  from ganomaly_jax import train  # imports TensorFlow (clu): not needed to expand or --dry_run

  runs = suites.expand(suite, root)
  train_fn = train_fn or sweep.train_in_process
  rundir.path(root).mkdir(parents=True, exist_ok=True)
  if suite.prepare is not None:
    suite.prepare(os.path.join(root, 'data'))
  here = commit()
  title = f'Benchmark `{suite.name}`'
  notes = [suite.doc] if suite.doc else []
  records = [Record(run) for run in runs]

  def write_tables() -> None:
    rows = [r.row(suite.name) for r in records]
    tables.write_csv(root, rows)
    tables.write_markdown(root, rows, title, notes)
    tables.write_plot(root, rows, title)

  for record in records:  # finished runs first, so the first table already shows them
    previous = _finished(record.run)
    if previous is not None:
      info = sweep.read_run_info(record.run.workdir)
      record.status, record.results, record.commit = 'skipped', previous, info.get('commit')
      record.wall_time_s = sweep.recorded_wall_time(record.run.workdir, previous)
  write_tables()

  for i, record in enumerate(records, start=1):
    run = record.run
    if record.status == 'skipped':
      continue
    logging.info('Run %d/%d %s', i, len(records), run.name)
    started = time.time()
    try:
      if run.method.baseline:
        results = _run_baseline(run)
      elif run.method.reevaluates:
        results = _run_reevaluation(run)
      else:
        results = train_fn(run.config, run.workdir)
    except (ValueError, train.TrainingError) as e:
      record.status = f'failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}'
      logging.error('Run %s failed: %s', run.name, e)
    else:
      record.results = results
      if results.get('preempted'):
        record.status = 'preempted'
        write_tables()
        logging.warning('Preempted during run %s; rerun the same command to resume the suite.',
                        run.name)
        return records
      record.status, record.commit = 'done', here
      record.wall_time_s = time.time() - started
      sweep.write_run_info(run.workdir, {'overrides': run.overrides, 'wall_time_s':
                                         record.wall_time_s, 'commit': here, 'suite': suite.name})
    write_tables()
  return records


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  root = _WORKDIR.value
  try:
    suite = suites.load_suite(_SUITE.value)
    if _DRY_RUN.value:
      runs = suites.expand(suite, root)
      for run in runs:
        print(describe(run))
      baseline = sum(1 for r in runs if r.method.baseline)
      again = sum(1 for r in runs if r.method.reevaluates)
      print(f'{len(runs)} runs: {len(runs) - baseline - again} trained at {suite.steps} steps, '
            f'{baseline} baseline, {again} re-evaluated; {len(suite.methods)} methods × '
            f'{len(suite.classes)} classes × {len(suite.seeds)} seeds.')
      return
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    import tensorflow as tf  # as in main.py: clu's summary writer needs TF, keep it off GPUs
    tf.config.experimental.set_visible_devices([], 'GPU')
    from ganomaly_jax import compile_cache  # runs of one method share their programs: load them

    config = suites.expand(suite, root)[0].config
    compile_cache.enable(config.runtime.compile_cache_dir)
    records = run_benchmark(suite, root)
  except ValueError as e:  # unknown suite, bad argument, unknown key, impossible value: one line
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  print(rundir.path(root, tables.RESULTS_MD).read_text(), end='')
  failed = [r.run.name for r in records if r.status.startswith('failed')]
  if failed:
    print(f'error: {len(failed)} run(s) failed: {", ".join(failed)} '
          f'(see {tables.RESULTS_CSV})', file=sys.stderr)
    sys.exit(1)


if __name__ == '__main__':
  flags.mark_flags_as_required(['suite', 'workdir'])
  app.run(main)
