"""Session set-up and fixtures shared by several test modules."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

# The test models are tiny, so XLA's compile time dominates and its optimisations buy nothing here:
# no backend optimisation (measured: test_evaluate 130 s -> 55 s) and no expensive LLVM passes
# (RIAD's step compiles in 8 s instead of 10). Not the older elemental emitters
# (--xla_cpu_use_fusion_emitters=false), which compile twice as fast but broke the bit-exact resume
# after SIGKILL (tests/test_reliability.py). Set before JAX starts; subprocesses inherit it.
TEST_XLA_FLAGS = ('--xla_backend_optimization_level=0', '--xla_llvm_disable_expensive_passes=true')
os.environ.setdefault('XLA_FLAGS', ' '.join(TEST_XLA_FLAGS))

import jax  # noqa: E402,F401  (before the cache variable below: see there)

# Tests never write outside temporary directories. Every cache that a run would put under $HOME goes
# to one directory for the session instead; `main` / `sweep` / `infer` processes started by tests
# inherit it: JAX's compilation cache (the package's default honours JAX_COMPILATION_CACHE_DIR; this
# process keeps one of its own, below), matplotlib's font
# cache, Keras's ~/.keras (created when TensorFlow is imported), any XDG cache and hypothesis's
# .hypothesis/ (its unicode tables; the example database is off in the tests that use it).
# tests/test_compile_cache.py checks that a `main` run started this way leaves $HOME untouched.
# One directory for the whole session: with `-n 2` the xdist controller makes it and its workers
# (which inherit the controller's environment) use the same one, so a program one worker compiled is
# loaded, not compiled again, by the other.
_SESSION_DIR_VAR = 'GANOMALY_JAX_TESTS_SESSION_DIR'
OWNS_SESSION_DIR = not (os.environ.get('PYTEST_XDIST_WORKER') and os.environ.get(_SESSION_DIR_VAR))
if OWNS_SESSION_DIR:
  os.environ[_SESSION_DIR_VAR] = tempfile.mkdtemp(prefix='ganomaly_jax_tests_')
SESSION_DIR = os.environ[_SESSION_DIR_VAR]
for _var, _sub in (
    ('JAX_COMPILATION_CACHE_DIR', 'xla'),
    ('MPLCONFIGDIR', 'matplotlib'),
    ('XDG_CACHE_HOME', 'cache'),
    ('KERAS_HOME', 'keras'),
    ('HYPOTHESIS_STORAGE_DIRECTORY', 'hypothesis'),
):
  os.environ[_var] = os.path.join(SESSION_DIR, _sub)

from absl import flags  # noqa: E402

# grain's multiprocess prefetch reads absl flags; pytest never parses them.
flags.FLAGS.mark_as_parsed()

import pytest  # noqa: E402

from ganomaly_jax.runtime import compile_cache  # noqa: E402
import synthetic  # noqa: E402
from helpers import REPO, tiny  # noqa: E402

# For every test module: gs_root (fsspec's in-memory file system as gs://, tests/fake_gcs.py) and
# gcs_emulator (a GCS API on localhost, tests/gcs_emulator.py).
pytest_plugins = ['fake_gcs', 'gcs_emulator']

# Many tests compile the same tiny programs (each method's step, the evaluation passes); a
# persistent cache for this process lets every test after the first load them instead, as a user's
# second run does. Only programs that take a while to compile are stored. It has a directory of its
# own: JAX's size-capped cache keeps an access-time file beside each entry and fails to write (with
# a warning) when it meets an entry without one, which subprocesses that start JAX without a cap
# leave in the shared directory above.
SESSION_CACHE_MIN_COMPILE_S = 0.1
SESSION_CACHE_DIR = os.path.join(SESSION_DIR, 'xla_in_process')


def enable_session_compile_cache() -> None:
  compile_cache.enable(SESSION_CACHE_DIR, min_compile_s=SESSION_CACHE_MIN_COMPILE_S)


enable_session_compile_cache()


# GANOMALY_JAX_TESTS_COMPILE_LOG=FILE appends one JSON line per test: the seconds this test's own
# process spent tracing, lowering and compiling (JAX's monitoring events), and its persistent-cache
# hits and misses. Processes the test starts are not counted. For finding where the suite's time goes.
_COMPILE_LOG = os.environ.get('GANOMALY_JAX_TESTS_COMPILE_LOG')
_compile_counts: dict[str, float] = {}


def _count_compile_event(event: str, duration: float | None = None, **kwargs) -> None:
  del kwargs
  if event.startswith(('/jax/core/compile/', '/jax/compilation_cache/')):
    _compile_counts[event] = _compile_counts.get(event, 0.0) + (
        1.0 if duration is None else duration
    )


if _COMPILE_LOG:
  jax.monitoring.register_event_duration_secs_listener(_count_compile_event)
  jax.monitoring.register_event_listener(_count_compile_event)

  @pytest.fixture(autouse=True)
  def log_compile_time(request):
    _compile_counts.clear()
    yield
    with open(_COMPILE_LOG, 'a') as f:
      row = {k.rsplit('/', 1)[-1]: round(v, 3) for k, v in _compile_counts.items()}
      f.write(json.dumps({'test': request.node.nodeid, **row}) + '\n')


def pytest_sessionfinish(session, exitstatus):
  del session, exitstatus
  if OWNS_SESSION_DIR:
    shutil.rmtree(SESSION_DIR, ignore_errors=True)


# The files that take longest on the 2-core machine (`--durations=0`, docs/testing.md), longest
# first. With `-n 2` each file runs in one worker (`--dist loadfile`); started in collection order,
# the longest ones came last and one worker went on alone for a minute after the other had finished.
LONGEST_FILES = (
    'tests/test_failure_modes.py',
    'tests/test_reliability.py',
    'tests/test_gcs_emulator.py',
    'tests/test_counts_and_methods.py',
    'tests/test_step.py',
    'tests/test_parallel_queue.py',
    'tests/test_multihost.py',
    'tests/test_learning.py',
    'tests/cpu/test_kernels.py',
    'tests/test_step_group.py',
    'tests/test_reference.py',
)
# Files that use the session's `masked_run` (about 40 s to train) run in one worker, which trains it
# once.
MASKED_RUN_FILES = ('tests/test_failure_modes.py', 'tests/test_evaluate.py', 'tests/test_infer.py')


def pytest_xdist_make_scheduler(config, log):
  """`--dist loadfile` (pyproject.toml's addopts), with the longest files first and the users of
  `masked_run` together; another --dist keeps xdist's own scheduler."""
  if config.getvalue('dist') != 'loadfile':
    return None
  from xdist.scheduler import LoadFileScheduling

  class LongestFilesFirst(LoadFileScheduling):

    def _split_scope(self, nodeid: str) -> str:
      scope = super()._split_scope(nodeid)
      return MASKED_RUN_FILES[0] if scope in MASKED_RUN_FILES else scope

    def _assign_work_unit(self, node) -> None:
      for scope in LONGEST_FILES:
        if scope in self.workqueue:
          self.workqueue.move_to_end(scope, last=False)
          break
      super()._assign_work_unit(node)

  return LongestFilesFirst(config, log)


@pytest.fixture(autouse=True)
def fresh_process_caches(request):
  """Each test starts without the programs and datasets an earlier test left in this process.

  A run reuses kept programs and decoded data (`programs.build`, `sources.decoded`); a test that
  spies on tracing or rewrites a data folder must not get another test's. A module whose tests
  only train and read results sets `SHARE_PROGRAMS = True`: its tests keep each other's programs
  (and their compiled executables), as the runs of one benchmark suite do.
  """
  from ganomaly_jax import programs
  from ganomaly_jax.data import sources

  if not getattr(request.module, 'SHARE_PROGRAMS', False):
    programs.clear_cache()
  sources.clear_decoded()
  yield
  if jax.config.jax_compilation_cache_dir != SESSION_CACHE_DIR:
    enable_session_compile_cache()  # a test of the cache itself switched it off or elsewhere


@pytest.fixture(scope='session')
def masked_run(tmp_path_factory) -> synthetic.TrainedRun:
  """One quick masked run over a generated folder with ground-truth masks (see tests/synthetic.py).

  Trained once per session (~1 min on 2 CPU cores) and shared by test_evaluate and test_infer; tests
  must not modify its workdir (copy it first).
  """
  return synthetic.train_quick_masked_run(tmp_path_factory.mktemp('masked_run'))


@pytest.fixture(scope='session')
def repo_root():
  """The repository root, a pathlib.Path (helpers.REPO)."""
  return REPO


@pytest.fixture(scope='session')
def tiny_config():
  """`tiny_config(method='ganomaly', **dotted_overrides)`: the tiny config (helpers/tiny.py)."""
  return tiny.tiny_config


@pytest.fixture(scope='session')
def build_programs():
  """`build_programs(config)`: `programs.build` on one device (helpers/tiny.py); its train step
  donates the state."""
  return tiny.build_programs
