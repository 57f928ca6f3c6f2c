"""Speed of light of our step: its convolutions and matmuls alone, and what that allows against PyTorch.

  python bench/conv_bound.py                                # every case, train and infer, with torch
  python bench/conv_bound.py --cases=ganomaly-32x32x1 --modes=infer --no_torch

For each case this compiles our step, times it, then lists every convolution and dot in the
optimised program and times each one alone (same shapes, windows and layouts, XLA:CPU's kernels,
warm inputs). Their sum is a lower bound on the step's time with these kernels: the step could not
run faster even if every other op (BatchNorm, activations, layout copies, Adam, the update guard)
took no time at all. With PyTorch installed it also times the reference step (compare_torch.py) in
the same invocation, right after ours, and prints `max ratio`: the ratio ours/torch at that bound.
Every figure is the best of its repetitions: on a shared machine interference only slows a run.
"""

import argparse
import collections
import json
import os
import re
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import throughput  # noqa: E402  (the case list and the benchmark configs)

_SHAPE = r'f32\[([\d,]*)\]'
_CONV = re.compile(rf'= {_SHAPE}\{{[^}}]*\}} convolution\(%?([\w.\-]+), %?([\w.\-]+)\), (.*)')
_DOT = re.compile(rf'= {_SHAPE}\{{[^}}]*\}} dot\(%?([\w.\-]+), %?([\w.\-]+)\), (.*)')


def _dims(text: str) -> tuple[int, ...]:
  return tuple(int(v) for v in text.split(',')) if text else ()


def _ints(attrs: str, key: str) -> tuple[int, ...]:
  m = re.search(rf'{key}=\{{([\d,]*)\}}', attrs)
  return _dims(m.group(1)) if m else ()


def _conv_fn(attrs: str):
  """The lax call that repeats an HLO convolution, from its window and dim_labels attributes."""
  from jax import lax

  window = dict(re.findall(r'(\w+)=(\S+)', re.search(r'window=\{([^}]*)\}', attrs).group(1)))
  labels = re.search(r'dim_labels=([\w>_-]+)', attrs).group(1)
  lhs, rest = labels.split('_', 1)
  rhs, out = rest.split('->')
  nsp = len(lhs) - 2
  pick = lambda key, default: [
      int(v) for v in window.get(key, 'x'.join([default] * nsp)).split('x')
  ]
  pads = [
      tuple(int(p) for p in q.split('_'))
      for q in window.get('pad', 'x'.join(['0_0'] * nsp)).split('x')
  ]
  act = {'b': 'N', 'f': 'C', '0': 'H', '1': 'W', '2': 'D'}
  ker = {'o': 'O', 'i': 'I', '0': 'H', '1': 'W', '2': 'D'}
  numbers = (
      ''.join(act[c] for c in lhs),
      ''.join(ker[c] for c in rhs),
      ''.join(act[c] for c in out),
  )
  groups = re.search(r'feature_group_count=(\d+)', attrs)
  batch_groups = re.search(r'batch_group_count=(\d+)', attrs)
  # Spatial kernel dims that HLO reverses (unoptimised programs keep them; XLA folds them away).
  reversed_dims = [rhs.index(str(d)) for d, r in enumerate(pick('rhs_reversal', '0')) if r]
  return lambda a, b: lax.conv_general_dilated(
      a,
      lax.rev(b, reversed_dims) if reversed_dims else b,
      pick('stride', '1'),
      pads,
      pick('lhs_dilate', '1'),
      pick('rhs_dilate', '1'),
      numbers,
      feature_group_count=int(groups.group(1)) if groups else 1,
      batch_group_count=int(batch_groups.group(1)) if batch_groups else 1,
  )


def _dot_fn(attrs: str):
  from jax import lax

  numbers = (
      (_ints(attrs, 'lhs_contracting_dims'), _ints(attrs, 'rhs_contracting_dims')),
      (_ints(attrs, 'lhs_batch_dims'), _ints(attrs, 'rhs_batch_dims')),
  )
  return lambda a, b: lax.dot_general(a, b, numbers)


def rebuild(kind: str, attrs: str):
  """A function of (lhs, rhs) that computes what an HLO `convolution` or `dot` with attrs does."""
  return _conv_fn(attrs) if kind == 'conv' else _dot_fn(attrs)


def kernel_ops(hlo_text: str) -> collections.Counter:
  """{(kind, out shape, lhs shape, rhs shape, attributes): count} of the f32 convs and dots in HLO.

  Shapes are comma-separated dimension strings as HLO prints them ('64,8,8,128').
  """
  shapes = dict(re.findall(rf'%([\w.\-]+) = {_SHAPE}', hlo_text))
  ops = collections.Counter()
  for line in hlo_text.splitlines():
    for kind, pattern in (('conv', _CONV), ('dot', _DOT)):
      m = pattern.search(line)
      if m and m.group(2) in shapes and m.group(3) in shapes:
        attrs = m.group(4).split(', metadata=')[0]
        ops[(kind, m.group(1), shapes[m.group(2)], shapes[m.group(3)], attrs)] += 1
  return ops


def time_alone(
    kind: str, out: str, lhs: str, rhs: str, attrs: str, reps: int = 7, calls: int = 3
) -> float:
  """Best seconds of one call of the op, compiled alone on random inputs (after a warm-up).

  The best repetition, not the median: on a shared machine interference only ever slows a run, and
  the step is timed the same way, so their ratio compares like with like.
  """
  import jax
  import numpy as np

  rng = np.random.default_rng(0)
  a, b = (jax.device_put(rng.standard_normal(_dims(s), np.float32)) for s in (lhs, rhs))
  fn = jax.jit(rebuild(kind, attrs))
  jax.block_until_ready(fn(a, b))
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    for _ in range(calls):
      out = fn(a, b)
    jax.block_until_ready(out)
    times.append((time.perf_counter() - t) / calls)
  return min(times)


def run_case(name: str, mode: str, steps: int, reps: int) -> dict:
  """Our step's images/s and the images/s its convs and dots alone would allow."""
  import jax

  step, state, compiled, batch = throughput.compiled_step(name, mode)

  def step_seconds() -> float:
    nonlocal state
    times = []
    for _ in range(reps + 1):  # the first repetition is a warm-up
      t = time.perf_counter()
      for i in range(steps):
        state, out = step(state, i)
      jax.block_until_ready(out)
      times.append((time.perf_counter() - t) / steps)
    return min(times[1:])

  before = step_seconds()
  ops = kernel_ops(compiled.as_text())
  bound = sum(count * time_alone(*op) for op, count in ops.items())
  step_s = min(before, step_seconds())  # before and after the ops, so a slow spell hits both alike
  return {
      'case': name,
      'mode': mode,
      'ours_best_img_per_s': round(batch / step_s, 1),
      'kernels_only_img_per_s': round(batch / bound, 1),
      'kernel_share': round(bound / step_s, 3),
      'ops': sum(ops.values()),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--cases', default=','.join(throughput.CASES))
  parser.add_argument('--modes', default='train,infer')
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--reps', type=int, default=3)
  parser.add_argument('--no_torch', action='store_true', help='skip the PyTorch reference step')
  parser.add_argument('--json', action='store_true')
  parser.add_argument('--_child', nargs=2, help=argparse.SUPPRESS)
  args = parser.parse_args()
  from ganomaly_jax.cpu import xla_flags

  xla_flags.apply_cpu_defaults()  # as main does, before JAX starts its backend
  if args._child:
    print(json.dumps(run_case(*args._child, args.steps, args.reps)))
    return
  with_torch = not args.no_torch
  if with_torch:
    try:
      import torch  # noqa: F401
    except ImportError:
      sys.exit("error: PyTorch is not installed (pip install -e '.[bench]'); or pass --no_torch.")
  import compare_torch

  if not args.json:
    print(f'{compare_torch.cpu_name()}, {os.cpu_count()} cores')
    torch_head = f'{"torch img/s":>13}{"ratio":>7}{"max ratio":>11}' if with_torch else ''
    print(
        f'{"case":<24}{"mode":>6}{"ours img/s":>12}{"kernels-only img/s":>20}{"kernel share":>14}'
        f'{torch_head}',
        flush=True,
    )
  for name in args.cases.split(','):
    if name not in throughput.CASES:
      sys.exit(f'error: unknown case {name!r}; known: {", ".join(throughput.CASES)}')
    for mode in args.modes.split(','):
      common = [f'--steps={args.steps}', f'--reps={args.reps}']
      row = compare_torch._child([sys.executable, __file__, '--_child', name, mode, *common])
      if with_torch:  # the reference step, right after ours
        theirs = compare_torch._child(
            [sys.executable, compare_torch.__file__, '--_torch_child', name, mode, *common]
        )
        row['torch_best_img_per_s'] = theirs['best_img_per_s']
        row['ratio'] = round(row['ours_best_img_per_s'] / theirs['best_img_per_s'], 2)
        row['max_ratio'] = round(row['kernels_only_img_per_s'] / theirs['best_img_per_s'], 2)
      if args.json:
        print(json.dumps(row), flush=True)
        continue
      torch_cols = (
          f'{row["torch_best_img_per_s"]:>13.1f}{row["ratio"]:>7.2f}{row["max_ratio"]:>11.2f}'
          if with_torch
          else ''
      )
      print(
          f'{name:<24}{mode:>6}{row["ours_best_img_per_s"]:>12.1f}{row["kernels_only_img_per_s"]:>20.1f}'
          f'{row["kernel_share"]:>14.2f}{torch_cols}',
          flush=True,
      )
  if not args.json:
    print(
        'All images/s are best-of-repetitions (interference only slows a run). kernels-only: images/s\n'
        "if only the step's convolutions and dots took time, each timed alone; kernel share: their\n"
        "time / the step's; max ratio: kernels-only / torch, the most any rewrite of the rest could give."
    )


if __name__ == '__main__':
  main()
