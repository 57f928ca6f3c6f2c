"""Reliability: exact resume after SIGKILL, clean preemption on SIGTERM, divergence policies, bad data."""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
from PIL import Image
import pytest

from ganomaly_jax import state as state_lib, train
from ganomaly_jax.runtime import checkpoint, rundir
from helpers import REPO, tiny

# Small enough for 2 CPU cores; the same config is used in- and out-of-process.
TINY = tiny.spec(**tiny.SMALL_DATA)
# The tests only train and read results (none patches traced code): they keep each other's
# programs, as the runs of one suite do (tests/conftest.py).
SHARE_PROGRAMS = True


def tiny_config(**overrides):
  return tiny.tiny_config(**{**tiny.SMALL_DATA, **overrides})


def run_main(workdir, *flags, timeout=240, wait=True, kill_after_step=None, env=None):
  """The train command on TINY, with `env` added to the environment; with `kill_after_step`,
  SIGKILLed right after that step's save (tests/helpers/kill_after_step.py)."""
  entry = (
      ['-m', 'ganomaly_jax.main']
      if kill_after_step is None
      else [os.path.join(REPO, 'tests', 'helpers', 'kill_after_step.py'), str(kill_after_step)]
  )
  cmd = [sys.executable, *entry, f'--config={TINY}', f'--workdir={workdir}', *flags]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', **(env or {}))
  if not wait:
    return subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
  return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def latest_state(workdir, config):
  components = state_lib.build_components(config)
  like = state_lib.create_state(config, components, jax.random.key(0))
  store = checkpoint.CheckpointStore(workdir)
  restored = store.restore_latest(like, None)
  store.close()
  assert restored is not None, f'no checkpoint in {workdir}'
  return restored


def metrics_at(workdir, step):
  with open(os.path.join(workdir, 'train_metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  return [r for r in rows if r['step'] == step][-1]


@pytest.mark.slow
def test_sigkill_then_resume_equals_straight_run(tmp_path):
  """6 steps straight == 4 steps + SIGKILL right after step 4's save (checkpoints every 2) +
  resume to 6: identical."""
  straight, killed = str(tmp_path / 'straight'), str(tmp_path / 'killed')
  train.train_and_evaluate(tiny_config(**{'train.num_steps': 6}), straight)

  died = run_main(killed, '--config.train.num_steps=6', kill_after_step=4)
  assert died.returncode == -signal.SIGKILL, died.stderr[-2000:]
  assert not os.path.exists(os.path.join(killed, 'results.json'))
  resumed_from = checkpoint.CheckpointStore(killed).latest_step()
  assert resumed_from in (2, 4)  # whatever periodic checkpoint had completed before the kill

  train.train_and_evaluate(tiny_config(**{'train.num_steps': 6}), killed)
  config = tiny_config()
  (a, step_a), (b, step_b) = latest_state(straight, config), latest_state(killed, config)
  assert step_a == step_b == 6
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert metrics_at(straight, 6) == metrics_at(killed, 6)
  with open(os.path.join(killed, 'train_metrics.jsonl')) as f:  # rows past the restored step went
    assert [json.loads(line)['step'] for line in f] == [2, 4, 6]


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_cleanly(tmp_path):
  workdir = str(tmp_path / 'run')
  proc = run_main(
      workdir, '--config.train.num_steps=100000', '--config.train.checkpoint_every=1000', wait=False
  )
  deadline = time.time() + 180
  metrics = os.path.join(workdir, 'train_metrics.jsonl')
  while not os.path.exists(metrics) and time.time() < deadline and proc.poll() is None:
    time.sleep(0.5)
  assert proc.poll() is None, proc.communicate()[1][-2000:]
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-2000:]
  stopped_at = re.findall(r'Preempted \(SIGTERM\) at step (\d+)', err)
  assert len(stopped_at) == 1, err[-2000:]
  stopped_at = int(stopped_at[0])
  assert stopped_at >= 2  # the chief logged step 2 before the signal
  # The step in flight was finished and saved, not lost: the same command resumes from it.
  _, step = latest_state(workdir, tiny_config())
  assert step == stopped_at
  with resumed_steps() as resumed:
    train.train_and_evaluate(tiny_config(**{'train.num_steps': stopped_at + 1}), workdir)
  assert resumed == [stopped_at]


@contextlib.contextmanager
def resumed_steps():
  """The steps that `train_and_evaluate` runs in the block went on from (0: a fresh start)."""
  steps, restore = [], train._restore

  def spy(*args, **kwargs):
    state = restore(*args, **kwargs)
    steps.append(int(state.step))
    return state

  train._restore = spy
  try:
    yield steps
  finally:
    train._restore = restore


@pytest.mark.slow
def test_sigterm_on_a_step_that_just_checkpointed_stops_there_and_resumes_exactly(
    tmp_path, monkeypatch
):
  """4 steps straight == 2 steps, whose periodic checkpoint is saved as SIGTERM arrives, + resume."""
  config = tiny_config(**{'train.num_steps': 4, 'train.checkpoint_every': 2})
  straight, stopped = str(tmp_path / 'straight'), str(tmp_path / 'stopped')
  train.train_and_evaluate(config, straight)

  saves, save = [], checkpoint.CheckpointStore.save

  def save_then_sigterm(self, step, state, data_iter, force=False):
    saved = save(self, step, state, data_iter, force)
    saves.append((step, force, saved))
    if step == 2:  # the signal arrives while step 2, just checkpointed, is the current step
      os.kill(os.getpid(), signal.SIGTERM)
    return saved

  monkeypatch.setattr(checkpoint.CheckpointStore, 'save', save_then_sigterm)
  assert train.train_and_evaluate(config, stopped) == {'preempted': True, 'steps': 2}
  assert saves == [(2, False, True)]  # the periodic save only: step 2 is not saved twice
  monkeypatch.undo()

  with resumed_steps() as resumed:
    train.train_and_evaluate(config, stopped)
  assert resumed == [2]
  (a, step_a), (b, step_b) = latest_state(straight, config), latest_state(stopped, config)
  assert step_a == step_b == 4
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  assert metrics_at(straight, 4) == metrics_at(stopped, 4)


@pytest.mark.slow
def test_nan_stop_names_step_and_term(tmp_path):
  config = tiny_config(**{'debug_nan_at_step': 3, 'train.num_steps': 4})
  with pytest.raises(rundir.TrainingError, match=r'step 3 \(non-finite g_loss\)'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run' / 'results.json')


@pytest.mark.slow
def test_exploding_but_finite_loss_counts_as_divergence(tmp_path):
  # Every real loss is far above a limit of 1e-6, so the very first step must be refused by name.
  config = tiny_config(**{'train.loss_limit': 1e-6, 'train.num_steps': 2})
  with pytest.raises(
      rundir.TrainingError, match=r'step 1 \(g_loss, d_loss beyond train.loss_limit=1e-06\)'
  ):
    train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert not os.path.exists(tmp_path / 'run' / 'results.json')


@pytest.mark.slow
def test_nan_rollback_skips_batch_and_finishes(tmp_path):
  config = tiny_config(
      **{'debug_nan_at_step': 3, 'train.num_steps': 6, 'train.on_nonfinite': 'rollback'}
  )
  results = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert results['rollbacks'] == 1
  assert results['skipped_steps'] == 1
  assert 0.0 <= results['image_auroc'] <= 1.0


@pytest.mark.slow
def test_rollback_budget_exhausted_stops(tmp_path):
  config = tiny_config(
      **{
          'debug_nan_at_step': 3,
          'train.num_steps': 6,
          'train.on_nonfinite': 'rollback',
          'train.max_rollbacks': 0,
      }
  )
  with pytest.raises(rundir.TrainingError, match='after 0 rollbacks'):
    train.train_and_evaluate(config, str(tmp_path / 'run'))


def _write_bad_folder(root):
  rng = np.random.default_rng(0)
  good = lambda: Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8))
  for split, n in (('train/good', 12), ('test/good', 4), ('test/scratch', 4)):
    os.makedirs(root / split)
    for i in range(n):
      good().save(root / split / f'{i}.png')
  (root / 'train/good/empty.png').write_bytes(b'')
  (root / 'train/good/garbage.jpg').write_bytes(b'not a jpeg at all' * 10)
  (root / 'train/good/notes.txt').write_text('hello')
  Image.fromarray(np.zeros((3, 3), np.uint8)).save(root / 'train/good/tiny.png')
  Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).save(root / 'test/good/gray.png')


@pytest.mark.slow
def test_bad_images_are_skipped_counted_and_reported(tmp_path):
  _write_bad_folder(tmp_path / 'data')
  config = tiny_config(
      **{'dataset.name': f'folder:{tmp_path / "data"}', 'model.channels': 3, 'train.num_steps': 2}
  )
  results = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert 0.0 <= results['image_auroc'] <= 1.0
  with open(tmp_path / 'run' / 'data_report.json') as f:
    report = json.load(f)
  counts = {k: v['count'] for k, v in report['skipped'].items()}
  assert counts['empty_file'] == 1 and counts['corrupt'] == 1
  assert counts['not_an_image'] == 1 and counts['too_small'] == 1
  assert report['usable'] == {'train': 12, 'test': 9}


@pytest.mark.slow
def test_folder_without_usable_images_is_one_clear_error(tmp_path):
  root = tmp_path / 'data'
  os.makedirs(root / 'train/good')
  os.makedirs(root / 'test/good')
  (root / 'train/good/a.png').write_bytes(b'')
  result = run_main(
      str(tmp_path / 'run'), f'--config.dataset.name=folder:{root}', '--config.model.channels=3'
  )
  assert result.returncode == 1
  errors = [l for l in result.stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and 'train/good' in errors[0], result.stderr[-1500:]


@pytest.mark.slow
def test_incompatible_workdir_refused_then_restart_moves_it_aside(tmp_path):
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(tiny_config(**{'train.num_steps': 2}), workdir)
  wider = {'train.num_steps': 4, 'model.ngf': 8}
  with pytest.raises(rundir.TrainingError, match=r'different architecture.*g_params/'):
    train.train_and_evaluate(tiny_config(**wider), workdir)
  results = train.train_and_evaluate(tiny_config(**wider, restart=True), workdir)
  assert results['steps'] == 4
  old = [d for d in os.listdir(workdir) if d.startswith('old_')]
  assert len(old) == 1  # the first run's checkpoints and results were kept, not deleted
  assert os.path.exists(os.path.join(workdir, old[0], 'checkpoints', '2'))
  with open(os.path.join(workdir, old[0], 'results.json')) as f:
    assert json.load(f)['steps'] == 2


@pytest.mark.slow
def test_resume_with_another_process_count_is_one_clear_error(tmp_path):
  workdir = str(tmp_path / 'run')
  train.train_and_evaluate(tiny_config(**{'train.num_steps': 2}), workdir)
  store = checkpoint.CheckpointStore(workdir)
  assert store.saved_process_count() == 1
  data_dir = os.path.join(store.latest_dir, str(store.latest_step()), 'data')
  store.close()
  # Make the newest checkpoint look as if two processes had written it.
  os.rename(
      os.path.join(data_dir, 'process_0-of-1.json'), os.path.join(data_dir, 'process_0-of-2.json')
  )
  shutil.copy(
      os.path.join(data_dir, 'process_0-of-2.json'), os.path.join(data_dir, 'process_1-of-2.json')
  )
  with pytest.raises(
      rundir.TrainingError,
      match='checkpointed by 2 processes and this run has 1: .* resume training with 2',
  ):
    train.train_and_evaluate(tiny_config(**{'train.num_steps': 4}), workdir)
  _, step = latest_state(workdir, tiny_config())
  assert step == 2  # the checkpoint is still there, untouched
  # Evaluation needs no data position, so it still runs.
  results = train.train_and_evaluate(tiny_config(**{'mode': 'eval'}), workdir)
  assert 0.0 <= results['image_auroc'] <= 1.0
