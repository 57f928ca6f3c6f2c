"""JAX's persistent compilation cache, switched on for the programs of every `main` and `sweep` run.

Compiling the training step is the largest single cost of a short run and of a resume: seconds per
program on a 2-core CPU, more on TPU pods, and on CPU XLA's compilation is also the peak of the
process's memory, more than running the step (docs/performance.md#compile-cache).
With the cache a later run of the same program (a resume, a rerun, an ablation that changes only
data or step counts, every host of a pod after the first) loads the executable instead.

JAX keys each entry on the program, the compile options, XLA_FLAGS and the jax/jaxlib versions, so a
stale entry is never used. Only programs that took at least `min_compile_s` to compile are stored,
which keeps small helpers out of it, and the directory is capped at `max_bytes` (least recently used
entries go first) unless it is the one $JAX_COMPILATION_CACHE_DIR names (see `enable`). The cache
is an optimisation: a directory that cannot be created turns it off with a warning, never stops the
run.
"""

from __future__ import annotations

import os

from absl import logging

DEFAULT_DIR = '~/.cache/ganomaly_jax/xla'
DEFAULT_MAX_BYTES = 2 * 1024**3
ENV_DIR = 'JAX_COMPILATION_CACHE_DIR'  # JAX's own variable for its cache directory


def default_dir() -> str:
  """The cache directory a config starts with: $JAX_COMPILATION_CACHE_DIR when set, else DEFAULT_DIR.

  A user (or a test suite) that points JAX's cache elsewhere through JAX's own variable expects every
  run to use it; a default that ignored it would put the cache back under $HOME.
  """
  return os.environ.get(ENV_DIR) or DEFAULT_DIR


def enable(cache_dir: str, min_compile_s: float = 1.0, max_bytes: int = DEFAULT_MAX_BYTES) -> str:
  """Points JAX's persistent compilation cache at cache_dir; returns the directory in use.

  An empty cache_dir leaves the cache off and returns ''. Local paths are expanded and created;
  other URLs (gs://...) are handed to JAX as they are. Must run before the programs it should cover
  are compiled; calling it again with another directory switches to that directory.

  The directory that $JAX_COMPILATION_CACHE_DIR names is shared with the user's other JAX programs,
  which write it without a size cap (JAX's default). JAX's cap keeps an access-time file beside
  each entry and fails to store anything (a warning per program) in a directory holding entries
  without one, so that directory is left uncapped, as those programs leave it.
  """
  if not cache_dir:
    return ''
  cache_dir = _absolute(cache_dir)
  if '://' not in cache_dir:
    try:
      os.makedirs(cache_dir, exist_ok=True)
      if not os.access(cache_dir, os.W_OK):
        raise PermissionError(f'{cache_dir} is not writable')
    except OSError as e:
      logging.warning('Compilation cache off: cannot use %s (%s).', cache_dir, e)
      return ''
  if _is_jax_variable_dir(cache_dir):
    max_bytes = -1
  import jax  # here, not at the top: config.schema reads DEFAULT_DIR without starting JAX
  from jax.experimental.compilation_cache import compilation_cache

  jax.config.update('jax_compilation_cache_dir', cache_dir)
  jax.config.update('jax_persistent_cache_min_compile_time_secs', float(min_compile_s))
  jax.config.update('jax_compilation_cache_max_size', int(max_bytes))
  compilation_cache.reset_cache()  # JAX fixes the directory at first use; make the new one count
  return cache_dir


def _is_jax_variable_dir(cache_dir: str) -> bool:
  """Whether cache_dir is the directory $JAX_COMPILATION_CACHE_DIR names."""
  shared = os.environ.get(ENV_DIR)
  return bool(shared) and cache_dir == _absolute(shared)


def _absolute(cache_dir: str) -> str:
  """A local path expanded and made absolute; a URL (gs://...) as it is."""
  return cache_dir if '://' in cache_dir else os.path.abspath(os.path.expanduser(cache_dir))


def disable() -> None:
  """Turns the persistent cache off again (tests, or a caller that enabled it temporarily)."""
  import jax
  from jax.experimental.compilation_cache import compilation_cache

  jax.config.update('jax_compilation_cache_dir', None)
  compilation_cache.reset_cache()
