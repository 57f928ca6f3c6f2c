"""Several runs at once and several hosts: on 8 fake CPU devices, `--parallel=4` (each run on its own
2 devices) gives bit for bit the results of each run alone on 2 devices, the same table rows as one
run at a time on all 8, and two hosts' shares (`--share=0/2`, `1/2`) give the same tables, written
once, when the last run is settled. Runs in a fresh process (tests/helpers/parallel_suite.py):
the device count is fixed when JAX starts.

Also, without JAX devices: the order a queue runs its runs in, device groups, the share flag, the
tables rule of several hosts, and a stop signal reaching runs in other threads."""

import json
import os
import signal
import subprocess
import sys
import threading

import pytest

from ganomaly_jax.runtime import parallel, preemption, rundir
from ganomaly_jax.experiments import benchmark, placement, run_queue, suites, tables

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HELPER = os.path.join(REPO, 'tests', 'helpers', 'parallel_suite.py')
TRAINED = ['1/ganomaly/seed-0', '1/ganomaly/seed-1', '2/ganomaly/seed-0', '2/ganomaly/seed-1']
# Table columns that differ between two sessions of equal results.
SESSION = ('commit',)


@pytest.fixture(scope='module')
def outcome(tmp_path_factory):
  out = tmp_path_factory.mktemp('parallel_queue')
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', JAX_PLATFORMS='cpu')
  proc = subprocess.run(
      [sys.executable, HELPER, '--devices=8', f'--out={out}'],
      cwd=REPO,
      env=env,
      capture_output=True,
      text=True,
      timeout=900,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(out / 'outcome.json') as f:
    return json.load(f)


def _rows(rows):
  return [{k: v for k, v in row.items() if k not in SESSION} for row in rows]


@pytest.mark.slow
def test_four_runs_at_once_each_on_two_of_eight_devices(outcome):
  par = outcome['parallel']
  assert outcome['device_count'] == 8 and par['status'] == ['done'] * 8
  used = [tuple(par['devices'][name]) for name in TRAINED]
  assert all(len(group) == 2 for group in used)
  assert len(set(used)) == 4, used  # four groups were in flight
  assert sorted(d for group in set(used) for d in group) == list(range(8))


@pytest.mark.slow
def test_runs_at_once_equal_each_run_alone(outcome):
  par, alone = outcome['parallel']['results'], outcome['alone']['results']
  assert sorted(alone) == TRAINED
  for name in TRAINED:
    assert par[name] == alone[name], name  # bit for bit: every metric, threshold and score range


@pytest.mark.slow
def test_runs_at_once_give_the_rows_of_one_at_a_time(outcome):
  assert len(outcome['parallel']['rows']) == 8
  assert _rows(outcome['parallel']['rows']) == _rows(outcome['sequential']['rows'])


@pytest.mark.slow
def test_two_hosts_share_the_suite_and_the_last_writes_the_tables(outcome):
  shared = outcome['shared']
  first, second = shared['ran']
  assert not set(first) & set(second) and len(first) + len(second) == 8
  assert shared['rows_after_first'] == []  # host 0 finished first: no partial tables
  assert _rows(shared['rows']) == _rows(outcome['parallel']['rows'])
  assert all(shared['results'][n] == outcome['parallel']['results'][n] for n in TRAINED)
  assert set(shared['results']) == set(outcome['parallel']['results'])


def test_a_method_runs_together_and_hosts_take_every_nth():
  keys = ['a', 'b', 'pca', 'a', 'b', 'pca']  # class-major, as a suite lists its runs
  assert run_queue.execution_order(keys) == [0, 3, 1, 4, 2, 5]
  assert run_queue.execution_order(keys, placement.Share(0, 2)) == [0, 1, 2]
  assert run_queue.execution_order(keys, placement.Share(1, 2)) == [3, 4, 5]


def test_device_groups_split_the_devices_or_share_one():
  devices = list(range(8))
  assert parallel.device_groups(4, devices) == [[0, 1], [2, 3], [4, 5], [6, 7]]
  assert parallel.device_groups(3, devices) == [[0, 1], [2, 3], [4, 5]]  # two stay idle
  assert parallel.device_groups(3, ['cpu']) == [['cpu']] * 3  # one device: the runs share it
  with pytest.raises(ValueError, match='only 8 devices'):
    parallel.device_groups(9, devices)


def test_share_flag(monkeypatch):
  assert placement.Share.parse('1/4') == placement.Share(1, 4)
  for bad in ('4/4', '1', 'a/b', '-1/2'):
    with pytest.raises(ValueError, match='must be I/N'):
      placement.Share.parse(bad)
  monkeypatch.delenv('JAX_PROCESS_ID', raising=False)
  monkeypatch.delenv('JAX_NUM_PROCESSES', raising=False)
  assert placement.Share.parse('auto') == placement.Share(0, 1)
  monkeypatch.setenv('JAX_PROCESS_ID', '2')
  monkeypatch.setenv('JAX_NUM_PROCESSES', '3')
  assert placement.Share.parse('auto') == placement.Share(2, 3)


def _fake_train(config, workdir):
  os.makedirs(workdir, exist_ok=True)
  if config.seed == 1 and config.method == 'grid_mask':
    raise ValueError('bad data')
  results = {'image_auroc': 0.5 + 0.01 * config.seed, 'steps': config.train.num_steps}
  rundir.write_json(rundir.path(workdir, rundir.RESULTS), results)
  return results


def _fake_baseline(run):
  results = {'baseline': run.method.baseline, 'image_auroc': 0.6}
  os.makedirs(run.workdir, exist_ok=True)
  rundir.write_json(rundir.path(run.workdir, rundir.RESULTS), results)
  return results


def test_hosts_write_the_tables_once_every_run_is_settled(tmp_path, monkeypatch):
  suite = suites.load_suite('digits:classes=1,seeds=0+1,methods=ganomaly+grid_mask+pca,steps=2')
  monkeypatch.setattr(benchmark, '_run_baseline', _fake_baseline)
  root = str(tmp_path / 'bench')
  first = benchmark.run_benchmark(suite, root, train_fn=_fake_train, share=placement.Share(0, 2))
  assert not os.path.exists(os.path.join(root, tables.RESULTS_CSV))  # host 1 has not run yet
  second = benchmark.run_benchmark(suite, root, train_fn=_fake_train, share=placement.Share(1, 2))
  ran = [r.run.name for r in first + second if r.status == 'done' or r.status.startswith('failed')]
  assert sorted(ran) == sorted(r.run.name for r in first)  # each run once, on one host
  rows = tables.read_csv(root)
  assert len(rows) == 6
  # The failure on one host reached the other host's tables through the run's sidecar.
  assert [r['status'] for r in rows if r['method'] == 'grid_mask'] == [
      'skipped',
      'failed: bad data',
  ]


def test_a_stop_signal_reaches_runs_in_other_threads():
  seen = {}
  started, asked = threading.Event(), threading.Event()

  def run():
    with preemption.StopRequest() as stop:
      started.set()
      asked.wait(10)
      seen['stop'] = stop.should_stop(1)
      seen['signal'] = stop.signal_name

  with preemption.StopRequest() as main:
    worker = threading.Thread(target=run)
    worker.start()
    started.wait(10)
    os.kill(os.getpid(), signal.SIGTERM)  # handled in this (the main) thread
    asked.set()
    worker.join(10)
    assert main.requested
  assert seen == {'stop': True, 'signal': 'SIGTERM'}


def test_a_stop_signal_stops_the_runs_in_flight_and_starts_no_more():
  from ganomaly_jax.experiments import run_queue as rq

  records = [rq.Record(f'run{i}') for i in range(5)]
  started = []

  def execute(run, devices):
    started.append((run, devices))
    with preemption.StopRequest() as stop:  # as the training loop does, in the run's thread
      while not stop.should_stop(1):
        threading.Event().wait(0.01)
    return {'preempted': True, 'steps': 1}

  timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM))
  timer.start()
  try:
    rq.run_all(
        records,
        name=str,
        workdir=lambda run: run,
        finished=lambda run: None,
        execute=execute,
        run_info=lambda run: {},
        write_tables=lambda: None,
        device_groups=parallel.device_groups(2),
    )  # the one CPU device, shared
  finally:
    timer.cancel()
  assert len(started) == 2  # two in flight, no third started
  assert [r.status for r in records] == ['preempted', 'preempted', 'pending', 'pending', 'pending']
