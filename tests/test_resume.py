"""Resuming a workdir compares parameter trees: runtime settings may change, the architecture not."""

import logging

import pytest

from ganomaly_jax import programs, train
from ganomaly_jax.runtime import rundir
from helpers import tiny


def _config(steps: int, **overrides):
  return tiny.tiny_config(**{
      **tiny.SMALL_DATA, 'train.eval_every': 2, 'train.checkpoint_every': 2,
      'train.num_steps': steps, 'runtime.compile_cache_dir': '', **overrides})


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('resume') / 'run')
  train.train_and_evaluate(_config(2), workdir)
  return workdir


@pytest.mark.slow  # trains, then resumes
def test_resume_with_other_kernels_and_dtype_logs_the_change(trained, caplog):
  with caplog.at_level(logging.WARNING):
    results = train.train_and_evaluate(
        _config(3, **{'runtime.cpu_kernels': 'off', 'runtime.dtype': 'bfloat16'}), trained)
  assert results['steps'] == 3
  lines = [r.getMessage() for r in caplog.records]
  assert any("runtime.cpu_kernels='off'" in m and "'auto'" in m for m in lines), lines
  assert any("runtime.dtype='bfloat16'" in m for m in lines), lines


@pytest.mark.slow  # trains first (the fixture)
def test_another_architecture_is_refused_before_compiling(trained, monkeypatch):
  build = programs.build

  def no_compile(*args, **kwargs):  # the refusal must come before the step is lowered
    progs = build(*args, **kwargs)

    class Refuse:
      def lower(self, *a, **k):
        raise AssertionError('the train step was lowered before the architecture check')

    return progs._replace(train_step=Refuse())

  monkeypatch.setattr(programs, 'build', no_compile)
  with pytest.raises(rundir.TrainingError) as info:
    train.train_and_evaluate(_config(4, **{'model.ngf': 8}), trained)
  message = str(info.value)
  assert '\n' not in message and 'different architecture' in message
  assert 'g_params/decoder/bn_0/bias (8,) -> (16,)' in message, message
