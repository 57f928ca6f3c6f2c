"""bench/accelerator.py: the CPU smoke run prints the full table with positive figures; the peak
table answers by device kind and says 'n/a' for kinds it does not know."""

import json
import os
import subprocess
import sys

import pytest

from helpers import REPO

sys.path.insert(0, os.path.join(REPO, 'bench'))

import accelerator  # noqa: E402


def test_peak_table_by_device_kind():
  assert accelerator.peak_tflops('NVIDIA H100 80GB HBM3', 'bfloat16') == 989.0
  assert accelerator.peak_tflops('NVIDIA H100 80GB HBM3', 'float32') == 67.0
  assert accelerator.peak_tflops('NVIDIA H100 PCIe', 'bfloat16') == 756.0
  assert accelerator.peak_tflops('NVIDIA H200', 'bfloat16') == 989.0
  assert accelerator.peak_tflops('NVIDIA A100-SXM4-80GB', 'float32') == 19.5
  assert accelerator.peak_tflops('TPU v4', 'bfloat16') == 275.0
  assert accelerator.peak_tflops('TPU v5 lite', 'bfloat16') == 197.0
  assert accelerator.peak_tflops('TPU v5', 'bfloat16') == 459.0
  assert accelerator.peak_tflops('TPU v6 lite', 'bfloat16') == 918.0
  assert accelerator.peak_tflops('TPU v4', 'float32') is None
  assert accelerator.peak_tflops('cpu', 'bfloat16') is None
  row = {
      'method': 'ganomaly',
      'dtype': 'float32',
      'mode': 'train',
      'batch': 16,
      'img_per_s': 1.0,
      'step_ms': 1.0,
      'compile_s': 1.0,
      'peak_mib': None,
      'gflop_per_img': 1.0,
      'tflop_per_s': 2.0,
      'device_kind': 'cpu',
  }
  assert accelerator.add_mfu(dict(row), None)['mfu_pct'] is None
  assert accelerator.add_mfu(dict(row), 4.0)['mfu_pct'] == 50.0
  assert (
      accelerator.markdown([accelerator.add_mfu(row, None)])
      .splitlines()[-1]
      .endswith('| n/a | 1.00 | 2.000 | n/a |')
  )


@pytest.mark.slow  # compiles a training step at the study's widths (~45 s on 2 shared cores)
def test_cpu_smoke_run_prints_the_table():
  cmd = [
      sys.executable,
      os.path.join(REPO, 'bench', 'accelerator.py'),
      '--isize=32',
      '--steps=2',
      '--warmup=1',
      '--cases=ganomaly',
      '--dtypes=float32',
      '--peak_tflops=1',
      '--json',
      '--stacked=',  # the seeds-as-one-program part compiles 3 more programs: bench/ only
  ]
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.splitlines()
  rows = [json.loads(line) for line in lines if line.startswith('{')]
  assert [r['mode'] for r in rows] == ['infer', 'train']
  table = [line for line in lines if line.startswith('|')]
  header = [c.strip() for c in table[0].strip('|').split('|')]
  assert header == list(accelerator.COLUMNS)
  assert len(table) == 2 + len(rows)
  for line, row in zip(table[2:], rows):
    cells = dict(zip(header, (c.strip() for c in line.strip('|').split('|'))))
    assert (cells['method'], cells['dtype'], cells['mode'], cells['batch']) == (
        'ganomaly',
        'float32',
        row['mode'],
        '16',
    )
    for column in ('img/s', 'ms/step', 'compile s', 'GFLOP/img', 'TFLOP/s', 'MFU %'):
      assert float(cells[column]) > 0, (column, line)
    assert cells['peak MiB'] == 'n/a' or float(cells['peak MiB']) > 0  # CPU keeps no peak
    assert row['timed_steps'] == 2 and row['peak_tflops'] == 1.0
  # Training a step costs more FLOPs per image than scoring it.
  assert rows[1]['gflop_per_img'] > rows[0]['gflop_per_img'] > 0
