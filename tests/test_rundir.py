"""The run directory on a local disk and on `gs://` (in memory: tests/fake_gcs.py).

Every case that touches files runs twice: on a local tmp_path and on `gs://test-bucket/run` served
from memory, so the same epath calls train.py, sweep.py and evaluate.py make are exercised with a
real gs:// string.
"""

import os
import subprocess
import sys

from etils import epath
import numpy as np
import pytest

from ganomaly_jax.runtime import rundir
from ganomaly_jax.evaluation import plots, report
from helpers import REPO


@pytest.fixture(params=['local', 'gs'])
def root(request, tmp_path) -> str:
  """A run directory: a local path, or gs://test-bucket/run in memory."""
  if request.param == 'local':
    return str(tmp_path / 'run')
  return request.getfixturevalue('gs_root')


def test_gs_paths_stay_gs_and_local_paths_become_absolute(root):
  p = rundir.path(root, rundir.RESULTS)
  if root.startswith('gs://'):
    assert str(p) == 'gs://test-bucket/run/results.json'
  else:
    assert os.path.isabs(str(p)) and str(p).endswith('run/results.json')


def test_json_round_trip_is_atomic(root):
  rundir.path(root).mkdir(parents=True, exist_ok=True)
  target = rundir.path(root, rundir.RESULTS)
  rundir.write_json(target, {'steps': 3, 'image_auroc': 0.5})
  assert rundir.read_results(root) == {'steps': 3, 'image_auroc': 0.5}
  with pytest.raises(ValueError):  # a payload that cannot be written (a circular reference)
    loop = {}
    loop['self'] = loop
    rundir.write_json(target, loop)
  # The old file is whole, and no temporary file is left beside it.
  assert rundir.read_results(root)['steps'] == 3
  assert sorted(p.name for p in rundir.path(root).iterdir()) == [rundir.RESULTS]


def test_finished_rule(root):
  assert not rundir.is_finished(None, 5)
  assert not rundir.is_finished({}, 5)
  assert not rundir.is_finished({'steps': 4}, 5)
  assert rundir.is_finished({'steps': 5}, 5)
  assert rundir.is_finished({'steps': 6}, 5)
  assert rundir.finished_results(root, 5) is None  # no results.json yet
  rundir.path(root).mkdir(parents=True, exist_ok=True)
  rundir.write_json(rundir.path(root, rundir.RESULTS), {'steps': 5})
  assert rundir.finished_results(root, 5) == {'steps': 5}
  assert rundir.finished_results(root, 6) is None


def test_curves_keep_the_last_value_of_a_relogged_step_and_skip_a_cut_line(root):
  rundir.path(root).mkdir(parents=True, exist_ok=True)
  rundir.append_curves(root, 2, {'g_loss': 1.0, 'd_loss': 0.5})
  rundir.append_curves(root, 4, {'g_loss': 0.8, 'd_loss': 0.4})
  rundir.append_curves(root, 2, {'g_loss': 0.9, 'd_loss': 0.6})  # a resumed session re-logs step 2
  with rundir.path(root, rundir.CURVES).open('a') as f:
    f.write('{"step": 6, "g_lo')  # killed mid-line
  assert rundir.read_curves(root) == {
      'g_loss': [(2, 0.9), (4, 0.8)],
      'd_loss': [(2, 0.6), (4, 0.4)],
  }


def test_move_aside_keeps_everything(root):
  base = rundir.path(root)
  (base / 'checkpoints' / '2' / 'state').mkdir(parents=True)
  (base / 'checkpoints' / '2' / 'state' / 'array').write_bytes(b'\x00\x01')
  (base / 'best' / '2').mkdir(parents=True)
  (base / 'best' / '2' / 'meta').write_text('m')
  for name in (rundir.RESULTS, rundir.CONFIG):
    rundir.write_json(base / name, {'name': name})
  rundir.append_curves(root, 2, {'g_loss': 1.0})
  (base / 'events.out.tfevents.1').write_text('tb')  # TensorBoard keeps appending: stays

  target = rundir.move_aside(root, stamp='20260101_000000')
  assert target == base / 'old_20260101_000000'
  assert sorted(p.name for p in base.iterdir()) == ['events.out.tfevents.1', 'old_20260101_000000']
  assert sorted(p.name for p in target.iterdir()) == sorted(rundir.RESTART_MOVES)
  assert (target / 'checkpoints' / '2' / 'state' / 'array').read_bytes() == b'\x00\x01'
  assert (target / 'best' / '2' / 'meta').read_text() == 'm'
  assert rundir.read_json(target / rundir.RESULTS) == {'name': rundir.RESULTS}
  assert rundir.read_curves(target) == {'g_loss': [(2, 1.0)]}
  assert rundir.move_aside(root) is None  # nothing left to move


def test_architecture_check_names_the_differing_parameters():
  saved = {
      'g_params/enc/conv/kernel': (4, 4, 3, 8),
      'g_opt/0/mu/enc/conv/kernel': (4, 4, 3, 8),
      'step': (),
  }
  rundir.check_parameters(None, saved, 'w')  # nothing saved: nothing to compare
  rundir.check_parameters(saved, dict(saved), 'w')
  # Optimizer state and counters are not parameters: a difference there alone resumes.
  rundir.check_parameters(saved, {**saved, 'g_opt/0/mu/enc/conv/kernel': (1,)}, 'w')
  wider = {**saved, 'g_params/enc/conv/kernel': (4, 4, 3, 16), 'd_params/head/kernel': (8, 1)}
  with pytest.raises(rundir.TrainingError) as info:
    rundir.check_parameters(saved, wider, 'w')
  message = str(info.value)
  assert 'different architecture' in message
  assert 'g_params/enc/conv/kernel (4, 4, 3, 8) -> (4, 4, 3, 16)' in message
  assert 'd_params/head/kernel absent -> (8, 1)' in message


def test_runtime_changes_come_from_config_json(root):
  assert rundir.runtime_changes({'dtype': 'float32'}, root) == []  # no config.json yet
  rundir.path(root).mkdir(parents=True, exist_ok=True)
  rundir.write_json(
      rundir.path(root, rundir.CONFIG),
      {'config': {'runtime': {'dtype': 'float32', 'cpu_kernels': 'auto'}}},
  )
  changes = rundir.runtime_changes({'dtype': 'bfloat16', 'cpu_kernels': 'auto', 'new': 1}, root)
  assert changes == [('dtype', 'bfloat16', 'float32')]


def test_pictures_and_report_are_written_through_epath(root):
  labels, scores = np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])
  out = plots.plot_roc_pr(labels, scores, rundir.path(root, 'roc_pr.png'))
  assert epath.Path(out).read_bytes().startswith(b'\x89PNG')
  plots.plot_loss_curves({'g_loss': [(1, 1.0), (2, 0.5)]}, rundir.path(root, 'loss_curves.png'))
  assert rundir.path(root, 'loss_curves.png').exists()
  page = report.write_paged_report(
      rundir.path(root, 'report'),
      [{'name': 'a', 'score': 0.5, 'map_png': 'maps/a.png'}],
      {'auroc': 0.5},
      'test',
  )
  text = epath.Path(page).read_text()
  assert '<h1>test</h1>' in text and '"maps/a.png"' in text
  assert sorted(p.name for p in rundir.path(root, 'report').iterdir()) == ['index.html']


def test_gs_workdir_has_no_local_shadow(gs_root, tmp_path, monkeypatch):
  # A gs:// workdir must never be mistaken for a relative local folder named 'gs:'.
  monkeypatch.chdir(tmp_path)
  rundir.path(gs_root).mkdir(parents=True, exist_ok=True)
  rundir.write_json(rundir.path(gs_root, rundir.RESULTS), {'steps': 1})
  assert os.listdir(tmp_path) == []


@pytest.mark.slow
def test_rundir_and_infer_import_without_tensorflow_or_clu():
  code = (
      'import sys; import ganomaly_jax.runtime.rundir, ganomaly_jax.infer; '
      "print(sorted(m for m in ('tensorflow', 'clu') if m in sys.modules))"
  )
  out = subprocess.run(
      [sys.executable, '-c', code],
      cwd=REPO,
      capture_output=True,
      text=True,
      env={**os.environ, 'PYTHONPATH': REPO},
      timeout=120,
      check=True,
  )
  assert out.stdout.strip() == '[]', out.stderr[-2000:]


def test_trim_curves_drops_rows_past_the_restored_step(root):
  rundir.path(root).mkdir(parents=True, exist_ok=True)
  for step in (2, 4, 6):
    rundir.append_curves(root, step, {'g_loss': float(step)})
  with rundir.path(root, rundir.CURVES).open('a') as f:
    f.write('{"step": 8, "g_lo')  # killed mid-line
  assert rundir.trim_curves(root, 4) == 2
  assert rundir.read_curves(root) == {'g_loss': [(2, 2.0), (4, 4.0)]}
  assert rundir.trim_curves(root, 4) == 0  # nothing more to drop: the file is not rewritten
  assert rundir.trim_curves(root, 0) == 2
  assert rundir.read_curves(root) == {}


# --- One run per workdir (issue 22) ----------------------------------------------------------

# Holds the lock of argv[1] until killed; prints 'locked' once it does.
_HOLDER = (
    'import sys, time; from ganomaly_jax.runtime import rundir; '
    'lock = rundir.WorkdirLock(sys.argv[1]); lock.acquire(); print("locked", flush=True); '
    'time.sleep(600)'
)


def test_a_second_run_is_refused_naming_the_holder_and_a_killed_holder_does_not_block(tmp_path):
  workdir = str(tmp_path / 'run')
  holder = subprocess.Popen(
      [sys.executable, '-c', _HOLDER, workdir],
      cwd=REPO,
      text=True,
      stdout=subprocess.PIPE,
      env={**os.environ, 'PYTHONPATH': REPO},
  )
  try:
    assert holder.stdout.readline().strip() == 'locked'
    with pytest.raises(rundir.TrainingError) as info:
      rundir.WorkdirLock(workdir).acquire()
    message = str(info.value)
    assert '\n' not in message and f'pid {holder.pid}' in message and 'in use' in message
  finally:
    holder.kill()  # SIGKILL: no chance to release anything
    holder.wait()
  with rundir.WorkdirLock(workdir):  # the kernel dropped the dead process's lock
    with pytest.raises(rundir.TrainingError):  # and the lock holds within one process too
      rundir.WorkdirLock(workdir).acquire()


def test_a_lock_on_a_new_workdir_leaves_nothing_if_nothing_was_written(tmp_path):
  with rundir.WorkdirLock(tmp_path / 'new'):
    assert (tmp_path / 'new' / rundir.LOCK).is_file()
  assert not (tmp_path / 'new').exists()
  with rundir.WorkdirLock(tmp_path / 'new'):
    (tmp_path / 'new' / 'results.json').write_text('{}')
  assert sorted(os.listdir(tmp_path / 'new')) == sorted([rundir.LOCK, 'results.json'])


def test_gs_lease_refuses_a_live_holder_and_takes_over_a_stale_one(gs_root):
  import json
  import time

  first = rundir.WorkdirLock(gs_root, ttl_s=60, settle_s=0)
  first.acquire()
  lease = json.loads(rundir.path(gs_root, rundir.LOCK).read_text())
  assert {'host', 'pid', 'started', 'heartbeat', 'expires'} <= set(lease)
  with pytest.raises(rundir.TrainingError, match=f'pid {os.getpid()} on '):
    rundir.WorkdirLock(gs_root, settle_s=0).acquire()
  first.release()
  assert not rundir.path(gs_root, rundir.LOCK).exists()

  # A holder that died without releasing: an expired lease, and a dead pid on this host.
  for stale in (
      {**lease, 'pid': 1, 'host': 'elsewhere', 'expires': time.time() - 1},
      {**lease, 'pid': 2**22 + 12345, 'expires': time.time() + 600},
  ):
    rundir.write_json(rundir.path(gs_root, rundir.LOCK), stale)
    with rundir.WorkdirLock(gs_root, settle_s=0):
      assert json.loads(rundir.path(gs_root, rundir.LOCK).read_text())['pid'] == os.getpid()


def test_gs_lease_is_renewed_while_held(gs_root):
  import json
  import time

  with rundir.WorkdirLock(gs_root, ttl_s=0.4, settle_s=0):
    before = json.loads(rundir.path(gs_root, rundir.LOCK).read_text())['expires']
    time.sleep(0.5)
    after = json.loads(rundir.path(gs_root, rundir.LOCK).read_text())['expires']
    assert after > before > time.time() - 0.5
