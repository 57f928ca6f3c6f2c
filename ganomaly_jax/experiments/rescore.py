"""Re-scores a benchmark's finished runs with other image scores and maps, from the same checkpoints.

  python -m ganomaly_jax.experiments.rescore --root=runs/bench_digits --method=grid_mask \
      --scores=map_max,map_mean,map_topk,inpaint --out=runs/rescore_digits
  python -m ganomaly_jax.experiments.rescore --root=runs/bench_textures --method=grid_mask --out=runs/rescore_tex \
      --variant=score=map_max --variant=map=l1,score=map_max --variant=map=l1,smooth_sigma=2
  python -m ganomaly_jax.experiments.rescore --root=runs/bench_textures --method=grid_mask --out=runs/rescore_tex \
      --variant=readout=auto

Nothing is retrained: each finished run of METHOD under ROOT/runs/<class>/METHOD/seed-<s> has its
selected checkpoint (the one its results.json reports) evaluated again on the same test split with
each variant of its `eval` section -- `--scores=a,b` is `--variant=score=a --variant=score=b`; a
variant sets only eval.* keys (score, map, smooth_sigma, topk_fraction, readout, ...) -- exactly as
the run's final evaluation does (`readout.choose`, `evaluator.evaluate_and_report`; the threshold
again from the validation normals). A variant naming a score or map reads out with it
(eval.readout=published); `readout=auto` chooses without test labels (evaluation/readout.py). The
run's own settings reproduce its results. OUT/results.csv and OUT/results.md (rows `METHOD[variant]`,
the benchmark's table format) collect them; each evaluation's results.json (and its pictures, where
the run drew them: suites do not unless asked, `eval.pictures`) go to
OUT/runs/<variant>/<class>/seed-<s>, and a finished one is not evaluated again.

This is post hoc: the table shows how the scores compare on *test* labels, so a score picked from it
is tuned on test labels and must be reported as such (docs/results.md).
"""

from __future__ import annotations

import os
from typing import Any, Iterator

from absl import app, flags, logging

_ROOT = flags.DEFINE_string('root', None, 'Benchmark workdir (holds runs/<class>/<method>/seed-N).')
_METHOD = flags.DEFINE_string('method', None, 'Method name of the benchmark rows to re-score.')
_SCORES = flags.DEFINE_list('scores', [], 'eval.score values (scores.SCORES) to evaluate.')
_VARIANTS = flags.DEFINE_multi_string(
    'variant', [], 'One evaluation: comma-separated eval keys, e.g. map=l1,score=map_mean.'
)
_OUT = flags.DEFINE_string('out', None, 'Output folder for the re-scored results and tables.')


def finished_runs(root: str, method: str) -> Iterator[tuple[str, int, str]]:
  """(class, seed, workdir) of every run of `method` under root/runs that has results.json."""
  from ganomaly_jax.runtime import rundir

  runs = rundir.path(root, 'runs')
  if not runs.is_dir():
    return
  for cls_dir in sorted(runs.iterdir()):
    method_dir = cls_dir / method
    if not method_dir.is_dir():
      continue
    for seed_dir in sorted(method_dir.glob('seed-*')):
      if (seed_dir / rundir.RESULTS).is_file():
        yield cls_dir.name, int(seed_dir.name.removeprefix('seed-')), str(seed_dir)


def parse_variant(text: str) -> dict[str, str]:
  """`map=l1,score=map_mean` -> {'map': 'l1', 'score': 'map_mean'} (keys of the eval section).

  `arguments.parse_arg` with values kept as strings: `rescore_run` converts each to its key's type.
  """
  from ganomaly_jax.config import arguments

  parsed = arguments.parse_arg(text, literals=False)
  if any(value is True or not key for key, value in parsed.items()):  # a bare item, or `=value`
    raise ValueError(f'--variant={text!r}: expected KEY=VALUE pairs of the eval section.')
  variant = {key.removeprefix('eval.'): value for key, value in parsed.items()}
  if not variant:
    raise ValueError('--variant needs at least one KEY=VALUE.')
  return variant


def variant_name(variant: dict[str, str]) -> str:
  """{'score': 'map_mean'} -> 'map_mean'; several keys -> 'map=l1,score=map_mean'."""
  if list(variant) == ['score']:
    return variant['score']
  return ','.join(f'{k}={v}' for k, v in sorted(variant.items()))


def rescore_run(workdir: str, variant: dict[str, str], out_dir: str) -> dict[str, Any]:
  """Evaluates the run's selected checkpoint with its eval section changed by `variant`; returns
  the results (its pictures go to out_dir)."""
  import jax

  from ganomaly_jax import programs
  from ganomaly_jax.config import checks
  from ganomaly_jax.inference import finished_run
  from ganomaly_jax.runtime import parallel, summaries
  from ganomaly_jax.evaluation import evaluator, readout
  from ganomaly_jax.data import sources

  config, original = finished_run.load_run(workdir)
  for key, value in variant.items():
    if key not in config.eval:
      raise ValueError(f'eval.{key} is not a key of the eval section.')
    current = config.eval[key]
    if isinstance(current, bool):
      value = value.lower() in ('1', 'true', 'yes')
    elif isinstance(current, (int, float)):
      value = type(current)(value)
    config.eval[key] = value
  if {'score', 'map'} & set(variant) and 'readout' not in variant:
    config.eval.readout = 'published'  # the variant names the read-out: evaluate that one
  config = checks.finished(config)
  # The checkpoint evaluator.final_evaluation selected: the best by validation loss, else the last.
  which = 'best' if config.eval.select == 'val_loss' else 'latest'
  components, state, step, _ = finished_run.restore_state(config, workdir, which)
  if step != original.get('selected_step', step):
    raise ValueError(
        f'{workdir}: restored step {step}, but its results were computed at step '
        f'{original["selected_step"]}.'
    )
  mesh = parallel.make_mesh()
  state = jax.device_put(state, parallel.replicated(mesh))
  progs = programs.build(config, mesh, components)
  splits = sources.load_splits(config)
  run_info = {
      k: original[k]
      for k in ('method', 'dataset', 'abnormal', 'steps', 'selected_step')
      if k in original
  }
  writer = summaries.LogWriter()  # a re-evaluation logs its metrics; its results.json keeps them
  chosen = readout.choose(config, state, progs, splits, mesh)
  results = evaluator.evaluate_and_report(
      chosen,
      progs.components,
      state,
      splits,
      mesh,
      evaluator.Report(out_dir, writer, curves_of=workdir),
      {**run_info, 'rescored_from': workdir, 'readout': chosen.record},
  )
  return results


def rescore(
    root: str, method: str, variants: list[dict[str, str]], out: str
) -> list[dict[str, Any]]:
  """Every finished run of `method` × every variant: the rows of OUT/results.csv (written too)."""
  from ganomaly_jax.runtime import rundir
  from ganomaly_jax.experiments import tables

  rows = []
  for cls, seed, workdir in finished_runs(root, method):
    for variant in variants:
      name = variant_name(variant)
      out_dir = str(rundir.path(out, 'runs', name, cls, f'seed-{seed}'))
      results = rundir.read_results(out_dir)
      if results is None or results.get('variant') != variant:
        logging.info('Re-scoring %s with %s', workdir, name)
        results = {**rescore_run(workdir, variant, out_dir), 'variant': variant}
        rundir.write_json(rundir.path(out_dir, rundir.RESULTS), results)
      rows.append(
          {
              'suite': f'rescore:{os.path.basename(os.path.normpath(root))}',
              'method': f'{method}[{name}]',
              'class': cls,
              'seed': seed,
              'status': 'done',
              **{k: results.get(k) for k in tables.METRICS},
              'steps': results.get('steps'),
              'readout': tables.readout_label(results),
              'workdir': out_dir,
          }
      )
  if not rows:
    raise ValueError(f'No finished run of {method!r} under {root}/runs/<class>/{method}/.')
  tables.write_csv(out, rows)
  tables.write_markdown(
      out,
      rows,
      f'Post-hoc scores of {method} ({root})',
      notes=[
          f'The same checkpoints evaluated with eval settings '
          f'{"; ".join(variant_name(v) for v in variants)} (ganomaly_jax/experiments/rescore.py). Post hoc: a '
          'setting picked from this table is picked on test labels.'
      ],
  )
  return rows


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  from ganomaly_jax.runtime import cli, startup

  startup.configure_process()  # before JAX starts its backend
  try:
    variants = [{'score': s} for s in _SCORES.value] + [parse_variant(v) for v in _VARIANTS.value]
    if not variants:
      raise ValueError('Give --scores and/or --variant.')
    rows = rescore(_ROOT.value, _METHOD.value, variants, _OUT.value)
  except ValueError as e:  # no finished run, a bad variant, a run that cannot be restored: one line
    cli.exit_with_error(str(e))
  print(f'{len(rows)} evaluations; tables in {_OUT.value}/results.md')


if __name__ == '__main__':
  flags.mark_flags_as_required(['root', 'method', 'out'])
  app.run(main)
