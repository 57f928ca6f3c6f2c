"""Multi-host: two local processes over loopback (4 fake CPU devices each) train like one process.

Every run here is `python -m ganomaly_jax.main` with an explicit coordinator on 127.0.0.1; the
processes share one workdir, as hosts of a pod share a bucket. The first run is preempted (SIGTERM
to one process, as a host maintenance event would), the second resumes it to the end.

What "agrees with a single process" means: each process reads its own slice of the training set
(grain slicing by process index), so the global batches of a 2-process run are not those of a
1-process run, and its losses differ legitimately. The reference therefore replays the *same* global
batches (both slices, in process order) through train.py's step in this process, on one device
(tests/test_parallel.py shows that 1 and 8 devices agree): parameters, logged losses and the final
test metrics must then match to float round-off. That checks the global-batch assembly, the
replicated state, the checkpoint written by two processes and restored by one, joint preemption,
exact resume, and the evaluation gathered across processes.
"""

import glob
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from ganomaly_jax import train
from ganomaly_jax.runtime import checkpoint, parallel, rundir
from helpers import REPO, tiny, train_steps

LOCAL_DEVICES = 4
RTOL = 1e-5


def free_port() -> int:
  try:
    import portpicker

    return portpicker.pick_unused_port()
  except ImportError:  # portpicker is not a dependency; the kernel's choice is nearly as good
    with socket.socket() as s:
      s.bind(('127.0.0.1', 0))
      return s.getsockname()[1]


def start(
    spec: str,
    workdir: str,
    process_id: int,
    port: int,
    *flags: str,
    timeout_s: int = 60,
    num_processes: int = 2,
    cache: str | None = None,
    aliases: bool = False,
) -> subprocess.Popen:
  """One process of a multi-host run of `ganomaly_jax.main`.

  The topology is given by JAX's variable names (JAX_COORDINATOR_ADDRESS, ...), or with
  `aliases=True` by the project's earlier GANOMALY_* names, which must still work.
  `cache`: a JAX compilation cache directory, so that a later run of the same programs (the resume)
  skips most compilation: only a speed-up, the programs are the same.
  """
  names = parallel.ENV_ALIASES if aliases else {k: k for k in parallel.ENV_ALIASES}
  env = {
      k: v
      for k, v in os.environ.items()
      if not k.startswith('GANOMALY_') and k not in parallel.ENV_ALIASES
  }
  if cache:
    env.update(
        {
            'JAX_COMPILATION_CACHE_DIR': cache,
            'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
            'JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES': '0',
        }
    )
  env.update(
      {
          'XLA_FLAGS': f'--xla_force_host_platform_device_count={LOCAL_DEVICES}',
          'JAX_PLATFORMS': 'cpu',
          'TF_CPP_MIN_LOG_LEVEL': '3',
          'GANOMALY_DISTRIBUTED': '1',
          names[parallel.ENV_COORDINATOR]: f'127.0.0.1:{port}',
          names[parallel.ENV_NUM_PROCESSES]: str(num_processes),
          names[parallel.ENV_PROCESS_ID]: str(process_id),
          'GANOMALY_INIT_TIMEOUT': str(timeout_s),
      }
  )
  cmd = [
      sys.executable,
      '-m',
      'ganomaly_jax.main',
      f'--config={spec}',
      f'--workdir={workdir}',
      *flags,
  ]
  return subprocess.Popen(
      cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
  )


def finish(procs: list[subprocess.Popen], timeout: float = 300) -> list[tuple[int, str]]:
  """Waits for all processes; kills the rest if one hangs (a lone process would wait forever in a
  collective). Returns [(returncode, stderr)]."""
  deadline = time.time() + timeout
  results = []
  for proc in procs:
    try:
      _, err = proc.communicate(timeout=max(deadline - time.time(), 1))
    except subprocess.TimeoutExpired:
      for p in procs:
        p.kill()
      _, err = proc.communicate()
    results.append((proc.returncode, err))
  return results


def run_two(spec: str, workdir: str, cache: str) -> list[tuple[int, str]]:
  port = free_port()
  results = finish([start(spec, workdir, i, port, cache=cache) for i in range(2)])
  for i, (rc, err) in enumerate(results):
    assert rc == 0, f'process {i} failed:\n{err[-3000:]}'
  return results


def logged(workdir: str) -> dict[int, dict[str, float]]:
  with open(os.path.join(workdir, 'train_metrics.jsonl')) as f:
    return {row.pop('step'): row for row in map(json.loads, f)}


@pytest.mark.slow
@pytest.mark.multiprocess
def test_preempt_resume_and_match_one_process(tmp_path):
  workdir, cache = str(tmp_path / 'shared'), str(tmp_path / 'jax_cache')
  port = free_port()
  # A checkpoint every step: the joint stop always comes on a step that has just saved one, which
  # the stop must not save again (tests/test_reliability.py has the one-process case).
  args = {**tiny.SMALL_DATA, 'checkpoint_every': 1}
  procs = [start(tiny.spec(**args, steps=100000), workdir, i, port, cache=cache) for i in range(2)]
  # Preempt one host once training is under way (the chief has logged step 2): JAX's preemption
  # sync point must stop *both* processes at the same step, with a checkpoint.
  metrics = os.path.join(workdir, 'train_metrics.jsonl')
  deadline = time.time() + 240
  while (
      not os.path.exists(metrics)
      and time.time() < deadline
      and all(p.poll() is None for p in procs)
  ):
    time.sleep(0.2)
  procs[1].send_signal(signal.SIGTERM)
  first = finish(procs)
  stopped = set()
  for i, (rc, err) in enumerate(first):
    assert rc == 0, f'process {i} failed:\n{err[-3000:]}'
    stopped |= set(re.findall(r'Preempted \(\w+\) at step (\d+)', err))
  assert len(stopped) == 1, f'processes stopped at different steps: {stopped}'
  preempted_at = int(stopped.pop())
  assert preempted_at >= 2 and rundir.read_results(workdir) is None
  assert 'JAX process 1 / 2' in first[1][1]
  assert 'All 2 processes run the same config' in first[0][1]

  # Resume: the same command (with a reachable step count) continues from the checkpoint.
  num_steps = preempted_at + 1
  spec = tiny.spec(**args, steps=num_steps)
  second = run_two(spec, workdir, cache)
  assert all(f'Resumed from step {preempted_at}' in err for _, err in second)
  results = rundir.read_results(workdir)
  assert results['steps'] == num_steps

  # Reference: the same global batches through train.py's step, in this process.
  config = train_steps.load(spec)
  mesh = parallel.make_mesh(jax.devices()[:1])
  batches = train_steps.global_batches(config, num_steps, num_processes=2)
  ref_state, ref_history = train_steps.run_steps(config, batches, mesh)

  store = checkpoint.CheckpointStore(workdir)
  restored, step = store.restore_latest(ref_state, None)  # ref_state: structure and shardings
  store.close()
  assert step == num_steps
  ours = train_steps.flat_leaves(jax.device_get(ref_state))
  theirs = train_steps.flat_leaves(jax.device_get(restored))
  assert set(ours) == set(theirs)
  for key in ours:
    scale = max(float(np.max(np.abs(ours[key]))), 1e-12) if ours[key].size else 1.0
    np.testing.assert_allclose(theirs[key], ours[key], rtol=0, atol=RTOL * scale, err_msg=key)

  # Logged losses: step 2 is the mean of steps 1-2 (first run); the last step is logged alone
  # (the resumed run's history starts empty).
  logs = logged(workdir)
  for key in ('g_loss', 'd_loss', 'g_con', 'g_lat'):
    np.testing.assert_allclose(
        logs[2][key], np.mean([h[key] for h in ref_history[:2]]), rtol=RTOL, err_msg=key
    )
    np.testing.assert_allclose(logs[num_steps][key], ref_history[-1][key], rtol=RTOL, err_msg=key)

  # Final evaluation gathered over two processes == the same checkpoint evaluated by one.
  copy = str(tmp_path / 'single')
  shutil.copytree(workdir, copy)
  # train.py restores the data iterator even for mode=eval, and grain keeps one file per process
  # ('process_0-of-2.json'), which a 1-process restore cannot find. The iterator is not used in
  # eval, so give it a 1-process file (drop this once mode=eval stops restoring the iterator).
  for data_dir in glob.glob(os.path.join(copy, 'checkpoints', '*', 'data')):
    shutil.copy(
        os.path.join(data_dir, 'process_0-of-2.json'), os.path.join(data_dir, 'process_0-of-1.json')
    )
  config.unlock()
  config.mode = 'eval'
  config.lock()
  single = train.train_and_evaluate(config, copy)
  for key in ('image_auroc', 'image_ap', 'image_f1', 'selected_step', 'num_test'):
    np.testing.assert_allclose(results[key], single[key], rtol=1e-6, err_msg=key)


@pytest.mark.slow
@pytest.mark.multiprocess
def test_startup_failures_give_one_clear_line(tmp_path):
  # Disagreeing configs: process 1 was started with another seed. Meanwhile a third process waits
  # for a coordinator that nobody runs.
  port, dead_port = free_port(), free_port()
  spec = tiny.spec(**tiny.SMALL_DATA, steps=1)
  procs = [
      start(spec, str(tmp_path / 'w'), 0, port),
      start(spec, str(tmp_path / 'w'), 1, port, '--config.seed=1'),
      start(spec, str(tmp_path / 'x'), 1, dead_port, timeout_s=2, aliases=True),
  ]
  (rc0, err0), (rc1, err1), (rc_dead, err_dead) = finish(procs, timeout=240)

  def error_lines(err):
    return [line for line in err.splitlines() if line.startswith('error:')]

  assert rc1 == 1, err1[-3000:]
  assert error_lines(err1) == [
      'error: processes disagree on the config: process 1 differs from process 0 in seed=1 '
      '(process 0: 0); start every process with the same command and config file.'
  ]
  assert rc0 == 1, err0[-3000:]
  assert error_lines(err0)[0].startswith(
      'error: processes disagree on the config: process(es) 1 differ from process 0'
  )
  assert not os.path.exists(tmp_path / 'w' / 'checkpoints')  # nothing ran

  assert rc_dead == 1, err_dead[-3000:]
  assert error_lines(err_dead) == [
      f'error: could not reach the JAX coordinator at 127.0.0.1:{dead_port} within 2 s (process 1 '
      'of 2); check the address and port (firewall), and that every process was started with the '
      'same JAX_NUM_PROCESSES.'
  ]
  assert 'Traceback' not in err_dead and 'Check failure' not in err_dead


def test_distributed_settings_from_env():
  s = parallel.DistributedSettings.from_env({})
  assert s == parallel.DistributedSettings() and not s.explicit and s.timeout_s == 300
  jax_names = {
      'JAX_COORDINATOR_ADDRESS': '10.0.0.2:8476',
      'JAX_NUM_PROCESSES': '4',
      'JAX_PROCESS_ID': '3',
      'GANOMALY_INIT_TIMEOUT': '30',
  }
  aliases = {
      'GANOMALY_COORDINATOR': '10.0.0.2:8476',
      'GANOMALY_NUM_PROCESSES': '4',
      'GANOMALY_PROCESS_ID': '3',
      'GANOMALY_INIT_TIMEOUT': '30',
  }
  # JAX's names, the project's aliases, or both with the same values: the same settings.
  for env in (jax_names, aliases, {**aliases, **jax_names}):
    s = parallel.DistributedSettings.from_env(env)
    assert (s.coordinator_address, s.num_processes, s.process_id, s.timeout_s) == (
        '10.0.0.2:8476',
        4,
        3,
        30,
    )
  assert 'auto-detected' in parallel.DistributedSettings().timeout_message()
  for env, name in (
      ({'JAX_COORDINATOR_ADDRESS': 'host'}, 'JAX_COORDINATOR_ADDRESS'),
      ({'GANOMALY_COORDINATOR': 'host'}, 'GANOMALY_COORDINATOR'),
      ({'JAX_NUM_PROCESSES': 'two'}, 'JAX_NUM_PROCESSES'),
      ({'GANOMALY_NUM_PROCESSES': 'two'}, 'GANOMALY_NUM_PROCESSES'),
      ({'GANOMALY_INIT_TIMEOUT': '0'}, 'GANOMALY_INIT_TIMEOUT'),
      ({'JAX_NUM_PROCESSES': '2', 'JAX_PROCESS_ID': '2'}, 'JAX_PROCESS_ID'),
      (
          {'JAX_PROCESS_ID': '1', 'GANOMALY_PROCESS_ID': '0'},
          'JAX_PROCESS_ID=.1. and its alias GANOMALY_PROCESS_ID=.0. disagree',
      ),
  ):
    with pytest.raises(ValueError, match=name):
      parallel.DistributedSettings.from_env(env)


def test_wants_distributed():
  config = train_steps.load()
  assert not parallel.wants_distributed(config, {})
  assert parallel.wants_distributed(config, {'GANOMALY_DISTRIBUTED': '1'})
  assert not parallel.wants_distributed(config, {'GANOMALY_DISTRIBUTED': '0'})
  parallel.check_same_config(config, 'w')  # one process: nothing to compare, no collective
