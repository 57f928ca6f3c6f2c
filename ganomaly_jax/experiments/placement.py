"""Where a queue's runs go: this host's share of them when several hosts run one queue (`Share`,
the --share flag) and this host's device groups when several runs are in flight (`device_groups`,
the --parallel flag). The hosts share nothing but the run directories (see run_queue.py).
"""

from __future__ import annotations

import dataclasses
from typing import Any

# --stack=auto on an accelerator: the seeds of a suite (3) and some, within the memory bound.
AUTO_STACK = 8
# stack_size: a batch's activations during a step, in bytes of its input images (a rough bound).
ACTIVATION_FACTOR = 256


def define_flags(what: str):
  """Defines --parallel and --share for a command that runs a queue of `what` ('suite' or 'sweep').

  Called when the command runs as a program only, so importing its module defines no global flags.
  """
  from absl import flags

  parallel = flags.DEFINE_integer(
      'parallel', 1, "Runs in flight at once, each on its own group of this host's devices."
  )
  share = flags.DEFINE_string(
      'share',
      'auto',
      f'I/N: run every N-th run of the {what}, starting at I (host I of N, each a '
      'JAX process of its own); auto: JAX_PROCESS_ID/JAX_NUM_PROCESSES, else 0/1.',
  )
  stack = flags.DEFINE_string(
      'stack',
      'auto',
      f'N: runs of the {what} with the same program (the seeds of a method and class) train as '
      'one group of at most N (runtime/step_group.py), fewer where memory is short; 1: each run '
      f'alone; auto: {AUTO_STACK} on a GPU or TPU, 1 on CPU (where a group gains nothing).',
  )
  return parallel, share, stack


def stack_size(requested: str | int, configs: list[Any]) -> int:
  """The most runs per group for --stack=`requested` ('auto' or N), fewer where a group of that
  many would not fit in memory.

  'auto' is AUTO_STACK where the first device is an accelerator and 1 on CPU: XLA:CPU computes a
  group's steps no faster than one after another (docs/performance.md#seeds-as-one-program).
  The memory bound is rough, not measured: a run's step holds its state (parameters, batch
  statistics, optimizer moments), its gradients and the donated copy (3x the state) and a batch's
  activations (`ACTIVATION_FACTOR` x the batch's input bytes, generous for the study's networks);
  a group may use half of the free memory of the first device (its `memory_stats`) or, without
  those, of the host.

  Raises:
    ValueError: `requested` is neither 'auto' nor a positive integer.
  """
  text = str(requested).strip()
  if text == 'auto':
    import jax

    size = 1 if jax.devices()[0].platform == 'cpu' else AUTO_STACK
  else:
    try:
      size = int(text)
    except ValueError:
      size = 0
    if size < 1:
      raise ValueError(f'--stack={text}: use auto or a positive number of runs per group.')
  if size <= 1 or not configs:
    return 1
  import numpy as np

  from ganomaly_jax import state as state_lib
  from ganomaly_jax.runtime import disk

  need = 0
  for config in configs:
    state = disk.state_bytes(state_lib.trace(config).state)
    batch = np.prod(state_lib.image_shape(config, config.train.batch_size)) * 4
    need = max(need, 3 * state + ACTIVATION_FACTOR * batch)
  return max(1, min(size, int(0.5 * free_memory_bytes() // max(need, 1))))


def free_memory_bytes() -> int:
  """Free memory of the first device where it reports it, else the host's available memory."""
  import os

  import jax

  stats = jax.devices()[0].memory_stats() or {}
  if 'bytes_limit' in stats:
    return int(stats['bytes_limit']) - int(stats.get('bytes_in_use', 0))
  return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')


@dataclasses.dataclass(frozen=True)
class Share:
  """This host's part of a queue run by several hosts at once: runs index, index + count, ...

  Each host runs its share on its own devices, with no collective between the hosts: they meet only
  in the run directories (the finished rule), and the tables are written once every run is settled.
  """

  index: int = 0
  count: int = 1

  @classmethod
  def parse(cls, text: str) -> 'Share':
    """'I/N' (host I of N); '' or 'auto' reads JAX_PROCESS_ID / JAX_NUM_PROCESSES (default 0/1)."""
    text = (text or '').strip()
    if text in ('', 'auto'):
      from ganomaly_jax.runtime import parallel  # imports JAX: only when a queue runs

      settings = parallel.DistributedSettings.from_env()
      count = settings.num_processes or 1
      index = settings.process_id or 0
    else:
      index_text, sep, count_text = text.partition('/')
      try:
        index, count = int(index_text), int(count_text)
      except ValueError:
        index, count = -1, 0
      if not sep or count < 1 or not 0 <= index < count:
        raise ValueError(f'--share={text!r} must be I/N with 0 <= I < N (e.g. 0/4).')
    if not 0 <= index < count:
      raise ValueError(f'host {index} of {count}: the index must be below the count.')
    return cls(index, count)


def device_groups(workers: int) -> list[list[Any]] | None:
  """Devices for `workers` runs at once (`parallel.device_groups`); None for one at a time.

  Each group compiles its own programs (an executable belongs to its devices), so the programs
  cache keeps two entries per group: the method in flight and the next one.
  """
  if workers <= 1:
    return None
  from ganomaly_jax import programs  # import JAX: only when runs start
  from ganomaly_jax.runtime import parallel

  programs.set_cache_size(max(programs.CACHE_SIZE, 2 * workers))
  return parallel.device_groups(workers)


def check_standalone(share: Share) -> None:
  """Several hosts must each run JAX on their own: a run's collectives must not span the hosts."""
  import jax

  if share.count > 1 and jax.process_count() > 1:
    raise ValueError(
        f'--share={share.index}/{share.count}: this process is one of {jax.process_count()} JAX '
        'processes of one multi-host runtime, so its runs would gather over every host. Start each '
        "host's queue as a JAX process of its own (no jax.distributed; on a TPU pod see "
        'launch/tpu_pod.sh --benchmark).'
    )
