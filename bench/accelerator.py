"""Accelerator benchmark: training and inference images/s at the study's scale on one GPU or TPU.

  python bench/accelerator.py                      # markdown table, the full grid (sized for
                                                   # < 5 min on one GPU; not yet run on one)
  python bench/accelerator.py --json               # also one JSON line per case
  python bench/accelerator.py --cases=masked --dtypes=bfloat16 --batch=32
  python bench/accelerator.py --peak_tflops=989    # device missing from PEAK_TFLOPS below
  python bench/accelerator.py --isize=32 --steps=2 --cases=ganomaly --dtypes=float32   # CPU smoke
  python bench/accelerator.py --stacked=1,2,4,8    # seeds as one program: 1, 2, 4, 8 at once

Cases: GANomaly, SkipGANomaly and masked with their `cars256` settings (256x256x3, batch 16, the
study's widths), each in float32 and bfloat16 compute (`runtime.dtype`; parameters stay float32).
For every case it reports training (G + D update) and inference (scores) images/s, the compile
time of each step, the device memory peak (`memory_stats()['peak_bytes_in_use']`, where the
backend keeps it), and model FLOP utilisation: the compiled step's FLOPs (XLA's `cost_analysis`)
per second against the device's peak FLOP/s for that dtype.

Everything runs on the first device only (`jax.devices()[0]`): the figures are per chip. Each
(method, dtype) pair runs in its own subprocess, so a memory peak belongs to that pair alone
(inference is measured first, then training, whose peak includes inference's); the parent never
starts JAX, which on a GPU would reserve most of its memory. Timing: `--warmup` untimed steps,
then up to `--steps` timed steps or `--budget_s` seconds, whichever comes first.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # `throughput` as a sibling

METHODS = ('ganomaly', 'skip_ganomaly', 'masked')
DTYPES = ('float32', 'bfloat16')
MODES = ('infer', 'train')  # infer first: training's memory peak then includes inference's

# Dense peak TFLOP/s per JAX device, as (device_kind substring, bfloat16, float32), most specific
# first. Vendor figures, sparsity excluded:
# - NVIDIA H100 datasheet (nvidia.com/en-us/data-center/h100): SXM BF16 Tensor Core 1,979
#   TFLOP/s with sparsity -> 989 dense, FP32 67; PCIe 1,513 -> 756, FP32 51; NVL 1,671 -> 835,
#   FP32 60.
# - NVIDIA H200 datasheet (nvidia.com/en-us/data-center/h200): SXM as H100 SXM (989 / 67); NVL
#   1,671 -> 835 / 60.
# - NVIDIA A100 datasheet (nvidia.com/en-us/data-center/a100): BF16 312 dense, FP32 19.5.
# - NVIDIA L4 datasheet: BF16 242 with sparsity -> 121 dense, FP32 30.3.
# - Google Cloud TPU system architecture (cloud.google.com/tpu/docs/v4, /v5e, /v5p, /v6e): BF16
#   per chip v4 275, v5e 197, v5p 459, v6e (Trillium) 918; v2 and v3 45 and 123 per chip, whose two
#   TensorCores are separate JAX devices (22.5 and 61.5 each).
# float32 is the GPUs' non-tensor-core peak. XLA may run float32 convolutions on TF32 tensor cores
# at default precision (about 7x that peak on H100), so float32 MFU can read above 100 %. Google
# publishes no float32 peak for TPUs (float32 matmuls run as bfloat16 passes): 'n/a'.
PEAK_TFLOPS: tuple[tuple[str, float | None, float | None], ...] = (
    ('H100 PCIe', 756.0, 51.0),
    ('H100 NVL', 835.0, 60.0),
    ('H100', 989.0, 67.0),
    ('H200 NVL', 835.0, 60.0),
    ('H200', 989.0, 67.0),
    ('A100', 312.0, 19.5),
    ('L4', 121.0, 30.3),
    ('TPU v2', 22.5, None),
    ('TPU v3', 61.5, None),
    ('TPU v4', 275.0, None),
    ('TPU v5 lite', 197.0, None),  # v5e
    ('TPU v5e', 197.0, None),
    ('TPU v5p', 459.0, None),
    ('TPU v5', 459.0, None),  # v5p reports itself as 'TPU v5'
    ('TPU v6 lite', 918.0, None),  # v6e (Trillium)
    ('TPU v6e', 918.0, None),
)

COLUMNS = (
    'method',
    'dtype',
    'mode',
    'batch',
    'img/s',
    'ms/step',
    'compile s',
    'peak MiB',
    'GFLOP/img',
    'TFLOP/s',
    'MFU %',
)


def peak_tflops(device_kind: str, dtype: str) -> float | None:
  """The device's dense peak TFLOP/s for `dtype` from PEAK_TFLOPS; None when unknown."""
  for pattern, bf16, fp32 in PEAK_TFLOPS:
    if pattern.lower() in device_kind.lower():
      return bf16 if dtype == 'bfloat16' else fp32
  return None


def case_config(method: str, dtype: str, isize: int, batch: int):
  """The method's cars256 config at `isize`, with `batch` for both steps and `dtype` compute."""
  from ganomaly_jax.config import arguments

  config = arguments.load_config(
      os.path.join(REPO, 'configs', f'{method}.py') + f':cars256,isize={isize},dtype={dtype}'
  )
  config.unlock()
  config.train.batch_size = config.eval.batch_size = batch
  config.lock()
  return config


def run_pair(method: str, dtype: str, args: argparse.Namespace) -> list[dict]:
  """Measures inference then training of one (method, dtype) in this process; one row per mode."""
  import jax
  import numpy as np

  from ganomaly_jax import programs
  from ganomaly_jax.runtime import parallel
  import throughput

  device = jax.devices()[0]
  config = case_config(method, dtype, args.isize, args.batch)
  # The run's own compiled functions (programs.build: shardings, donation, the CPU switch), on a
  # one-device mesh: the figures are per device.
  progs = programs.build(config, parallel.make_mesh([device]))
  shape = (args.batch, args.isize, args.isize, config.model.channels)
  images = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
  batch = {'image': jax.device_put(images, device)}
  state = progs.init(jax.random.key(0))
  train_key = jax.random.key(1)

  rows = []
  for mode in args.modes.split(','):
    if mode == 'train':
      fn = progs.train_step
      t = time.perf_counter()
      compiled = fn.lower(state, batch, train_key).compile()
      compile_s = time.perf_counter() - t

      def step(state, i, compiled=compiled):
        return compiled(state, batch, jax.random.fold_in(train_key, i))

    else:
      fn = progs.eval_step
      t = time.perf_counter()
      compiled = fn.lower(state, batch).compile()
      compile_s = time.perf_counter() - t

      def step(state, i, compiled=compiled):
        return state, compiled(state, batch)

    for i in range(args.warmup):
      state, out = step(state, i)
    jax.block_until_ready(out)
    # Timed: whole steps until --steps are done or the case's budget is spent (at least one).
    done, start = 0, time.perf_counter()
    while done < args.steps:
      state, out = step(state, args.warmup + done)
      done += 1
      if time.perf_counter() - start > args.budget_s:
        jax.block_until_ready(out)
        if time.perf_counter() - start > args.budget_s:
          break
    jax.block_until_ready(out)
    seconds = (time.perf_counter() - start) / done

    stats = device.memory_stats() or {}
    peak = stats.get('peak_bytes_in_use')
    flops = throughput._flops(compiled)  # pylint: disable=protected-access
    rows.append(
        {
            'method': method,
            'dtype': dtype,
            'mode': mode,
            'batch': args.batch,
            'isize': args.isize,
            'device_kind': device.device_kind,
            'backend': jax.default_backend(),
            'timed_steps': done,
            'img_per_s': args.batch / seconds,
            'step_ms': 1e3 * seconds,
            'compile_s': compile_s,
            'peak_mib': None if peak is None else peak / 2**20,
            'gflop_per_img': flops / args.batch / 1e9,
            'tflop_per_s': flops / seconds / 1e12,
        }
    )
  return rows


def add_mfu(row: dict, peak_override: float | None) -> dict:
  """Adds the peak used and the model FLOP utilisation (None when the peak is unknown)."""
  peak = peak_override or peak_tflops(row['device_kind'], row['dtype'])
  row['peak_tflops'] = peak
  counted = row['tflop_per_s'] == row['tflop_per_s']  # False when XLA gave no FLOP count (NaN)
  row['mfu_pct'] = 100 * row['tflop_per_s'] / peak if peak and counted else None
  return row


def _cell(value, digits: int) -> str:
  if value is None or value != value:
    return 'n/a'
  return f'{value:.{digits}f}' if isinstance(value, float) else str(value)


def markdown(rows: list[dict]) -> str:
  """The rows as a markdown table with COLUMNS; unknown values print as 'n/a'."""
  lines = ['| ' + ' | '.join(COLUMNS) + ' |', '|' + '|'.join(['---'] * len(COLUMNS)) + '|']
  for r in rows:
    cells = (
        r['method'],
        r['dtype'],
        r['mode'],
        r['batch'],
        _cell(r['img_per_s'], 1),
        _cell(r['step_ms'], 1),
        _cell(r['compile_s'], 1),
        _cell(r['peak_mib'], 0),
        _cell(r['gflop_per_img'], 2),
        _cell(r['tflop_per_s'], 3),
        _cell(r['mfu_pct'], 1),
    )
    lines.append('| ' + ' | '.join(str(c) for c in cells) + ' |')
  return '\n'.join(lines)


def child_command(method: str, dtype: str, args: argparse.Namespace) -> list[str]:
  """The command that measures one (method, dtype) pair in a fresh process."""
  return [
      sys.executable,
      os.path.abspath(__file__),
      f'--_child={method},{dtype}',
      f'--isize={args.isize}',
      f'--batch={args.batch}',
      f'--steps={args.steps}',
      f'--warmup={args.warmup}',
      f'--budget_s={args.budget_s}',
      f'--modes={args.modes}',
  ]


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--cases', default=','.join(METHODS), help=f'comma-separated, from {METHODS}')
  parser.add_argument('--dtypes', default=','.join(DTYPES), help=f'comma-separated, from {DTYPES}')
  parser.add_argument('--modes', default=','.join(MODES), help=f'comma-separated, from {MODES}')
  parser.add_argument('--isize', type=int, default=256, help='image side (cars256: 256)')
  parser.add_argument('--batch', type=int, default=16, help='batch size (cars256: 16)')
  parser.add_argument('--steps', type=int, default=20, help='timed steps per case (at most)')
  parser.add_argument('--warmup', type=int, default=3, help='untimed steps before timing')
  parser.add_argument(
      '--budget_s',
      type=float,
      default=5.0,
      help='seconds of timed steps per case; timing stops after the step that ' 'crosses it',
  )
  parser.add_argument(
      '--peak_tflops',
      type=float,
      default=None,
      help='peak TFLOP/s of the device for MFU (default: PEAK_TFLOPS by '
      'device_kind, n/a if unknown)',
  )
  parser.add_argument('--json', action='store_true', help='also print one JSON line per case')
  parser.add_argument(
      '--stacked',
      default='1,3,8',
      help='after the table: runs per second of that many GANomaly seeds trained as one group '
      'at 32x32x3, the study widths, batch 64, against one run (bench/stacked_seeds.py); '
      'empty: skip',
  )
  parser.add_argument('--_child', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  for flag, values, known in (
      ('--cases', args.cases, METHODS),
      ('--dtypes', args.dtypes, DTYPES),
      ('--modes', args.modes, MODES),
  ):
    unknown = set(values.split(',')) - set(known)
    if unknown:
      parser.error(f'{flag}: unknown {", ".join(sorted(unknown))}; known: {", ".join(known)}')
  if min(args.steps, args.batch, args.isize) < 1 or args.warmup < 0:
    parser.error('--steps, --batch and --isize must be positive, --warmup >= 0')

  if args._child:
    method, dtype = args._child.split(',')
    for row in run_pair(method, dtype, args):
      print(json.dumps(row), flush=True)
    return

  started = time.perf_counter()
  rows = []
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3')
  env['PYTHONPATH'] = os.pathsep.join(p for p in (REPO, env.get('PYTHONPATH')) if p)
  for method in args.cases.split(','):
    for dtype in args.dtypes.split(','):
      cmd = child_command(method, dtype, args)
      proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
      if proc.returncode:
        sys.exit(f'error: {method} {dtype} failed:\n{proc.stderr[-3000:]}')
      for line in proc.stdout.strip().splitlines():
        if line.startswith('{'):
          row = add_mfu(json.loads(line), args.peak_tflops)
          rows.append(row)
          if args.json:
            print(json.dumps(row), flush=True)
  kind = rows[0]['device_kind'] if rows else '?'
  peaks = {d: args.peak_tflops or peak_tflops(kind, d) for d in args.dtypes.split(',')}
  print(
      f'\nDevice: {kind} ({rows[0]["backend"] if rows else "?"}), one device; '
      f'{args.isize}x{args.isize}x3, batch {args.batch}; peak TFLOP/s used for MFU: '
      + ', '.join(f'{d} {_cell(p, 1)}' for d, p in peaks.items())
      + f'; whole run {time.perf_counter() - started:.0f} s\n'
  )
  print(markdown(rows))
  if args.stacked:
    print('\nSeeds as one program (bench/stacked_seeds.py):', flush=True)
    stacked = [sys.executable, os.path.join(REPO, 'bench', 'stacked_seeds.py')]
    stacked += [f'--runs={args.stacked}', '--isize=32', '--channels=3', '--width=64', '--batch=64']
    stacked += [f'--warmup={args.warmup}', f'--steps={args.steps}'] + (['--json'] * args.json)
    proc = subprocess.run(stacked, capture_output=True, text=True, env=env, cwd=REPO)
    if proc.returncode:
      sys.exit(f'error: stacked seeds failed:\n{proc.stderr[-3000:]}')
    print(proc.stdout, end='')


if __name__ == '__main__':
  main()
