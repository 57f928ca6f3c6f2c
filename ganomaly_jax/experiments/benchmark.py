"""Benchmark: a suite of methods × classes × seeds at one step budget, with baselines, tabulated.

  python -m ganomaly_jax.experiments.benchmark --suite=digits --workdir=runs/bench_digits
  python -m ganomaly_jax.experiments.benchmark --suite=digits --workdir=runs/bench_digits --dry_run
  python -m ganomaly_jax.experiments.benchmark --suite=folder_categories:/data/mvtec --workdir=runs/mvtec
  python -m ganomaly_jax.experiments.benchmark --suite=textures --workdir=runs/textures
  python -m ganomaly_jax.experiments.benchmark --suite=digits --workdir=runs/d --parallel=4
  python -m ganomaly_jax.experiments.benchmark --suite=digits --workdir=gs://b/d --share=1/8

Suites are files in configs/suites/ (`--suite=NAME[:ARG]`, or a path to a suite file; see
`suites`). Every run trains through the normal path (`train.train_and_evaluate`, in this process,
as `ganomaly_jax.experiments.sweep` does) in `WORKDIR/runs/<class>/<method>/seed-<seed>`; baselines (PCA, k-NN)
are evaluated on the same splits (`baselines`). A run whose workdir holds final results is skipped
(sweep's rule), an interrupted one resumes from its checkpoint, and a failed one is recorded and
retried next time, so rerunning the same command continues a suite. `WORKDIR/results.csv`,
`results.md` and `results.png` are rewritten as runs finish (at most every
`run_queue.TABLES_EVERY_S` seconds) and at the end (`tables`). A row that re-evaluates another
(`<method>+auto`: eval.readout=auto, `suites.Method.reevaluates`) trains nothing: once its base run
has finished it evaluates that run's selected checkpoint again (`rescore.rescore_run`), so both rows
describe the same checkpoints.

`--parallel=N` keeps N runs in flight, each on its own 1/N of this host's devices (a single CPU
device is shared). `--share=I/N` runs host I's share of a suite that N hosts run at once, each as a
JAX process of its own with nothing between them but WORKDIR; the tables are then written once,
when every run is settled (`run_queue`). Where the time went is logged at the end and written to
`WORKDIR/timing.json`.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from typing import Any

from absl import app, flags

from ganomaly_jax.runtime import cli, rundir, startup
from ganomaly_jax.experiments import placement, run_queue, suites, tables

_SUITE = flags.DEFINE_string('suite', None, 'Suite: NAME[:ARG] of configs/suites/, or a file path.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Benchmark root: runs/, data/ and the tables.')
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'List the runs (one line each) and run nothing.')
_PARALLEL, _SHARE, _STACK = placement.define_flags('suite')

Record = run_queue.Record  # run_queue.Record[suites.BenchRun]


def table_row(record: Record, suite: str) -> dict[str, Any]:
  """A benchmark table's row of one run."""
  r = record.results or {}
  return {
      'suite': suite,
      'method': record.run.method.name,
      'class': record.run.cls,
      'seed': record.run.seed,
      'status': record.status,
      **{k: r.get(k) for k in tables.METRICS},
      'steps': r.get('steps'),
      tables.REFERENCE: (r.get('reference') or {}).get('image_auroc'),
      'readout': tables.readout_label(r),
      'wall_time_s': None if record.wall_time_s is None else round(record.wall_time_s, 1),
      'commit': record.commit,
      'workdir': record.run.workdir,
  }


def published_rows(suite: suites.Suite) -> list[dict[str, Any]]:
  """Table rows of the suite's published values (`Suite.published`), one per class and method,
  named `<method> (published: table|figure)`, the source under `readout`."""
  if suite.published is None:
    return []
  rows = []
  for cls in suite.classes:
    for method, value in suite.published(str(cls)).items():
      rows.append(
          {
              'suite': suite.name,
              'method': f'{method} (published: {value.kind})',
              'class': str(cls),
              'seed': '',
              'status': tables.PUBLISHED,
              'image_auroc': value.value,
              'readout': value.source,
          }
      )
  return rows


def commit() -> str:
  """The repository's short commit, `+dirty` with uncommitted changes; `unknown` outside git."""
  repo = os.path.dirname(suites.CONFIGS_DIR)
  try:
    head = subprocess.run(
        ['git', 'rev-parse', '--short', 'HEAD'],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout.strip()
    dirty = subprocess.run(
        ['git', 'status', '--porcelain', '--untracked-files=no'],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=10,
    ).stdout.strip()
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
    return (
        f'{run.name}: baseline {run.method.baseline} on the splits of '
        f'--config={run.method.config} {settings}'
    )
  return (
      f'{run.name}: python -m ganomaly_jax.main --config={shlex.quote(run.method.config)} '
      f'--workdir={shlex.quote(run.workdir)} {settings}'
  )


def _finished(run: suites.BenchRun) -> dict[str, Any] | None:
  """Final results of a run that needs nothing more, else None (trained runs: sweep's rule)."""
  if run.method.baseline:
    previous = rundir.read_results(run.workdir)
    return previous if previous and previous.get('baseline') == run.method.baseline else None
  if run.method.reevaluates:
    base = rundir.finished_results(run.base_workdir, run.config.train.num_steps)
    previous = rundir.read_results(run.workdir)
    # Still the evaluation of the base run's selected checkpoint with this row's eval keys.
    same = (
        base is not None
        and previous is not None
        and previous.get('rescored_from') == run.base_workdir
        and previous.get('variant') == run.variant
        and all(previous.get(k) == base.get(k) for k in ('steps', 'selected_step'))
    )
    return previous if same else None
  return rundir.finished_results(run.workdir, run.config.train.num_steps)


def _run_reevaluation(run: suites.BenchRun) -> dict[str, Any]:
  """Evaluates the base run's selected checkpoint again with the row's eval keys (rescore)."""
  from ganomaly_jax.experiments import rescore

  if rundir.finished_results(run.base_workdir, run.config.train.num_steps) is None:
    raise ValueError(f'{run.base_workdir} has not finished: no checkpoint to re-evaluate.')
  results = {
      **rescore.rescore_run(run.base_workdir, run.variant, run.workdir),
      'variant': run.variant,
  }
  rundir.write_json(rundir.path(run.workdir, rundir.RESULTS), results)
  return results


def _run_baseline(run: suites.BenchRun) -> dict[str, Any]:
  from ganomaly_jax.experiments import baselines

  results = baselines.evaluate(run.method.baseline, run.config)
  rundir.path(run.workdir).mkdir(parents=True, exist_ok=True)
  rundir.write_json(rundir.path(run.workdir, rundir.RESULTS), results)
  return results


def run_benchmark(
    suite: suites.Suite,
    root: str,
    train_fn: run_queue.TrainFn | None = None,
    workers: int = 1,
    share: placement.Share = placement.Share(),
    stack: str | int = 1,
) -> list[Record]:
  """Expands and validates every run, prepares generated data, then runs the unfinished runs.

  `train_fn(config, workdir)` defaults to `train.train_and_evaluate` in this process; baselines are
  evaluated on the same splits. A method's runs go one after another (they share its compiled
  programs); `workers` runs are in flight at once, each on its own devices; `share` is this host's
  part of the suite; up to `stack` runs of one method and class (its seeds) train as one group
  (`placement.stack_size`). Skipping, failures and preemption follow `run_queue.run_all`.
  Returns one Record per run; the tables in `root` hold the same.
  """
  runs = suites.expand(suite, root)
  train_fn = train_fn or run_queue.train_in_process
  rundir.path(root).mkdir(parents=True, exist_ok=True)
  if suite.prepare is not None:
    suite.prepare(os.path.join(root, 'data'))
  title = f'Benchmark `{suite.name}`'
  notes = [suite.doc] if suite.doc else []
  records = [Record(run) for run in runs]

  def write_tables() -> None:
    rows = [table_row(r, suite.name) for r in records] + published_rows(suite)
    tables.write_csv(root, rows)
    tables.write_markdown(root, rows, title, notes)
    tables.write_plot(root, rows, title)

  def execute(run: suites.BenchRun, devices) -> dict[str, Any]:
    if run.method.baseline:
      return _run_baseline(run)
    if run.method.reevaluates:  # after its method's runs: the queue runs a method's rows together
      return _run_reevaluation(run)
    return run_queue.call_train(train_fn, run.config, run.workdir, devices)

  return run_queue.run_all(
      records,
      name=lambda run: run.name,
      workdir=lambda run: run.workdir,
      finished=_finished,
      execute=execute,
      run_info=lambda run: {'overrides': run.overrides, 'suite': suite.name},
      write_tables=write_tables,
      commit=commit(),
      what='suite',
      timing_file=os.path.join(root, run_queue.TIMING_JSON),
      group=lambda run: run.method.name,
      stack=_stack_key,
      stack_size=placement.stack_size(stack, [r.config for r in runs if _stack_key(r)]),
      device_groups=placement.device_groups(workers),
      share=share,
  )


def _stack_key(run: suites.BenchRun) -> str | None:
  """Trained runs of one program may train as a group; baselines and re-evaluations train nothing."""
  if run.method.baseline or run.method.reevaluates:
    return None
  from ganomaly_jax import programs  # imports JAX: only when runs start

  return programs.group_key(run.config)


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
      budget = f'{suite.epochs} epochs' if suite.epochs else f'{suite.steps} steps'
      print(
          f'{len(runs)} runs: {len(runs) - baseline - again} trained at {budget}, '
          f'{baseline} baseline, {again} re-evaluated; {len(suite.methods)} methods × '
          f'{len(suite.classes)} classes × {len(suite.seeds)} seeds.'
      )
      return
    share = placement.Share.parse(_SHARE.value)
    startup.configure_for(suites.expand(suite, root)[0].config)  # before JAX starts its backend
    placement.check_standalone(share)
    records = run_benchmark(suite, root, workers=_PARALLEL.value, share=share, stack=_STACK.value)
  except ValueError as e:  # unknown suite, bad argument, unknown key, impossible value: one line
    cli.exit_with_error(str(e))
  run_queue.report_session(root, records)


if __name__ == '__main__':
  flags.mark_flags_as_required(['suite', 'workdir'])
  app.run(main)
