"""compile_cache: the persistent XLA cache is written, reused, and never stops a run."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ganomaly_jax import compile_cache, config_lib


@pytest.fixture
def cache_off_afterwards():
  yield
  compile_cache.disable()


def _entries(path):
  return sorted(f for f in os.listdir(path) if not f.startswith('.'))


def test_compiled_program_is_stored_and_reused(tmp_path, cache_off_afterwards):
  cache = tmp_path / 'nested' / 'xla'  # created on demand
  assert compile_cache.enable(str(cache), min_compile_s=0.0) == str(cache)
  assert cache.is_dir()

  def program(x):
    return jnp.tanh(x @ x.T).sum(axis=0) * 3.0

  x = jnp.arange(12.0).reshape(3, 4)
  expected = np.asarray(jax.jit(program)(x))
  stored = _entries(cache)
  assert stored, 'no executable was written to the cache'

  jax.clear_caches()  # forget the in-memory executable: the next call must come from disk
  np.testing.assert_allclose(np.asarray(jax.jit(program)(x)), expected, rtol=1e-6)
  assert _entries(cache) == stored  # a hit: nothing new compiled and stored


def test_empty_dir_leaves_cache_off(cache_off_afterwards):
  assert compile_cache.enable('') == ''
  assert jax.config.jax_compilation_cache_dir is None


def test_unusable_dir_warns_and_runs_on(tmp_path, cache_off_afterwards):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  assert compile_cache.enable(str(blocker / 'xla')) == ''
  assert jax.config.jax_compilation_cache_dir is None
  assert float(jax.jit(lambda v: v + 1)(1.0)) == 2.0


def test_default_config_points_at_user_cache():
  config = config_lib.base_config()
  assert config.runtime.compile_cache_dir == compile_cache.DEFAULT_DIR


def test_main_stores_its_steps_and_a_rerun_loads_them(tmp_path, monkeypatch):
  from test_reliability import run_main

  cache = tmp_path / 'cache'
  first = run_main(tmp_path / 'first', f'--config.runtime.compile_cache_dir={cache}')
  assert first.returncode == 0, first.stderr[-2000:]
  stored = {f for f in _entries(cache) if f.endswith('-cache')}
  assert any(f.startswith('jit_train_step') for f in stored), stored
  # Same program in a new workdir: the step is loaded, not compiled (JAX says so in its log).
  monkeypatch.setenv('JAX_LOG_COMPILES', '1')
  second = run_main(tmp_path / 'second', f'--config.runtime.compile_cache_dir={cache}')
  assert second.returncode == 0, second.stderr[-2000:]
  assert "Persistent compilation cache hit for 'jit_train_step'" in second.stderr
  # (Smaller programs near the 1 s threshold may or may not be stored; the step's entry is reused.)
  steps = lambda names: {f for f in names if f.startswith('jit_train_step') and f.endswith('-cache')}
  assert steps(_entries(cache)) == steps(stored)
