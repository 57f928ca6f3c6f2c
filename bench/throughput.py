"""Throughput of the training step (G + D update) and of inference (scores only).

  python bench/throughput.py            # table
  python bench/throughput.py --json     # one JSON line per case
  python bench/throughput.py --cases=ganomaly-32x32x1 --reps=5

Each case runs in its own subprocess so that compile time and peak RSS belong to that case alone.
Images/s is the median over `--reps` timed repetitions of `--steps` steps each, after warm-up; the
batch lives on the device already (the input pipeline is measured separately by the `data` mode).
Models have the study's widths (ngf = ndf = 64, latent 100), not the half-width digits preset.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# name -> (config file, isize, channels, batch)
CASES = {
    'ganomaly-32x32x1': ('ganomaly', 32, 1, 64),
    'ganomaly-32x32x3': ('ganomaly', 32, 3, 64),
    'ganomaly-64x64x3': ('ganomaly', 64, 3, 64),
    'skip_ganomaly-32x32x3': ('skip_ganomaly', 32, 3, 64),
    'masked-32x32x3': ('masked', 32, 3, 64),
    'grid_mask-32x32x3': ('grid_mask', 32, 3, 64),
    'riad-32x32x3': ('riad', 32, 3, 64),
}
MODES = ('train', 'infer', 'data')


def bench_config(method: str, isize: int, channels: int, batch: int, extra: list[str]):
  from ganomaly_jax.config import arguments

  config = arguments.load_config(os.path.join(REPO, 'configs', f'{method}.py'))
  config.unlock()
  config.model.isize, config.model.channels = isize, channels
  config.model.ngf = config.model.ndf = 64
  config.model.latent_dim = 100
  config.train.batch_size = config.eval.batch_size = batch
  for item in extra:  # key=value overrides, e.g. runtime.cpu_kernels=off
    key, value = item.split('=', 1)
    node = config
    *parents, leaf = key.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = type(node[leaf])(value) if not isinstance(node[leaf], bool) else value == 'True'
  config.lock()
  return config


def _flops(compiled) -> float:
  """XLA's FLOP count of a compiled program (its cost analysis; a dict, or a list of one)."""
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost.get('flops', float('nan')))


def compiled_step(name: str, mode: str, extra: list[str] = ()):
  """One case's compiled step on one device, for the profiling scripts (not for peak RSS).

  Returns (step, state, compiled, batch size), where step(state, i) -> (state, output) runs the
  training step with random key i (donating the state) or the evaluation step.
  """
  import jax
  import numpy as np

  from ganomaly_jax import programs
  from ganomaly_jax.runtime import parallel

  method, isize, channels, batch = CASES[name]
  config = bench_config(method, isize, channels, batch, list(extra))
  mesh = parallel.make_mesh(jax.devices()[:1])
  progs = programs.build(config, mesh)
  state = progs.init(jax.random.key(0))
  images = np.random.default_rng(0).uniform(-1, 1, (batch, isize, isize, channels))
  batch_arr = {'image': jax.device_put(images.astype(np.float32), parallel.batch_sharding(mesh))}
  if mode == 'train':
    compiled = progs.train_step.lower(state, batch_arr, jax.random.key(1)).compile()
    step = lambda s, i: compiled(s, batch_arr, jax.random.key(i))
  else:
    compiled = progs.eval_step.lower(state, batch_arr).compile()
    step = lambda s, i: (s, compiled(s, batch_arr))
  return step, state, compiled, batch


def run_case(
    name: str, mode: str, steps: int, reps: int, extra: list[str], cache_dir: str = ''
) -> dict:
  """Runs one case in this process and returns its measurements.

  With cache_dir, JAX's persistent compilation cache is on (as `main` has it by default), so a
  second run of the same case loads its programs instead of compiling them.
  """
  import jax
  import numpy as np

  from ganomaly_jax import programs
  from ganomaly_jax.runtime import compile_cache, parallel
  from ganomaly_jax.cpu import host_memory

  if cache_dir:
    compile_cache.enable(cache_dir, min_compile_s=0.0)

  method, isize, channels, batch = CASES[name]
  config = bench_config(method, isize, channels, batch, extra)
  result = {
      'method': method,
      'size': isize,
      'channels': channels,
      'batch': batch,
      'mode': mode,
      'backend': jax.default_backend(),
      'dtype': config.runtime.dtype,
      'cpu_kernels': config.runtime.cpu_kernels,
  }

  if mode == 'data':
    # Input pipeline alone: digits resized to the case's size, augmentation on.
    config.unlock()
    config.dataset.flip, config.dataset.zoom = True, 0.1
    from ganomaly_jax.data import pipeline, sources

    splits = sources.load_splits(config)
    it = pipeline.train_iterator(splits.train, batch_size=batch, seed=0, flip=True, zoom=0.1)
    next(it)
    times = []
    for _ in range(reps):
      t = time.perf_counter()
      for _ in range(steps):
        next(it)
      times.append(time.perf_counter() - t)
    result.update(img_per_s=batch * steps / statistics.median(times), compile_s=0.0)
  else:
    mesh = parallel.make_mesh()
    progs = programs.build(config, mesh)
    init, batch_sh = progs.init, parallel.batch_sharding(mesh)
    x = np.random.default_rng(0).uniform(-1, 1, (batch, isize, isize, channels)).astype(np.float32)
    batch_arr = {'image': jax.device_put(x, batch_sh)}
    if mode == 'train':
      fn = progs.train_step
      key = jax.random.key(1)
      # The order of train.train_and_evaluate: the step is compiled from shapes before the state
      # exists, and the compiler's scratch memory is handed back (peak RSS is measured).
      t = time.perf_counter()
      compiled = fn.lower(jax.eval_shape(init, jax.random.key(0)), batch_arr, key).compile()
      compile_s = time.perf_counter() - t
      host_memory.release_free_memory()
      state = init(jax.random.key(0))
      host_memory.release_free_memory()

      def run(state):
        for i in range(steps):
          state, metrics = compiled(state, batch_arr, jax.random.fold_in(key, i))
        jax.block_until_ready(metrics)
        return state

    else:
      state = init(jax.random.key(0))
      fn = progs.eval_step
      t = time.perf_counter()
      compiled = fn.lower(state, batch_arr).compile()
      compile_s = time.perf_counter() - t

      def run(state):
        for _ in range(steps):
          out = compiled(state, batch_arr)
        jax.block_until_ready(out)
        return state

    result['gflop_per_img'] = round(_flops(compiled) / batch / 1e9, 4)
    state = run(state)  # warm-up
    times = []
    for _ in range(reps):
      t = time.perf_counter()
      state = run(state)
      times.append(time.perf_counter() - t)
    result.update(img_per_s=batch * steps / statistics.median(times), compile_s=compile_s)
  result['peak_rss_mib'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  result['img_per_s'] = round(result['img_per_s'], 1)
  result['compile_s'] = round(result['compile_s'], 2)
  result['peak_rss_mib'] = round(result['peak_rss_mib'], 1)
  return result


def child_command(
    name: str, mode: str, steps: int, reps: int, compile_cache: str = '', overrides: list[str] = ()
) -> list[str]:
  """The command that measures one case of ours in a fresh process (see `run_case`)."""
  return [
      sys.executable,
      os.path.abspath(__file__),
      '--_child',
      name,
      mode,
      f'--steps={steps}',
      f'--reps={reps}',
      f'--compile_cache={compile_cache}',
      *(f'--set={s}' for s in overrides),
  ]


def run_child(cmd: list[str], env: dict[str, str] | None = None) -> dict:
  """Runs one benchmark subprocess; returns its last stdout line as JSON, or exits with its error."""
  env = dict(os.environ if env is None else env, TF_CPP_MIN_LOG_LEVEL='3')
  proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
  if proc.returncode:
    sys.exit(f'error: {" ".join(cmd[1:5])} failed:\n{proc.stderr[-2000:]}')
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--cases', default=','.join(CASES), help='comma-separated case names')
  parser.add_argument('--modes', default='train,infer', help=f'comma-separated, from {MODES}')
  parser.add_argument('--steps', type=int, default=5, help='steps per timed repetition')
  parser.add_argument('--reps', type=int, default=5, help='timed repetitions (median reported)')
  parser.add_argument('--json', action='store_true', help='one JSON line per case')
  parser.add_argument('--set', action='append', default=[], help='config override key=value')
  parser.add_argument(
      '--compile_cache',
      default='',
      help='persistent compilation cache directory; each case first runs once '
      'untimed to fill it, so the figures are those of a rerun (warm cache)',
  )
  parser.add_argument('--_child', nargs=2, help=argparse.SUPPRESS)
  args = parser.parse_args()
  from ganomaly_jax.cpu import xla_flags

  xla_flags.apply_cpu_defaults()  # as main does, before JAX starts (children inherit the env)
  if args._child:
    print(
        json.dumps(
            run_case(
                args._child[0], args._child[1], args.steps, args.reps, args.set, args.compile_cache
            )
        )
    )
    return

  rows = []
  for name in args.cases.split(','):
    if name not in CASES:
      sys.exit(f'error: unknown case {name!r}; known: {", ".join(CASES)}')
    for mode in args.modes.split(','):
      if args.compile_cache:  # fills the cache, untimed
        run_child(child_command(name, mode, 1, 1, args.compile_cache, args.set))
      row = run_child(
          child_command(name, mode, args.steps, args.reps, args.compile_cache, args.set)
      )
      rows.append(row)
      if args.json:
        print(json.dumps(row), flush=True)
  if not args.json:
    header = (
        f'{"method":<15}{"size":>9}{"batch":>7}{"mode":>7}{"img/s":>10}{"GFLOP/s":>9}'
        f'{"compile s":>11}{"peak RSS MiB":>14}'
    )
    print(header)
    for r in rows:
      size = f'{r["size"]}x{r["size"]}x{r["channels"]}'
      gflops = r['img_per_s'] * r.get('gflop_per_img', float('nan'))
      print(
          f'{r["method"]:<15}{size:>9}{r["batch"]:>7}{r["mode"]:>7}{r["img_per_s"]:>10.1f}'
          f'{gflops:>9.1f}{r["compile_s"]:>11.2f}{r["peak_rss_mib"]:>14.1f}'
      )


if __name__ == '__main__':
  main()
