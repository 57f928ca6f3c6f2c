"""Resuming a workdir compares parameter trees: runtime settings may change, the architecture not."""

import logging
import os
import pathlib
import shutil

import jax
import numpy as np
import pytest

from ganomaly_jax import programs, state as state_lib, train
from ganomaly_jax.runtime import checkpoint, rundir
from helpers import tiny


def _config(steps: int, **overrides):
  return tiny.tiny_config(
      **{
          **tiny.SMALL_DATA,
          'train.eval_every': 2,
          'train.checkpoint_every': 2,
          'train.num_steps': steps,
          'runtime.compile_cache_dir': '',
          **overrides,
      }
  )


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('resume') / 'run')
  train.train_and_evaluate(_config(2), workdir)
  return workdir


def _checkpointed(workdir: str, config) -> tuple[dict[str, np.ndarray], int]:
  """The newest checkpoint's state in `workdir` (as host arrays by path) and its step."""
  like = state_lib.create_state(config, state_lib.build_components(config), jax.random.key(0))
  store = checkpoint.CheckpointStore(workdir)
  restored = store.restore_latest(like, None, set_aside=False)
  store.close()
  assert restored is not None, f'no checkpoint in {workdir}'
  return _flat(restored[0]), restored[1]


def _flat(state) -> dict[str, np.ndarray]:
  return {
      jax.tree_util.keystr(path): np.asarray(leaf)
      for path, leaf in jax.tree_util.tree_leaves_with_path(jax.device_get(state))
  }


@pytest.mark.slow  # trains, then resumes
def test_resume_with_other_kernels_and_dtype_logs_the_change(trained, caplog, monkeypatch):
  config = _config(3, **{'runtime.cpu_kernels': 'off', 'runtime.dtype': 'bfloat16'})
  saved, saved_step = _checkpointed(trained, config)
  assert saved_step == 2
  # What the run went on from: copied at once, as the train step donates it.
  resumed_from = []
  restore = train._restore

  def spy(*args, **kwargs):
    state = restore(*args, **kwargs)
    resumed_from.append(_flat(state))
    return state

  monkeypatch.setattr(train, '_restore', spy)
  with caplog.at_level(logging.WARNING):
    results = train.train_and_evaluate(config, trained)
  assert results['steps'] == 3
  # The checkpoint was restored, not set aside (a run that starts over also reaches step 3).
  assert not os.path.exists(rundir.path(trained, rundir.DAMAGED))
  (restored,) = resumed_from
  assert int(restored['.step']) == saved_step
  assert set(restored) == set(saved)
  for key, value in saved.items():
    np.testing.assert_array_equal(restored[key], value, err_msg=key)
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


@pytest.mark.slow  # trains first (the fixture)
def test_checkpoints_of_other_releases_that_fail_to_restore_stay_and_name_them(trained, tmp_path):
  # config.json says another flax wrote the run, and no checkpoint of it reads any more: the run
  # stops with the releases to install, and nothing is set aside as damaged or trained afresh.
  workdir = str(tmp_path / 'run')
  shutil.copytree(trained, workdir)
  saved = rundir.read_json(rundir.path(workdir, rundir.CONFIG))
  assert saved['versions'] == rundir.library_versions()  # what the training session recorded
  saved['versions']['flax'] = '0.0.1'
  rundir.write_json(rundir.path(workdir, rundir.CONFIG), saved)
  checkpoints = pathlib.Path(rundir.path(workdir, rundir.CHECKPOINTS))
  steps = sorted(p.name for p in checkpoints.iterdir() if p.name.isdigit())
  for step in steps:  # each checkpoint's largest file (its arrays) cut to a third
    largest = max(
        (f for f in (checkpoints / step / 'state').rglob('*') if f.is_file()),
        key=lambda f: f.stat().st_size,
    )
    with open(largest, 'r+b') as f:
      f.truncate(largest.stat().st_size // 3)
  with pytest.raises(
      rundir.TrainingError,
      match=r"flax \S+ here, 0\.0\.1 when its checkpoints were written.*pip install 'flax==0\.0\.1'",
  ):
    train.train_and_evaluate(_config(8), workdir)
  assert not os.path.exists(rundir.path(workdir, rundir.DAMAGED))
  assert sorted(p.name for p in checkpoints.iterdir() if p.name.isdigit()) == steps
