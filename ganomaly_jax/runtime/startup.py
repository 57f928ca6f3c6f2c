"""One process set-up for every entry point (train, infer, sweep, benchmark, rescore).

Each command calls `configure_process` first, before anything starts JAX's backend, so that all of
them run with the same XLA:CPU defaults, share the persistent compilation cache, reach `gs://` the
same way and log the same way; `keep_tensorflow_off_accelerators` runs where TensorFlow is first
needed. Importing this module does nothing by itself.
"""

from __future__ import annotations

import importlib.util
import logging as std_logging
import os
import threading

from absl import logging

from ganomaly_jax.runtime import compile_cache


class QuietLibraries(std_logging.Filter):
  """Drops orbax's per-save INFO chatter so a command's own progress stays readable."""

  def filter(self, record: std_logging.LogRecord) -> bool:
    return record.levelno >= std_logging.WARNING or 'orbax' not in record.pathname


def _quiet_libraries() -> None:
  absl_logger = logging.get_absl_logger()
  if not any(isinstance(f, QuietLibraries) for f in absl_logger.filters):
    absl_logger.addFilter(QuietLibraries())


_tensorflow_ready = threading.Lock()


def keep_tensorflow_off_accelerators() -> None:
  """Imports TensorFlow with the accelerators hidden from it; call before the first use of clu's
  summary writer or of tfds.

  Only clu's summary writer (and tfds) need TensorFlow; left alone it would reserve accelerator
  memory. Its import costs seconds of CPU, so it happens here, where a run first writes a summary,
  and not at start-up: a command refused for its config, its data or its run directory exits before
  it. Safe to call from several threads and more than once.
  """
  with _tensorflow_ready:
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TF's start-up banners are not our logs
    import tensorflow as tf

    if tf.config.get_visible_devices('GPU'):
      tf.config.experimental.set_visible_devices([], 'GPU')


def _gcs_through_gcsfs() -> None:
  # etils.epath (run directories and orbax's own files) sends gs:// to tf.io.gfile whenever
  # TensorFlow is installed, as it is here for clu. With gcsfs installed (the `gcs` extra) it goes
  # through fsspec/gcsfs instead: the route tested against a GCS emulator (tests/gcs_emulator.py;
  # TensorFlow's GCS endpoint cannot be pointed at one). An EPATH_USE_TF the user set is kept.
  if 'EPATH_USE_TF' not in os.environ and importlib.util.find_spec('gcsfs') is not None:
    os.environ['EPATH_USE_TF'] = 'false'


def configure_process(
    *, xla_cpu_defaults: bool = True, compile_cache_dir: str | None = None
) -> str:
  """Prepares this process for JAX work; returns the compilation-cache directory in use ('' = off).

  Args:
    xla_cpu_defaults: `runtime.xla_cpu_defaults` of the config the command runs (the measured
      XLA:CPU flags, `cpu/xla_flags.py`); GANOMALY_JAX_XLA_DEFAULTS=0 turns them off as well.
    compile_cache_dir: `runtime.compile_cache_dir`; None means the default ($JAX_COMPILATION_CACHE_DIR
      or ~/.cache/ganomaly_jax/xla), '' leaves the cache off.

  Must run before the first JAX computation: XLA reads XLA_FLAGS when its backend starts.
  """
  from ganomaly_jax.cpu import xla_flags

  _quiet_libraries()
  _gcs_through_gcsfs()
  xla_flags.apply_cpu_defaults(enabled=xla_cpu_defaults)
  if compile_cache_dir is None:
    compile_cache_dir = compile_cache.default_dir()
  cache_dir = compile_cache.enable(compile_cache_dir)
  if cache_dir:
    logging.info('Compilation cache: %s', cache_dir)
  return cache_dir


def configure_for(config) -> str:
  """`configure_process` with the settings of a method config's `runtime` section."""
  return configure_process(
      xla_cpu_defaults=config.runtime.xla_cpu_defaults,
      compile_cache_dir=config.runtime.compile_cache_dir,
  )
