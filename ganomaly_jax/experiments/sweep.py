"""Sweeps: one config under a list of overrides, one workdir per run, results tabulated.

  python -m ganomaly_jax.experiments.sweep --config=configs/ganomaly_modified.py:quick \
      --sweep=configs/sweeps/ablation.py --workdir=/tmp/ablation
  python -m ganomaly_jax.experiments.sweep ... --dry_run      # print one `ganomaly_jax.main` command per run

A sweep file defines `get_sweep()` returning a list of dicts of dotted config overrides, e.g.
`[{}, {'train.soft_labels': False}]`; `get_sweep(config)` may take the loaded base config instead,
to adapt the runs to a preset. Every run's overrides are applied to the (locked) base config and
validated before the first run starts, so a typo in the last run fails in seconds, naming the key.

Each run trains in `ROOT/<run name>` (the name is built from its overrides: stable and
filesystem-safe, e.g. `train.soft_labels-False`; no overrides is `baseline`), sequentially, in this
process (`--parallel=N`: N at once, each on its own devices; `--share=I/N`: host I's part). A run
whose workdir already holds final results is skipped, and an interrupted run resumes from its
checkpoint, so rerunning the same command continues a sweep. `ROOT/results.csv` and
`ROOT/results.md` (one row per run) are rewritten as runs finish (at most every
`run_queue.TABLES_EVERY_S` seconds) and at the end.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import difflib
import hashlib
import inspect
import io
import os
import re
import shlex
from typing import Any

from absl import app, flags
import ml_collections

from ganomaly_jax.config import arguments, checks, schema
from ganomaly_jax.runtime import cli, rundir, startup
from ganomaly_jax.experiments import placement, run_queue

if (
    __name__ == '__main__'
):  # flags only for the program: ganomaly_jax.experiments.benchmark imports this module
  _CONFIG = flags.DEFINE_string(
      'config', None, 'Base config file[:args], as for ganomaly_jax.main.'
  )
  _SWEEP = flags.DEFINE_string('sweep', None, 'Sweep file defining get_sweep().')
  _WORKDIR = flags.DEFINE_string('workdir', None, 'Sweep root: one sub-directory per run.')
  _DRY_RUN = flags.DEFINE_bool('dry_run', False, 'Print one command per run and run nothing.')
  _PARALLEL, _SHARE, _STACK = placement.define_flags('sweep')

RESULTS_CSV = run_queue.RESULTS_CSV
RESULTS_MD = run_queue.RESULTS_MD
# image_f1 .. image_fpr: at the threshold fixed on validation normals; image_f1_oracle: the best F1
# over thresholds chosen with the test labels (an upper bound, never an operating point).
METRICS = (
    'image_auroc',
    'image_ap',
    'image_f1',
    'image_precision',
    'image_recall',
    'image_fpr',
    'image_f1_oracle',
)
COLUMNS = ('run', 'overrides', 'status') + METRICS + ('steps', 'wall_time_s')
_MAX_NAME = 120
_UNSAFE = re.compile(r'[^A-Za-z0-9._+-]')


class SweepError(ValueError):
  """A sweep file or an override that cannot work; the message names the run and the key."""


@dataclasses.dataclass
class Run:
  """One run of a sweep: its overrides, the config they give, and where it trains."""

  name: str
  overrides: dict[str, Any]
  config: ml_collections.ConfigDict
  workdir: str


Record = run_queue.Record  # run_queue.Record[Run]: one row of the results table


def table_row(record: Record) -> dict[str, Any]:
  """A sweep table's row of one run."""
  r = record.results or {}
  return {
      'run': record.run.name,
      'overrides': format_overrides(record.run.overrides),
      'status': record.status,
      **{k: r.get(k) for k in METRICS},
      'steps': r.get('steps'),
      'wall_time_s': None if record.wall_time_s is None else round(record.wall_time_s, 1),
  }


# ---------------------------------------------------------------------------------------------
# Expansion.
# ---------------------------------------------------------------------------------------------


def _value_text(value: Any) -> str:
  return str(value)


def format_overrides(overrides: dict[str, Any]) -> str:
  """`k=v k2=v2` in key order (empty for the baseline)."""
  return ' '.join(f'{k}={_value_text(v)}' for k, v in sorted(overrides.items()))


def _short_hash(text: str) -> str:
  return hashlib.sha1(text.encode()).hexdigest()[:8]


def run_name(overrides: dict[str, Any]) -> str:
  """A stable, filesystem-safe directory name for a run: `key-value` parts in key order joined by
  '+', e.g. {'train.soft_labels': False} -> 'train.soft_labels-False'; no overrides -> 'baseline'.

  Characters outside [A-Za-z0-9._+-] become '_'; since that could merge two different values (or
  the name could get too long), a hash of the exact overrides is then appended.
  """
  if not overrides:
    return 'baseline'
  exact = '+'.join(f'{k}-{_value_text(v)}' for k, v in sorted(overrides.items()))
  name = _UNSAFE.sub('_', exact)
  if name != exact or len(name) > _MAX_NAME:
    name = f'{name[:_MAX_NAME - 9]}_{_short_hash(exact)}'
  return name


def _get(config: ml_collections.ConfigDict, key: str) -> Any:
  node = config
  for part in key.split('.'):
    node = node[part]
  return node


def _leaf_keys(config: ml_collections.ConfigDict) -> list[str]:
  return list(schema.flatten(config.to_dict()))


def apply_overrides(
    config: ml_collections.ConfigDict, overrides: dict[str, Any], context: str = ''
) -> ml_collections.ConfigDict:
  """A locked copy of `config` with dotted `overrides` set; unknown keys and wrong types raise
  SweepError naming the key (and `context`, e.g. the run)."""
  where = f'{context}: ' if context else ''
  config = copy.deepcopy(config)
  for key, value in overrides.items():
    if not isinstance(key, str) or not key:
      raise SweepError(f'{where}override keys must be dotted config keys, got {key!r}.')
    *parents, leaf = key.split('.')
    node = config
    for part in parents:
      node = node[part] if isinstance(node, ml_collections.ConfigDict) and part in node else None
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
      close = difflib.get_close_matches(key, _leaf_keys(config), n=1)
      hint = f' (did you mean {close[0]!r}?)' if close else ''
      raise SweepError(f'{where}unknown config key {key!r}{hint}.')
    if isinstance(node[leaf], ml_collections.ConfigDict):
      raise SweepError(f'{where}{key!r} is a group of keys; override its leaves (e.g. {key}.x).')
    try:
      node[leaf] = value
    except TypeError:
      raise SweepError(
          f'{where}{key}={value!r} has the wrong type: {key} is '
          f'{type(node[leaf]).__name__} ({node[leaf]!r}).'
      ) from None
  return config


def load_sweep(path: str, config: ml_collections.ConfigDict) -> list[dict[str, Any]]:
  """Imports a sweep file and returns its list of override dicts (checked for shape)."""
  if not os.path.isfile(path):
    raise SweepError(f'Sweep file not found: {path}')
  get_sweep = getattr(arguments.import_file(path, '_ganomaly_sweep'), 'get_sweep', None)
  if not callable(get_sweep):
    raise SweepError(f'{path} must define get_sweep() returning a list of override dicts.')
  takes_config = bool(inspect.signature(get_sweep).parameters)
  runs = get_sweep(copy.deepcopy(config)) if takes_config else get_sweep()
  if not isinstance(runs, (list, tuple)) or not all(isinstance(r, dict) for r in runs):
    raise SweepError(f'{path}: get_sweep() must return a list of dicts, got {type(runs).__name__}.')
  if not runs:
    raise SweepError(f'{path}: get_sweep() returned no runs.')
  return [dict(r) for r in runs]


def expand(config_spec: str, sweep_path: str, root: str) -> list[Run]:
  """Loads the base config and the sweep, and builds and validates every run before any starts."""
  # Unfinished: a run's dataset override must still choose its dataset-dependent keys (AUTO).
  base = arguments.load_config(config_spec, finish=False)
  runs: list[Run] = []
  seen: dict[str, int] = {}
  for i, overrides in enumerate(load_sweep(sweep_path, base)):
    context = f'{sweep_path}, run {i} ({run_name(overrides)})'
    config = apply_overrides(base, overrides, context)
    try:
      config = checks.finished(config)  # resolved and validated once, here: the runs get it as is
    except ValueError as e:  # ConfigError, or an unknown dataset met while resolving
      raise SweepError(f'{context}: {e}') from None
    # Names and commands use the values as the config holds them (an int given for a float key is
    # a float), so `0` and `0.0` name the same run.
    overrides = {k: _get(config, k) for k in overrides}
    name = run_name(overrides)
    if name in seen:
      raise SweepError(f'{context}: the same overrides as run {seen[name]}.')
    seen[name] = i
    runs.append(Run(name, overrides, config, os.path.join(root, name)))
  return runs


def command(config_spec: str, run: Run) -> str:
  """The `ganomaly_jax.main` command line that trains `run` on its own (for a cluster queue)."""
  args = [
      'python',
      '-m',
      'ganomaly_jax.main',
      f'--config={config_spec}',
      f'--workdir={run.workdir}',
  ]
  args += [f'--config.{k}={_value_text(v)}' for k, v in sorted(run.overrides.items())]
  return ' '.join(shlex.quote(a) for a in args)


# ---------------------------------------------------------------------------------------------
# Tables.
# ---------------------------------------------------------------------------------------------


def _cell(column: str, value: Any) -> str:
  if value is None:
    return ''
  if column in METRICS:
    return f'{value:.4f}'
  if column == 'wall_time_s':
    return f'{value:.1f}'
  return str(value)


def write_tables(root: str, records: list[Record], title: str) -> None:
  """Rewrites ROOT/results.csv and ROOT/results.md (atomically, through epath: ROOT may be gs://)."""
  rows = [table_row(r) for r in records]
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, fieldnames=COLUMNS)
  writer.writeheader()
  writer.writerows({k: '' if v is None else v for k, v in row.items()} for row in rows)
  rundir.write_text(rundir.path(root, RESULTS_CSV), buffer.getvalue())
  lines = [
      f'# {title}',
      '',
      '| ' + ' | '.join(COLUMNS) + ' |',
      '|' + '|'.join('---' for _ in COLUMNS) + '|',
  ]
  for row in rows:
    cells = [_cell(c, row[c]) for c in COLUMNS]
    cells[1] = f'`{cells[1]}`' if cells[1] else '(none)'
    lines.append('| ' + ' | '.join(c.replace('|', '\\|') for c in cells) + ' |')
  rundir.write_text(rundir.path(root, RESULTS_MD), '\n'.join(lines) + '\n')


def read_table(root: str) -> list[dict[str, str]]:
  """The rows of ROOT/results.csv (strings, as written)."""
  return list(csv.DictReader(io.StringIO(rundir.path(root, RESULTS_CSV).read_text())))


# ---------------------------------------------------------------------------------------------
# Running.
# ---------------------------------------------------------------------------------------------


def run_sweep(
    config_spec: str,
    sweep_path: str,
    root: str,
    train_fn: run_queue.TrainFn | None = None,
    workers: int = 1,
    share: placement.Share = placement.Share(),
    stack: str | int = 1,
) -> list[Record]:
  """Expands and validates all runs, then trains the unfinished ones, `workers` at a time.

  `train_fn(config, workdir)` defaults to `train.train_and_evaluate` in this process; `share` is
  this host's part of the sweep; up to `stack` consecutive runs with one program (seeds, loss
  weights) train as one group (`placement.stack_size`). Skipping, failures and preemption follow
  `run_queue.run_all`.
  Returns one Record per run; the tables in `root` hold the same.
  """
  train_fn = train_fn or run_queue.train_in_process
  title = f'Sweep `{sweep_path}` over `{config_spec}`'
  records = [Record(run) for run in expand(config_spec, sweep_path, root)]
  from ganomaly_jax import programs  # imports JAX: only when runs start

  configs = [r.run.config for r in records if programs.group_key(r.run.config)]
  return run_queue.run_all(
      records,
      name=lambda run: run.name,
      workdir=lambda run: run.workdir,
      finished=lambda run: rundir.finished_results(run.workdir, run.config.train.num_steps),
      execute=lambda run, devices: run_queue.call_train(train_fn, run.config, run.workdir, devices),
      run_info=lambda run: {'overrides': run.overrides},
      write_tables=lambda: write_tables(root, records, title),
      what='sweep',
      timing_file=os.path.join(root, run_queue.TIMING_JSON),
      stack=lambda run: programs.group_key(run.config),
      stack_size=placement.stack_size(stack, configs),
      device_groups=placement.device_groups(workers),
      share=share,
  )


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  root = _WORKDIR.value
  try:
    if _DRY_RUN.value:
      for run in expand(_CONFIG.value, _SWEEP.value, root):
        print(command(_CONFIG.value, run))
      return
    share = placement.Share.parse(_SHARE.value)
    # Only the runtime section is read: the configs are finished in `expand`.
    startup.configure_for(arguments.load_config(_CONFIG.value, finish=False))  # before JAX starts
    placement.check_standalone(share)
    records = run_sweep(
        _CONFIG.value, _SWEEP.value, root, workers=_PARALLEL.value, share=share, stack=_STACK.value
    )
  except ValueError as e:  # bad sweep file, unknown key, impossible value: one line
    cli.exit_with_error(str(e))
  run_queue.report_session(root, records)


if __name__ == '__main__':
  flags.mark_flags_as_required(['config', 'sweep', 'workdir'])
  app.run(main)
