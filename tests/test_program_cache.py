"""Programs and data kept between the runs of one process: what they are keyed on, that changing
every key the programs do not read leaves the lowered programs equal, the bound, and that a suite's
runs come out bit-identical to the same runs alone."""

import collections
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ganomaly_jax import programs, state as state_lib, train
from ganomaly_jax.runtime import parallel, rundir
from ganomaly_jax.data import sources
from ganomaly_jax.experiments import benchmark, run_queue, suites, sweep
from helpers.tiny import tiny_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A value for every key the programs do not read (programs.PROGRAM_FREE_KEYS), unlike the default.
OTHER_RUN = {
    'method': 'renamed',
    'mode': 'eval',
    'seed': 7,
    'restart': True,
    'dataset.abnormal': '4',
    'dataset.val_fraction': 0.2,
    'dataset.max_train': 100,
    'dataset.flip': True,
    'train.num_steps': 9,
    'train.log_every': 3,
    'train.eval_every': 3,
    'train.checkpoint_every': 3,
    'train.image_every': -1,
    'train.keep_checkpoints': 5,
    'train.on_nonfinite': 'rollback',
    'train.max_rollbacks': 1,
    'eval.bank_size': 1000,
    'runtime.compile_cache_dir': '/elsewhere',
    'runtime.distributed': True,
}
# What JAX reports once per XLA compilation (or load from the persistent cache), with its name.
COMPILE_EVENT = '/jax/core/compile/backend_compile_duration'
# Keys that change results.json between two runs of equal metrics: timings.
TIMINGS = ('phase_seconds', 'train_wall_time_s')


def test_every_program_free_key_is_varied_here():
  varied = {k.split('.')[0] if k.startswith('dataset.') else k for k in OTHER_RUN}
  assert varied == set(programs.PROGRAM_FREE_KEYS)


def test_key_ignores_class_seed_and_schedule_but_not_the_model_or_mesh():
  mesh = parallel.make_mesh()
  base = tiny_config('ganomaly')
  key = programs.program_key(base, mesh)
  assert programs.program_key(sweep.apply_overrides(base, OTHER_RUN), mesh) == key
  assert programs.program_key(sweep.apply_overrides(base, {'model.ngf': 8}), mesh) != key
  assert programs.program_key(sweep.apply_overrides(base, {'loss.w_adv': 0.0}), mesh) != key
  assert programs.program_key(sweep.apply_overrides(base, {'train.batch_size': 16}), mesh) != key
  other_mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ('other',))
  assert programs.program_key(base, other_mesh) != key


def _lowered_text(config) -> list[str]:
  """The init, train and eval programs of `config`, lowered from shapes (nothing compiles)."""
  programs.clear_cache()
  progs = programs.build(config, parallel.make_mesh())
  init_rng, train_rng = jax.random.split(jax.random.key(config.seed))
  state = jax.eval_shape(progs.init, init_rng)
  image = jax.ShapeDtypeStruct(state_lib.image_shape(config, config.train.batch_size), jnp.float32)
  rng = jax.eval_shape(jax.random.fold_in, train_rng, 0)
  return [
      progs.init.lower(init_rng).as_text(),
      progs.train_step.lower(state, {'image': image}, rng).as_text(),
      progs.eval_maps.lower(state, {'image': image}).as_text(),
  ]


def test_programs_do_not_read_the_program_free_keys():
  # What makes reuse exact: with every program-free key changed, init, train and eval programs
  # lower to the same text, so a kept program is the one this run would have compiled.
  base = tiny_config('ganomaly')
  assert _lowered_text(sweep.apply_overrides(base, OTHER_RUN)) == _lowered_text(base)


def test_cache_returns_equal_keys_and_is_bounded():
  mesh = parallel.make_mesh()
  size = programs.CACHE_SIZE
  try:
    programs.set_cache_size(2)
    a = programs.build(tiny_config('ganomaly'), mesh)
    assert programs.build(tiny_config('ganomaly', seed=3), mesh) is a
    b = programs.build(tiny_config('ganomaly', **{'model.ngf': 8}), mesh)
    c = programs.build(tiny_config('ganomaly', **{'model.ngf': 6}), mesh)
    assert len({id(a), id(b), id(c)}) == 3
    assert programs.build(tiny_config('ganomaly', **{'model.ngf': 8}), mesh) is b  # kept
    assert programs.build(tiny_config('ganomaly'), mesh) is not a  # the oldest went first
  finally:
    programs.set_cache_size(size)


def test_decoded_data_is_shared_read_only_and_bounded():
  first = sources.load_splits(tiny_config('ganomaly', **{'dataset.abnormal': '1'}))
  second = sources.load_splits(tiny_config('ganomaly', **{'dataset.abnormal': '2', 'seed': 4}))
  assert len(sources._decoded) == 1  # one decoding of the digits for both classes and seeds
  ((images, _),) = sources._decoded.values()
  assert not images.flags.writeable
  assert first.info['abnormal'] == 1 and second.info['abnormal'] == 2
  # The split of a run is its own copy: the same as a fresh decoding gives.
  sources.clear_decoded()
  again = sources.load_splits(tiny_config('ganomaly', **{'dataset.abnormal': '2', 'seed': 4}))
  np.testing.assert_array_equal(again.train.images, second.train.images)
  np.testing.assert_array_equal(again.test.labels, second.test.labels)


MICRO = f"""
import os
from ganomaly_jax.experiments import suites

CONFIGS = {os.path.join(REPO, 'configs')!r}
TINY = 'quick,model.ngf=4,model.ndf=4,batch=8,dataset.max_train=64,dataset.max_test=32,eval.batch_size=16'


def get_suite(arg=None):
  methods = [m for m in suites.standard_methods(TINY, CONFIGS) if m.name == 'ganomaly']
  return suites.Suite(name='micro', methods=methods, classes=['1', '2'], seeds=[0], steps=3,
                      overrides={{'train.eval_every': 2}})
"""


def metrics(results: dict) -> dict:
  return {k: v for k, v in results.items() if k not in TIMINGS}


@pytest.mark.slow
def test_micro_suite_runs_equal_the_same_runs_alone(tmp_path):
  (tmp_path / 'micro.py').write_text(MICRO)
  suite = suites.load_suite(str(tmp_path / 'micro.py'))
  # XLA compilations per run, by program name; a program loaded from the persistent cache counts.
  compiles: list[collections.Counter] = []

  def count(event, duration_secs, **kwargs):
    del duration_secs
    if event == COMPILE_EVENT and compiles:
      compiles[-1][kwargs.get('fun_name')] += 1

  def train_fn(config, workdir, **kwargs):
    compiles.append(collections.Counter())
    return run_queue.train_in_process(config, workdir, **kwargs)

  jax.monitoring.register_event_duration_secs_listener(count)
  try:
    records = benchmark.run_benchmark(suite, str(tmp_path / 'suite'), train_fn=train_fn)
  finally:
    jax.monitoring.unregister_event_duration_listener(count)
  assert [r.status for r in records] == ['done', 'done']
  first, second = compiles
  assert first['jit(train_step)'] == 1 and first['jit(eval_step)'] >= 1, first
  # The second run reused the first one's programs: it compiled nothing at all.
  assert not second, second

  for record in records:  # each run alone: no kept programs, data or executables
    programs.clear_cache()
    sources.clear_decoded()
    jax.clear_caches()
    alone = train.train_and_evaluate(record.run.config, str(tmp_path / 'alone' / record.run.cls))
    assert metrics(alone) == metrics(record.results)
    written = rundir.read_results(record.run.workdir)
    assert json.dumps(metrics(written), sort_keys=True) == json.dumps(
        metrics(alone), sort_keys=True
    )
    assert set(written['phase_seconds']['wall']) >= {'compile', 'train_steps', 'validation', 'test'}
    assert not any(f.endswith('.png') for f in os.listdir(record.run.workdir))  # a lean suite
