"""compile_cache: the persistent XLA cache is written, reused (JAX reports the hit), never stops a run,
and a `main` run started by the suite keeps it (and everything else) out of $HOME."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ganomaly_jax.config import schema
from ganomaly_jax.runtime import compile_cache

HIT = '/jax/compilation_cache/cache_hits'  # the event jax 0.10's compiler records on a cache hit
MISS = '/jax/compilation_cache/cache_misses'


@pytest.fixture
def cache_off():
  """The test runs with the cache off; tests/conftest.py turns the suite's session cache back on
  after it."""
  compile_cache.disable()
  yield
  compile_cache.disable()


@pytest.fixture
def cache_events():
  """The names of the compilation-cache events JAX records while the test runs (jax.monitoring)."""
  events: list[str] = []

  def listen(event, **kwargs):
    del kwargs
    if event.startswith('/jax/compilation_cache/'):
      events.append(event)

  jax.monitoring.register_event_listener(listen)
  yield events
  jax.monitoring.unregister_event_listener(listen)


def _entries(path):
  return sorted(f for f in os.listdir(path) if not f.startswith('.'))


def test_compiled_program_is_stored_and_reused(tmp_path, cache_off, cache_events):
  cache = tmp_path / 'nested' / 'xla'  # created on demand
  assert compile_cache.enable(str(cache), min_compile_s=0.0) == str(cache)
  assert cache.is_dir()

  def program(x):
    return jnp.tanh(x @ x.T).sum(axis=0) * 3.0

  x = jnp.arange(12.0).reshape(3, 4)
  expected = np.asarray(jax.jit(program)(x))
  assert _entries(cache), 'no executable was written to the cache'
  assert MISS in cache_events and HIT not in cache_events, cache_events

  cache_events.clear()
  jax.clear_caches()  # forget the in-memory executable: the next call must come from disk
  np.testing.assert_allclose(np.asarray(jax.jit(program)(x)), expected, rtol=1e-6)
  # JAX itself says the executable was loaded, not compiled (a recompile would report a miss).
  assert cache_events.count(HIT) == 1 and MISS not in cache_events, cache_events


def test_a_dir_shared_with_uncapped_jax_programs_is_written_uncapped(
    tmp_path, monkeypatch, cache_off, recwarn
):
  # Another JAX program wrote an entry through JAX's own variable, without the access-time file
  # that a size-capped cache keeps beside each entry; a capped writer fails there (a warning,
  # nothing stored).
  shared, ours = tmp_path / 'shared', tmp_path / 'ours'
  shared.mkdir()
  (shared / 'other_program-0123-cache').write_bytes(b'an executable')
  monkeypatch.setenv(compile_cache.ENV_DIR, str(shared))
  assert compile_cache.enable(str(ours), min_compile_s=0.0) == str(ours)
  assert jax.config.jax_compilation_cache_max_size == compile_cache.DEFAULT_MAX_BYTES  # ours alone
  assert compile_cache.enable(str(shared), min_compile_s=0.0) == str(shared)
  assert jax.config.jax_compilation_cache_max_size == -1

  def program(v):
    return jnp.sin(v) * 5 - 2

  jax.jit(program)(np.arange(7.0, dtype=np.float32))
  stored = [f for f in _entries(shared) if f.startswith('jit_program-')]
  assert stored, _entries(shared)  # stored beside the other program's entry
  assert not [w for w in recwarn if 'compilation cache' in str(w.message)], [
      str(w.message) for w in recwarn
  ]


def test_empty_dir_leaves_cache_off(cache_off, cache_events):
  assert compile_cache.enable('') == ''
  assert jax.config.jax_compilation_cache_dir is None
  jax.clear_caches()
  jax.jit(lambda v: v * 2 + 1)(jnp.ones(3))
  assert HIT not in cache_events and MISS not in cache_events, cache_events


def test_unusable_dir_warns_and_runs_on(tmp_path, cache_off):
  blocker = tmp_path / 'a_file'
  blocker.write_text('not a directory')
  assert compile_cache.enable(str(blocker / 'xla')) == ''
  assert jax.config.jax_compilation_cache_dir is None
  assert float(jax.jit(lambda v: v + 1)(1.0)) == 2.0


def test_default_dir_honours_jax_variable(tmp_path, monkeypatch):
  monkeypatch.setenv(compile_cache.ENV_DIR, str(tmp_path / 'jax_cache'))
  assert schema.base_config().runtime.compile_cache_dir == str(tmp_path / 'jax_cache')
  monkeypatch.delenv(compile_cache.ENV_DIR)
  home = tmp_path / 'home'
  monkeypatch.setenv('HOME', str(home))
  # Without the variable: the per-user cache, which enable() expands under $HOME.
  assert compile_cache.enable(schema.base_config().runtime.compile_cache_dir) == str(
      home / '.cache' / 'ganomaly_jax' / 'xla'
  )
  compile_cache.disable()


@pytest.mark.slow
def test_main_stores_its_steps_a_rerun_loads_them_and_home_stays_empty(tmp_path, monkeypatch):
  from test_reliability import run_main

  # The suite's environment (tests/conftest.py) with an empty $HOME and the cache variable pointing
  # at this test's directory: main's default cache directory must follow the variable.
  home, cache = tmp_path / 'home', tmp_path / 'cache'
  home.mkdir()
  monkeypatch.setenv('HOME', str(home))
  monkeypatch.setenv(compile_cache.ENV_DIR, str(cache))
  first = run_main(tmp_path / 'first')
  assert first.returncode == 0, first.stderr[-2000:]
  assert list(home.iterdir()) == [], 'a main run wrote under $HOME'
  stored = {f for f in _entries(cache) if f.endswith('-cache')}
  assert any(f.startswith('jit_train_step') for f in stored), stored
  # Same program in a new workdir: the step is loaded, not compiled (JAX says so in its log).
  monkeypatch.setenv('JAX_LOG_COMPILES', '1')
  second = run_main(tmp_path / 'second')
  assert second.returncode == 0, second.stderr[-2000:]
  assert "Persistent compilation cache hit for 'jit_train_step'" in second.stderr
  assert list(home.iterdir()) == []
