"""CheckpointStore: round trip with the data position, best-by-validation-loss selection, keep=N."""

import grain
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ganomaly_jax.runtime import checkpoint


def _state(value: float) -> dict:
  return {
      'step': jnp.asarray(int(value), jnp.int32),
      'g_params': {'conv': {'kernel': jnp.full((3, 3, 1, 4), value, jnp.float32)}},
      'rng': jax.random.key(int(value)),
  }


def _data_iter():
  return iter(grain.MapDataset.source(list(range(100))).to_iter_dataset())


@pytest.fixture
def store(tmp_path):
  s = checkpoint.CheckpointStore(str(tmp_path / 'run'), keep=2)
  yield s
  s.close()


def test_round_trip_restores_state_and_data_position(store):
  data = _data_iter()
  assert [next(data) for _ in range(3)] == [0, 1, 2]
  store.save(3, _state(3.0), data)
  store.wait()
  next(data)  # moves on after the save: the restore must bring it back

  fresh = _data_iter()
  state, step = store.restore_latest(_state(0.0), fresh)
  assert step == 3 and int(state['step']) == 3
  np.testing.assert_array_equal(state['g_params']['conv']['kernel'], np.full((3, 3, 1, 4), 3.0))
  assert jax.dtypes.issubdtype(state['rng'].dtype, jax.dtypes.prng_key)  # typed keys survive
  assert next(fresh) == 3  # the batch after the checkpoint, not the first one


def test_an_error_lets_the_saves_under_way_finish_and_keeps_its_own_message(store, monkeypatch):
  store.save(1, _state(1.0), _data_iter())
  waited = []
  wait = store.wait
  monkeypatch.setattr(store, 'wait', lambda: (waited.append(1), wait()))
  with pytest.raises(RuntimeError, match='the disk is full'):
    with store.saves_finished_on_error():
      raise RuntimeError('the disk is full')
  assert waited == [1] and store.latest_step() == 1
  monkeypatch.setattr(store, 'wait', lambda: 1 / 0)  # a save that fails too hides nothing
  with pytest.raises(RuntimeError, match='the disk is full'):
    with store.saves_finished_on_error():
      raise RuntimeError('the disk is full')
  with store.saves_finished_on_error():  # no error: nothing is waited for (wait would raise)
    pass


def test_nothing_to_restore_is_none(store):
  assert store.restore_latest(_state(0.0), None) is None
  assert store.restore_best(_state(0.0)) is None
  assert store.saved_shapes() is None and store.saved_process_count() is None


def test_keep_n_keeps_the_newest(store):
  data = _data_iter()
  for step in (1, 2, 3, 4):
    store.save(step, _state(float(step)), data)
  store.wait()
  assert sorted(store.latest.all_steps()) == [3, 4]
  assert sorted(p.name for p in store.latest_dir.iterdir() if p.name.isdigit()) == ['3', '4']


def test_best_is_the_lowest_validation_loss(store):
  for step, loss in ((1, 3.0), (2, 1.0), (3, 2.0)):
    store.save_best(step, _state(float(step)), loss)
  store.wait()
  assert store.best_step() == 2
  state, step = store.restore_best(_state(0.0))
  assert step == 2 and int(state['step']) == 2


def test_saved_shapes_and_process_count_from_metadata(store):
  store.save(1, _state(1.0), _data_iter())
  store.wait()
  shapes = store.saved_shapes()
  assert shapes['g_params/conv/kernel'] == (3, 3, 1, 4)
  # Parameters compare equal to the live tree (a typed key's metadata shows its raw data: (2,)).
  live = checkpoint.tree_shapes(_state(0.0))
  params = lambda tree: {k: v for k, v in tree.items() if k != 'rng'}  # noqa: E731
  assert params(shapes) == params(live)
  assert store.saved_process_count() == 1


def _truncate_largest_file(directory) -> str:
  import pathlib

  files = [p for p in pathlib.Path(directory).rglob('*') if p.is_file()]
  largest = max(files, key=lambda p: p.stat().st_size)
  with open(largest, 'r+b') as f:
    f.truncate(largest.stat().st_size // 3)
  return str(largest)


def test_a_damaged_latest_checkpoint_is_set_aside_and_the_older_one_used(store, caplog):
  """Issue 22: one truncated file in the newest checkpoint costs that checkpoint, not the run."""
  data = _data_iter()
  for step in (1, 2):
    next(data)
    store.save(step, _state(float(step)), data)
  store.wait()
  _truncate_largest_file(store.latest_dir / '2' / 'state')

  # A reader (infer) only skips it ...
  state, step = store.restore_latest(_state(0.0), None, set_aside=False)
  assert step == 1 and int(state['step']) == 1
  assert (store.latest_dir / '2').is_dir()

  # ... training moves it aside, names it in one line, and restores the data position of step 1.
  fresh = _data_iter()
  caplog.clear()
  with caplog.at_level('WARNING'):
    state, step = store.restore_latest(_state(0.0), fresh)
  assert step == 1 and int(state['step']) == 1 and next(fresh) == 1
  lines = [r.getMessage() for r in caplog.records if 'cannot be restored' in r.getMessage()]
  assert len(lines) == 1 and str(store.latest_dir / '2') in lines[0] and '\n' not in lines[0]
  assert not (store.latest_dir / '2').exists()
  damaged = list((store.latest_dir.parent / 'damaged').iterdir())
  assert len(damaged) == 1 and damaged[0].name.startswith('checkpoints_2_')
  assert store.latest_step() == 1
  store.save(2, _state(2.0), fresh)  # the run goes on and saves step 2 again
  store.wait()
  assert store.restore_latest(_state(0.0), None)[1] == 2


# Restores each damaged copy named on the command line in a fresh process, as training would.
_RESTORE_EACH = """
import sys
import grain, jax, jax.numpy as jnp
from ganomaly_jax.runtime import checkpoint
like = {'step': jnp.asarray(0, jnp.int32),
        'g_params': {'conv': {'kernel': jnp.zeros((3, 3, 1, 4), jnp.float32)}},
        'rng': jax.random.key(0)}
for workdir in sys.argv[1:]:
  store = checkpoint.CheckpointStore(workdir)
  store.saved_shapes()
  data = iter(grain.MapDataset.source(list(range(100))).to_iter_dataset())
  print(workdir, store.restore_latest(like, data)[1], flush=True)
  store.close()
"""


@pytest.mark.slow  # starts a process
def test_damaged_checkpoints_cost_one_line_each_and_no_traceback(tmp_path):
  """Whichever file is cut short, a failed restore prints no traceback of its abandoned reads
  (orbax and tensorstore print dozens, some only when Python collects them): one warning each."""
  import pathlib
  import shutil
  import subprocess
  import sys

  base = tmp_path / 'base'
  store = checkpoint.CheckpointStore(str(base))
  data = _data_iter()
  for step in (1, 2):
    store.save(step, _state(float(step)), data)
  store.close()
  copies = []
  files = sorted(
      p.relative_to(base)
      for p in base.rglob('*')
      if p.is_file()
      and p.parts[-4:-2] != ('checkpoints', '1')
      and '2/state' in p.relative_to(base).as_posix()
  )
  for i, rel in enumerate(files):
    copy = tmp_path / f'copy_{i}'
    shutil.copytree(base, copy)
    with open(copy / rel, 'r+b') as f:
      f.truncate((copy / rel).stat().st_size // 2)
    copies.append(copy)
  repo = pathlib.Path(__file__).resolve().parent.parent
  proc = subprocess.run(
      [sys.executable, '-c', _RESTORE_EACH, *map(str, copies)],
      cwd=repo,
      capture_output=True,
      text=True,
      timeout=300,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  restored = dict(line.split() for line in proc.stdout.splitlines())
  assert set(restored.values()) <= {'1', '2'} and '1' in restored.values()
  failed = sum(v == '1' for v in restored.values())
  for noise in ('Traceback', 'Event loop is closed', 'never retrieved'):
    assert noise not in proc.stderr, proc.stderr[-3000:]
  assert proc.stderr.count('cannot be restored') == failed, proc.stderr[-3000:]


def test_a_damaged_best_checkpoint_gives_none(store):
  store.save_best(1, _state(1.0), 1.0)
  store.wait()
  _truncate_largest_file(store.best_dir / '1' / 'state')
  assert store.restore_best(_state(0.0)) is None
  assert store.best_step() is None
