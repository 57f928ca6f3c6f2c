"""Seeds as one program: training steps per second of S runs one by one, as a group, and vmapped.

  python bench/stacked_seeds.py                                   # digits size (16 px, widths 16)
  python bench/stacked_seeds.py --isize=32 --width=64 --batch=64  # the study's widths at 32 px
  python bench/stacked_seeds.py --runs=1,2,4,8 --json             # on a GPU or TPU

For each S in --runs it times three ways of taking one training step of S runs of one method
(S states from S seeds, each its own batch and key):
- `one_by_one`: each run's own jitted step, one call after another (what S runs alone do);
- `group`: `programs.group_train_step`, one call for all S, as `runtime/step_group.py` runs them
  (on CPU one copy of the step per run, elsewhere the stacked step under `jax.vmap`);
- `vmapped`: the stacked step under `jax.vmap` on every platform (on CPU, XLA's grouped
  convolutions).
It prints runs x steps per second for each and the speed-up of `group` over `one_by_one`, after
--warmup untimed steps; the compile time of each program is printed beside it. Nothing else runs:
no data pipeline, no checkpoints (those are each run's own in a group too).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--method', default='ganomaly')
  parser.add_argument('--isize', type=int, default=16)
  parser.add_argument('--channels', type=int, default=1)
  parser.add_argument('--width', type=int, default=16, help='ngf = ndf')
  parser.add_argument('--batch', type=int, default=32)
  parser.add_argument('--runs', default='1,3', help='group sizes S, comma-separated')
  parser.add_argument('--steps', type=int, default=50, help='timed steps per way')
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--json', action='store_true', help='also one JSON line per row')
  return parser.parse_args()


def main() -> None:
  args = parse_args()
  from ganomaly_jax.config import arguments, checks
  from ganomaly_jax.runtime import startup

  spec = (
      f'{REPO}/configs/{args.method}.py:isize={args.isize},channels={args.channels},'
      f'batch={args.batch},model.ngf={args.width},model.ndf={args.width}'
  )
  config = arguments.load_config(spec, finish=False)
  startup.configure_for(config)  # the entry points' process set-up, before JAX starts
  import jax

  from ganomaly_jax import programs, step as step_lib
  from ganomaly_jax.cpu import kernels
  from ganomaly_jax.runtime import parallel

  config = checks.finished(config)
  mesh = parallel.make_mesh()
  progs = programs.build(config, mesh)
  shape = (args.batch, args.isize, args.isize, args.channels)
  single = kernels.with_cpu_kernels(
      functools.partial(
          step_lib.train_step, components=progs.components, step_config=progs.step_config
      ),
      mode=config.runtime.cpu_kernels,
  )
  device = jax.devices()[0]
  print(
      f'{device.platform} {device.device_kind}, {jax.device_count()} device(s); {args.method} '
      f'{args.isize}x{args.isize}x{args.channels}, widths {args.width}, batch {args.batch}'
  )
  header = f'{"runs":>4}  {"way":<10}  {"run-steps/s":>11}  {"ms/step":>8}  {"compile s":>9}'
  print(header)
  for runs in [int(r) for r in args.runs.split(',')]:
    rates = {}
    for name, step, states in _ways(config, progs, mesh, single, shape, runs):
      started = time.perf_counter()
      states = jax.block_until_ready(step(states))
      compile_s = time.perf_counter() - started
      for _ in range(args.warmup):
        states = step(states)
      jax.block_until_ready(states)
      started = time.perf_counter()
      for _ in range(args.steps):
        states = step(states)
      jax.block_until_ready(states)
      seconds = (time.perf_counter() - started) / args.steps
      rates[name] = runs / seconds
      print(
          f'{runs:>4}  {name:<10}  {rates[name]:>11.1f}  {seconds * 1e3:>8.2f}  {compile_s:>9.1f}'
      )
      if args.json:
        row = dict(runs=runs, way=name, run_steps_per_s=rates[name], ms_per_step=seconds * 1e3)
        row.update(compile_s=compile_s, platform=device.platform, device_kind=device.device_kind)
        print(json.dumps(row))
    print(f'{runs:>4}  group / one_by_one: {rates["group"] / rates["one_by_one"]:.2f}x')


def _ways(config, progs, mesh, single, shape, runs):
  """(name, step function of the S states, the S initial states) for the three ways."""
  import jax
  import jax.numpy as jnp

  from ganomaly_jax import programs

  images = [
      jax.random.uniform(jax.random.key(100 + i), shape, minval=-1, maxval=1) for i in range(runs)
  ]
  keys = [jax.random.key(200 + i) for i in range(runs)]
  stack = lambda trees: jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)
  fresh = lambda: [progs.init(jax.random.key(i)) for i in range(runs)]
  group = programs.group_train_step(config, progs, mesh, runs)
  vmapped_step = jax.jit(jax.vmap(single), donate_argnums=0)

  def one_by_one(states):
    return [progs.train_step(s, {'image': x}, k)[0] for s, x, k in zip(states, images, keys)]

  def grouped(states):
    return list(group(tuple(states), tuple({'image': x} for x in images), tuple(keys))[0])

  def vmapped(states):
    return vmapped_step(states, {'image': jnp.stack(images)}, stack(keys))[0]

  yield 'one_by_one', one_by_one, fresh()
  yield 'group', grouped, fresh()
  yield 'vmapped', vmapped, stack(fresh())


if __name__ == '__main__':
  main()
