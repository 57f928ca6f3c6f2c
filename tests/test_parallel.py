"""Data parallelism: 8 fake CPU devices train exactly like 1 device; uneven batches fail clearly.

The device count is fixed when JAX starts its backend, so the comparison runs in a fresh process
(tests/helpers/train_steps.py) that fakes 8 CPU devices, trains the same 3 steps of a tiny GANomaly
on a 1-device mesh and on the 8-device mesh (batch sharded, state replicated, BatchNorm over the
global batch), and saves both outcomes.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from helpers import REPO

HELPER = os.path.join(REPO, 'tests', 'helpers', 'train_steps.py')
DEVICES = 8
# Reductions split over 8 devices add in another order than on one: float32 round-off only.
RTOL = 1e-5


@pytest.fixture(scope='module')
def outcome(tmp_path_factory):
  out = tmp_path_factory.mktemp('parallel')
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', JAX_PLATFORMS='cpu')
  proc = subprocess.run(
      [sys.executable, HELPER, f'--devices={DEVICES}', '--steps=3', f'--out={out}'],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(out / 'info.json') as f:
    info = json.load(f)
  return np.load(out / 'one.npz'), np.load(out / 'all.npz'), info


def _leaf_error(a: np.ndarray, b: np.ndarray) -> float:
  """Largest difference relative to the leaf's scale (elementwise relative error is meaningless
  for entries that are ~0, such as Adam moments of unused directions)."""
  a, b = a.astype(np.float64), b.astype(np.float64)
  return float(np.max(np.abs(a - b)) / max(np.max(np.abs(a)), 1e-12)) if a.size else 0.0


@pytest.mark.slow
def test_helper_saw_eight_devices(outcome):
  assert outcome[2]['device_count'] == DEVICES


@pytest.mark.slow
def test_losses_match_one_device(outcome):
  one, many, _ = outcome
  metrics = [k for k in one.files if k.startswith('metric/')]
  assert {'metric/g_loss', 'metric/d_loss'} <= set(metrics)
  for key in metrics:
    assert one[key].shape == (3,)  # one value per step
    np.testing.assert_allclose(many[key], one[key], rtol=RTOL, atol=1e-7, err_msg=key)


@pytest.mark.slow
def test_state_matches_one_device(outcome):
  one, many, _ = outcome
  leaves = [k for k in one.files if k.startswith('state')]
  assert any('g_params' in k for k in leaves) and any('d_opt' in k for k in leaves)
  assert set(leaves) == {k for k in many.files if k.startswith('state')}
  errors = {k: _leaf_error(one[k], many[k]) for k in leaves}
  worst = max(errors, key=errors.get)
  assert errors[worst] < RTOL, f'{worst}: relative error {errors[worst]:.2e}'
  assert int(one['state.step']) == int(many['state.step']) == 3


@pytest.mark.slow
def test_uneven_batch_names_the_key(outcome):
  error = outcome[2]['batch_error']
  assert error is not None, 'batch 12 on 8 devices did not raise'
  assert 'train.batch_size=12' in error and f'{DEVICES} devices' in error
