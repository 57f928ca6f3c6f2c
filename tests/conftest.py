"""Session fixtures shared by several test modules."""

from __future__ import annotations

import pytest

import synthetic


@pytest.fixture(scope='session')
def masked_run(tmp_path_factory) -> synthetic.TrainedRun:
  """One quick masked run over a generated folder with ground-truth masks (see tests/synthetic.py).

  Trained once per session (~1 min on 2 CPU cores) and shared by test_evaluate and test_infer; tests
  must not modify its workdir (copy it first).
  """
  return synthetic.train_quick_masked_run(tmp_path_factory.mktemp('masked_run'))
