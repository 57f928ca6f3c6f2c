"""The models learn: GANomaly's default command and a short masked run beat chance on digits.

Both run `python -m ganomaly_jax.main` as a user would (offline, bundled scikit-learn digits, digit 0
abnormal). Measured on this 2-core CPU (jax 0.10.2): configs/ganomaly.py, 1000 steps, image AUROC
0.9932 (~7 min of training); configs/masked.py at 200 steps, 0.854 / 0.867 / 0.878 for seeds 0 / 1 / 2
(~30 s of training when the machine is idle). The thresholds sit well below those and far above 0.5.
"""

import json
import os
import subprocess
import sys

import pytest

from helpers import REPO


def _main(workdir, *args, timeout):
  cmd = [sys.executable, '-m', 'ganomaly_jax.main', *args, f'--workdir={workdir}']
  proc = subprocess.run(
      cmd,
      cwd=REPO,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3'),
      capture_output=True,
      text=True,
      timeout=timeout,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(workdir, 'results.json')) as f:
    return json.load(f)


@pytest.mark.slow
def test_readme_default_command_detects_the_abnormal_digit(tmp_path):
  results = _main(tmp_path / 'ganomaly', '--config=configs/ganomaly.py', timeout=1800)
  assert results['dataset'] == 'digits' and results['steps'] == 1000
  assert results['image_auroc'] >= 0.95, results


@pytest.mark.slow
def test_short_masked_run_beats_chance(tmp_path):
  results = _main(
      tmp_path / 'masked',
      '--config=configs/masked.py:steps=200',
      '--config.train.eval_every=100',
      '--config.train.checkpoint_every=100',
      timeout=900,
  )
  assert results['method'] == 'masked' and results['steps'] == 200
  assert results['image_auroc'] >= 0.75, results  # measured 0.854-0.878: chance + 0.25 is safe
