"""Runs that train as one group (`runtime/step_group.py`): rounds, departures, the group program,
the queue's units, and seeds at the command line that equal the same seeds trained alone."""

import functools
import json
import os
import signal
import threading

import jax
import jax.numpy as jnp
import pytest

from ganomaly_jax import programs, train
from ganomaly_jax.cpu import kernels
from ganomaly_jax.experiments import run_queue
from ganomaly_jax.runtime import checkpoint, rundir, step_group
from helpers import tiny
from test_reliability import run_main  # the train command on the tiny config, SIGKILLed on request

# ---- the rendezvous, with plain Python functions as steps ----


def _fake_program(calls):
  """A group 'program' that adds one to each run's state and records the round's size."""

  def program(k):
    def run(states, batches, rngs):
      calls.append(k)
      return tuple(s + 1 for s in states), tuple({'batch': b} for b in batches)

    return run

  return program


def _own_step(state, batch, rng):
  return state + 1, {'batch': batch, 'alone': True}


def _threads(target, count):
  threads = [threading.Thread(target=target, args=(i,)) for i in range(count)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(timeout=30)
  assert not any(t.is_alive() for t in threads), 'a run of the group never got its step back'


def test_every_round_holds_every_run_still_in_the_group():
  group, calls, seen = step_group.StepGroup(3), [], {}
  program = _fake_program(calls)
  steps_of = {0: 2, 1: 4, 2: 4}  # run 0 ends after two steps: the last two rounds hold two runs

  def member(i):
    state = 10 * i
    for n in range(steps_of[i]):
      state, metrics = group.step(i, _own_step, program, (state, f'{i}-{n}', None))
      assert metrics['batch'] == f'{i}-{n}'  # each run gets its own step's outcome back
    group.leave(i)
    seen[i] = state

  _threads(member, 3)
  assert seen == {0: 2, 1: 14, 2: 24}
  assert calls == [3, 3, 2, 2]
  assert group.rounds == group.grouped_rounds == 4


def test_runs_of_different_programs_never_share_a_call():
  group, calls_a, calls_b, seen = step_group.StepGroup(3), [], [], {}
  programs_of = {0: _fake_program(calls_a), 1: _fake_program(calls_b), 2: _fake_program(calls_a)}
  programs_of[2] = programs_of[0]  # runs 0 and 2 share a program, run 1 has its own

  def member(i):
    state, metrics = group.step(i, _own_step, programs_of[i], (0, f'b{i}', None))
    seen[i] = metrics
    group.leave(i)

  _threads(member, 3)
  assert calls_a == [2] and calls_b == []  # run 1 took its own step
  assert seen[1]['alone'] and 'alone' not in seen[0] and 'alone' not in seen[2]
  assert group.rounds == 1


def test_a_single_run_left_steps_with_its_own_step():
  group, calls, outcomes = step_group.StepGroup(2), [], []
  group.leave(1)  # run 1 failed before its first step
  outcomes.append(group.step(0, _own_step, _fake_program(calls), (0, 'b', None)))
  assert outcomes == [(1, {'batch': 'b', 'alone': True})] and calls == []
  assert group.rounds == 1 and group.grouped_rounds == 0


def test_a_failed_round_raises_in_each_of_its_runs():
  group, errors = step_group.StepGroup(2), []

  def broken(k):
    def run(*args):
      raise RuntimeError('out of memory')

    return run

  def member(i):
    try:
      group.step(i, _own_step, broken, (0, 'b', None))
    except RuntimeError as e:
      errors.append((i, str(e)))
    group.leave(i)

  _threads(member, 2)
  assert sorted(errors) == [(0, 'out of memory'), (1, 'out of memory')]


def test_run_together_returns_each_value_or_error_and_the_others_finish():
  def ok(i):
    membership = step_group.current()
    assert membership is not None and membership.index == i
    return i

  def bad():
    raise ValueError('no such dataset')

  outcomes = step_group.run_together([lambda: ok(0), bad, lambda: ok(2)])
  assert outcomes[0] == 0 and outcomes[2] == 2
  assert isinstance(outcomes[1], ValueError)
  assert step_group.current() is None  # this thread is in no group


# ---- the queue's units ----


def test_queue_runs_consecutive_runs_of_one_key_as_groups(tmp_path):
  runs = ['a0', 'a1', 'a2', 'b0', 'a3', 'base']
  key = {'a': 'A', 'b': 'B', 'base': None}
  records = [run_queue.Record(run) for run in runs]
  membership = {}

  def execute(run, devices):
    current = step_group.current()
    membership[run] = None if current is None else (id(current.group), current.index)
    return {'image_auroc': 0.5}

  run_queue.run_all(
      records,
      name=str,
      workdir=lambda run: str(tmp_path / run),  # a finished run's sidecar goes there
      finished=lambda run: None,
      execute=execute,
      run_info=lambda run: {},
      write_tables=lambda: None,
      stack=lambda run: key['base' if run == 'base' else run[0]],
      stack_size=2,
  )
  assert [r.status for r in records] == ['done'] * 6
  # a0 and a1 together (at most two), a2 alone (its key's next run is not next in the order)...
  assert membership['a0'][0] == membership['a1'][0] and [
      membership[r][1] for r in ('a0', 'a1')
  ] == [0, 1]
  assert all(membership[r] is None for r in ('a2', 'b0', 'a3', 'base'))


# ---- the group program ----


def _abstract(config, progs, members):
  state = jax.eval_shape(progs.init, jax.random.key(0))
  image = jax.ShapeDtypeStruct(
      (config.train.batch_size, config.model.isize, config.model.isize, config.model.channels),
      jnp.float32,
  )
  rng = jax.eval_shape(lambda: jax.random.key(1))
  return (state,) * members, ({'image': image},) * members, (rng,) * members


def test_group_program_is_one_vmapped_step_off_cpu_and_one_step_per_run_on_cpu(build_programs):
  config = tiny.tiny_config()
  progs = build_programs(config)
  mesh = programs.parallel.make_mesh(jax.devices()[:1])
  group = programs.group_train_step(config, progs, mesh, 2)
  args = _abstract(config, progs, 2)
  off_cpu = jax.export.export(group, platforms=('tpu', 'cuda'))(*args).mlir_module()
  on_cpu = jax.export.export(group, platforms=('cpu',))(*args).mlir_module()
  assert kernels.CPU_SCOPE not in off_cpu and kernels.CPU_SCOPE in on_cpu
  # vmap over two runs' parameters: the convolutions are grouped by the run (2 groups) off CPU.
  assert 'feature_group_count = 2' in off_cpu or 'batch_group_count = 2' in off_cpu
  assert 'feature_group_count = 2' not in on_cpu and 'batch_group_count = 2' not in on_cpu


@pytest.mark.slow
def test_a_run_that_diverges_stops_or_rolls_back_alone_and_its_neighbour_finishes(
    tmp_path, monkeypatch
):
  groups = []
  make_group = step_group.StepGroup.__init__

  def recorded(self, size):
    groups.append(self)
    make_group(self, size)

  monkeypatch.setattr(step_group.StepGroup, '__init__', recorded)
  common = {**tiny.SMALL_DATA, 'debug_nan_at_step': 3, 'train.num_steps': 6}
  rolls = tiny.tiny_config(**common, **{'train.on_nonfinite': 'rollback'})
  stops = tiny.tiny_config(**common, seed=1, **{'train.on_nonfinite': 'stop'})
  outcomes = step_group.run_together(
      [
          functools.partial(train.train_and_evaluate, rolls, str(tmp_path / 'rolls')),
          functools.partial(train.train_and_evaluate, stops, str(tmp_path / 'stops')),
      ]
  )
  assert isinstance(outcomes[1], rundir.TrainingError) and 'step 3' in str(outcomes[1])
  assert not (tmp_path / 'stops' / 'results.json').exists()
  assert outcomes[0]['rollbacks'] == 1 and outcomes[0]['skipped_steps'] == 1
  assert outcomes[0]['steps'] == 6
  assert groups[0].grouped_rounds >= 2  # steps 1 and 2 (at least) ran as one program


# ---- seeds at the command line ----


def _results(workdir):
  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)
  return {k: v for k, v in results.items() if k not in ('phase_seconds', 'train_wall_time_s')}


def _curve_steps(workdir):
  with open(os.path.join(workdir, 'train_metrics.jsonl')) as f:
    return [json.loads(line)['step'] for line in f]


@pytest.mark.slow
def test_seeds_as_one_group_resume_after_a_kill_and_equal_each_seed_alone(tmp_path):
  flags = ('--config.train.num_steps=6', '--config.train.checkpoint_every=2')
  group_dir = tmp_path / 'group'
  died = run_main(group_dir, '--config.seed=0+1', *flags, timeout=300, kill_after_step=4)
  assert died.returncode == -signal.SIGKILL, died.stderr[-2000:]
  saved = [checkpoint.CheckpointStore(str(group_dir / f'seed-{s}')) for s in (0, 1)]
  assert all(store.latest_step() in (2, 4) for store in saved)  # whatever reached the disk
  for store in saved:
    store.close()

  resumed = run_main(group_dir, '--config.seed=0+1', *flags, timeout=300)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert 'Resumed from step' in resumed.stderr

  for seed in (0, 1):
    alone = str(tmp_path / f'alone-{seed}')
    config = tiny.tiny_config(
        **tiny.SMALL_DATA, seed=seed, **{'train.num_steps': 6, 'train.checkpoint_every': 2}
    )
    train.train_and_evaluate(config, alone)
    member = str(group_dir / f'seed-{seed}')
    assert _results(member) == _results(alone), seed  # every metric, threshold and score range
    assert _curve_steps(member) == [2, 4, 6]
    with (
        open(os.path.join(member, 'train_metrics.jsonl')) as f,
        open(os.path.join(alone, 'train_metrics.jsonl')) as g,
    ):
      assert [json.loads(l) for l in f] == [json.loads(l) for l in g]


def test_stack_size_auto_is_one_on_cpu_and_a_number_is_bounded_by_memory(monkeypatch):
  from ganomaly_jax.experiments import placement

  config = tiny.tiny_config()
  assert placement.stack_size('auto', [config]) == 1  # this machine computes on CPU
  assert placement.stack_size('3', [config]) == 3
  monkeypatch.setattr(placement, 'free_memory_bytes', lambda: 1)  # nothing free: one run a group
  assert placement.stack_size('3', [config]) == 1
  with pytest.raises(ValueError, match='--stack=two: use auto or a positive number'):
    placement.stack_size('two', [config])
