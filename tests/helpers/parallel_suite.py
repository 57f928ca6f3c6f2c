"""Runs one micro suite several ways on fake CPU devices and writes what each gave (for
tests/test_parallel_queue.py). In a fresh process, since the device count is fixed when JAX starts:

  python tests/helpers/parallel_suite.py --devices=8 --out=/tmp/x

The suite is the tiny GANomaly on two classes × two seeds plus the PCA baseline. It runs
  parallel:   4 runs in flight, each on its own 2 devices (`--parallel=4`);
  shared:     as two hosts (`--share=0/2`, then `--share=1/2`), each with 4 runs in flight;
  alone:      each trained run by itself on a 2-device mesh, with no kept programs or data;
  sequential: one run at a time on all 8 devices;
and writes out/outcome.json: per way, each run's results (timings removed) and table rows, and
which host wrote the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, REPO)  # this checkout's package, not whichever one is installed
SUITE = f"""
import os
from ganomaly_jax.experiments import suites

CONFIGS = {os.path.join(REPO, 'configs')!r}
TINY = 'quick,model.ngf=4,model.ndf=4,batch=8,dataset.max_train=64,dataset.max_test=32,eval.batch_size=16'


def get_suite(arg=None):
  methods = [m for m in suites.standard_methods(TINY, CONFIGS) if m.name in ('ganomaly', 'pca')]
  return suites.Suite(name='micro', methods=methods, classes=['1', '2'], seeds=[0, 1], steps=2)
"""
TIMINGS = ('phase_seconds', 'train_wall_time_s', 'wall_time_s')
ROW_TIMINGS = ('wall_time_s', 'workdir', 'status')


def main(argv: list[str]) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--devices', type=int, default=8)
  parser.add_argument('--out', required=True)
  args = parser.parse_args(argv)

  import jax

  # Before anything touches the backend: the fake devices must exist when it starts.
  jax.config.update('jax_num_cpu_devices', args.devices)
  jax.config.update('jax_platforms', 'cpu')
  from ganomaly_jax import programs, train
  from ganomaly_jax.runtime import compile_cache
  from ganomaly_jax.data import sources
  from ganomaly_jax.experiments import benchmark, placement, run_queue, suites, tables

  os.makedirs(args.out, exist_ok=True)
  compile_cache.enable(os.path.join(args.out, 'xla'), min_compile_s=0.0)
  path = os.path.join(args.out, 'micro.py')
  with open(path, 'w') as f:
    f.write(SUITE)
  suite = suites.load_suite(path)

  def forget() -> None:
    programs.clear_cache()
    sources.clear_decoded()
    jax.clear_caches()

  def results_of(records) -> dict[str, dict]:
    return {
        r.run.name: {k: v for k, v in (r.results or {}).items() if k not in TIMINGS}
        for r in records
    }

  def rows_of(root: str) -> list[dict]:
    if not os.path.exists(os.path.join(root, tables.RESULTS_CSV)):
      return []
    return [{k: v for k, v in row.items() if k not in ROW_TIMINGS} for row in tables.read_csv(root)]

  used = {}

  def train_fn(config, workdir, devices=None):
    used[workdir] = [d.id for d in devices] if devices is not None else None
    return run_queue.train_in_process(config, workdir, devices)

  outcome = {'device_count': jax.device_count()}
  root = os.path.join(args.out, 'parallel')
  records = benchmark.run_benchmark(suite, root, train_fn=train_fn, workers=4)
  outcome['parallel'] = {
      'results': results_of(records),
      'rows': rows_of(root),
      'status': [r.status for r in records],
      'devices': {r.run.name: used.get(r.run.workdir) for r in records},
  }

  # The two hosts run the parallel way's runs on the same device groups, right after it: they keep
  # its programs (kept programs give bit-equal results: tests/test_program_cache.py), as the runs
  # of one suite do.
  root = os.path.join(args.out, 'shared')
  first = benchmark.run_benchmark(suite, root, workers=4, share=placement.Share(0, 2))
  rows_after_first = rows_of(root)
  second = benchmark.run_benchmark(suite, root, workers=4, share=placement.Share(1, 2))
  outcome['shared'] = {
      'ran': [
          [r.run.name for r in first if r.status == 'done'],
          [r.run.name for r in second if r.status == 'done'],
      ],
      'rows_after_first': rows_after_first,
      'rows': rows_of(root),
      'results': {
          **results_of([r for r in first if r.status == 'done']),
          **results_of([r for r in second if r.status == 'done']),
      },
  }

  alone = {}
  for record in records:
    if record.run.method.baseline:
      continue
    forget()
    results = train.train_and_evaluate(
        record.run.config,
        os.path.join(args.out, 'alone', record.run.name),
        devices=jax.devices()[:2],
    )
    alone[record.run.name] = {k: v for k, v in results.items() if k not in TIMINGS}
  outcome['alone'] = {'results': alone}

  forget()
  root = os.path.join(args.out, 'sequential')
  records = benchmark.run_benchmark(suite, root)
  outcome['sequential'] = {'results': results_of(records), 'rows': rows_of(root)}

  with open(os.path.join(args.out, 'outcome.json'), 'w') as f:
    json.dump(outcome, f, indent=1, sort_keys=True, default=str)


if __name__ == '__main__':
  main(sys.argv[1:])
