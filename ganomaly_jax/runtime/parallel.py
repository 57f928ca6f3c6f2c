"""Device mesh, shardings and multi-host start-up: data parallelism over all devices of all processes.

The batch is split along its leading axis over the mesh axis 'data'; the train state is replicated.
Under jit, BatchNorm then normalises over the *global* batch, exactly as on one device.

Multi-host runs start every process with the same command and `GANOMALY_DISTRIBUTED=1` (or
`--config.runtime.distributed=True`). `jax.distributed.initialize()` is then called with no topology
arguments unless some are set below, so JAX's own detection finds them: Cloud TPU VMs and pods (GCE
metadata), SLURM (SLURM_NTASKS, SLURM_PROCID, SLURM_STEP_NODELIST; one GPU per task by
SLURM_LOCALID), Open MPI and Kubernetes jobs. For other clusters and for local testing:

  JAX_COORDINATOR_ADDRESS=host:port  process 0's coordinator service. JAX's own variable: JAX reads
                                     it itself whenever no address is passed (jax/_src/distributed.py)
  JAX_NUM_PROCESSES=N                number of processes    } JAX 0.10 reads no variable for these;
  JAX_PROCESS_ID=i                   this process's index   } named after initialize's arguments
  GANOMALY_INIT_TIMEOUT=S            seconds to wait for every process to join (default 300)

JAX also reads JAX_COORDINATOR_PORT (the port on an auto-detected coordinator host),
JAX_COORDINATOR_BIND_ADDRESS and JAX_LOCAL_DEVICE_IDS itself. The project's earlier names
GANOMALY_COORDINATOR, GANOMALY_NUM_PROCESSES and GANOMALY_PROCESS_ID are still read as aliases of
the three above; set both only with the same value.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
import threading
from typing import Any, Callable, Mapping, Sequence

from absl import logging
import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np

from ganomaly_jax.config import schema

DATA_AXIS = 'data'

ENV_COORDINATOR = 'JAX_COORDINATOR_ADDRESS'
ENV_NUM_PROCESSES = 'JAX_NUM_PROCESSES'
ENV_PROCESS_ID = 'JAX_PROCESS_ID'
# JAX has neither a switch for "this is a multi-host run" nor a variable for the join timeout.
ENV_DISTRIBUTED = 'GANOMALY_DISTRIBUTED'
ENV_INIT_TIMEOUT = 'GANOMALY_INIT_TIMEOUT'
# The project's earlier names, kept as documented aliases so that existing job scripts still work.
ENV_ALIASES = {
    ENV_COORDINATOR: 'GANOMALY_COORDINATOR',
    ENV_NUM_PROCESSES: 'GANOMALY_NUM_PROCESSES',
    ENV_PROCESS_ID: 'GANOMALY_PROCESS_ID',
}
DEFAULT_INIT_TIMEOUT_S = 300
# JAX's own connect timeout is set this much longer than ours: when it expires first, XLA aborts the
# process with a C++ stack trace instead of raising, so our watchdog must always fire first.
_JAX_TIMEOUT_MARGIN_S = 60


class ConfigMismatchError(ValueError):
  """The processes of one multi-host run were started with different configs."""


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh over `devices` (default: all devices of all processes) with an Auto axis.

  jax.make_mesh orders the devices along the interconnect (a ring on TPU), which is what the
  gradient all-reduce of data parallelism runs over. Its default axis type is Explicit, under which
  concatenating the sharded batch with an unsharded array raises a ShardingTypeError, hence Auto.
  """
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh(
      (len(devices),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,), devices=devices
  )


def device_groups(n: int, devices: Sequence[jax.Device] | None = None) -> list[list[jax.Device]]:
  """`devices` (default: this process's) cut into `n` equal groups, for `n` runs at once.

  A single device (the CPU) is not cut: the `n` runs share it. Devices beyond `n` equal groups
  stay idle (logged).
  """
  devices = jax.local_devices() if devices is None else list(devices)
  if n < 1:
    raise ValueError(f'--parallel={n} must be at least 1.')
  if len(devices) == 1:
    return [devices] * n
  if n > len(devices):
    raise ValueError(
        f'--parallel={n}: this process has only {len(devices)} devices; use at most '
        f'{len(devices)} (or 1 device per run).'
    )
  size = len(devices) // n
  if len(devices) % n:
    logging.warning(
        '--parallel=%d: %d of %d devices stay idle (groups of %d).',
        n,
        len(devices) % n,
        len(devices),
        size,
    )
  return [devices[i * size : (i + 1) * size] for i in range(n)]


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the mesh."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """A full copy on every device of the mesh."""
  return NamedSharding(mesh, P())


def check_batch_size(
    batch_size: int, key: str = 'train.batch_size', mesh: Mesh | None = None
) -> None:
  """The global batch must split evenly over the mesh's devices (default: all devices)."""
  n = jax.device_count() if mesh is None else mesh.size
  if batch_size % n:
    raise ValueError(
        f'{key}={batch_size} is not divisible by the {n} devices; use a multiple of {n}.'
    )


def local_batch_size(global_batch_size: int) -> int:
  """Examples this process contributes to each global batch."""
  return global_batch_size // jax.process_count()


def to_global(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Assembles per-process numpy batches into one batch-sharded global array per key."""
  sharding = batch_sharding(mesh)
  if jax.process_count() == 1:
    # The same array; make_array_from_process_local_data's bookkeeping costs more than a small
    # model's step (docs/performance.md#the-loops-own-time).
    return {k: jax.device_put(np.asarray(v), sharding) for k, v in batch.items()}
  return {
      k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
  }


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a pytree on every device of the mesh."""
  return jax.device_put(tree, replicated(mesh))


# ---------------------------------------------------------------------------------------------
# Multi-host start-up.
# ---------------------------------------------------------------------------------------------


def _env_flag(value: str | None) -> bool:
  return (value or '').strip().lower() in ('1', 'true', 'yes')


def wants_distributed(
    config: ml_collections.ConfigDict, env: Mapping[str, str] | None = None
) -> bool:
  """True when --config.runtime.distributed=True or GANOMALY_DISTRIBUTED=1 asks for a multi-host run."""
  env = os.environ if env is None else env
  return bool(config.runtime.distributed) or _env_flag(env.get(ENV_DISTRIBUTED))


@dataclasses.dataclass(frozen=True)
class DistributedSettings:
  """Arguments for jax.distributed.initialize; None means 'let JAX auto-detect' (TPU pod, SLURM)."""

  coordinator_address: str | None = None
  num_processes: int | None = None
  process_id: int | None = None
  timeout_s: int = DEFAULT_INIT_TIMEOUT_S

  @classmethod
  def from_env(cls, env: Mapping[str, str] | None = None) -> 'DistributedSettings':
    """Reads the variables of the module docstring (JAX's names first, then the GANOMALY_*
    aliases); a malformed value raises ValueError naming the variable it came from."""
    env = os.environ if env is None else env

    def lookup(name: str) -> tuple[str | None, str]:
      """(value, the variable it came from): JAX's name first, then the project's alias."""
      value = env.get(name, '').strip() or None
      alias = ENV_ALIASES.get(name, name)
      aliased = env.get(alias, '').strip() or None
      if value is not None and aliased is not None and value != aliased:
        raise ValueError(
            f'{name}={value!r} and its alias {alias}={aliased!r} disagree; ' f'set only {name}.'
        )
      if value is None and aliased is not None:
        return aliased, alias
      return value, name

    def integer(name: str, minimum: int) -> tuple[int | None, str]:
      raw, source = lookup(name)
      if raw is None:
        return None, source
      try:
        value = int(raw)
      except ValueError:
        value = None
      if value is None or value < minimum:
        raise ValueError(f'{source}={raw!r} must be an integer >= {minimum}.')
      return value, source

    address, address_source = lookup(ENV_COORDINATOR)
    if address is not None:
      host, sep, port = address.rpartition(':')
      if not sep or not host or not port.isdigit():
        raise ValueError(f'{address_source}={address!r} must be host:port (e.g. 10.0.0.2:8476).')
    num_processes, num_source = integer(ENV_NUM_PROCESSES, 1)
    process_id, id_source = integer(ENV_PROCESS_ID, 0)
    settings = cls(
        coordinator_address=address,
        num_processes=num_processes,
        process_id=process_id,
        timeout_s=integer(ENV_INIT_TIMEOUT, 1)[0] or DEFAULT_INIT_TIMEOUT_S,
    )
    if (
        settings.process_id is not None
        and settings.num_processes is not None
        and settings.process_id >= settings.num_processes
    ):
      raise ValueError(
          f'{id_source}={settings.process_id} must be below '
          f'{num_source}={settings.num_processes}.'
      )
    return settings

  @property
  def explicit(self) -> bool:
    """Whether any coordinator setting was given (rather than auto-detected)."""
    return (self.coordinator_address, self.num_processes, self.process_id) != (None, None, None)

  def timeout_message(self) -> str:
    """The one line a process prints when the processes did not all meet in time."""
    where = self.coordinator_address or 'the auto-detected address (TPU pod / SLURM)'
    who = '' if self.process_id is None else f' (process {self.process_id}'
    if who:
      who += f' of {self.num_processes})' if self.num_processes else ')'
    hint = (
        'check the address and port (firewall), and that every process was started with the '
        f'same {ENV_NUM_PROCESSES}'
        if self.explicit
        else 'check that every host runs the same command and can reach the first one'
    )
    if self.process_id == 0:
      return (
          f'could not reach the JAX coordinator at {where} within {self.timeout_s} s{who}: '
          f'this process hosts it, but not every process joined; {hint}.'
      )
    return f'could not reach the JAX coordinator at {where} within {self.timeout_s} s{who}; {hint}.'


def _exit_on_timeout(message: str) -> None:
  logging.error('%s', message)
  sys.stderr.write(f'error: {message}\n')
  sys.stderr.flush()
  os._exit(1)  # pylint: disable=protected-access


def initialize_distributed(
    settings: DistributedSettings, on_timeout: Callable[[str], None] = _exit_on_timeout
) -> None:
  """Calls jax.distributed.initialize; if the processes have not all met within the timeout, calls
  `on_timeout(message)` (default: log, print `error: <message>` and exit 1).

  A failed connection does not raise in jaxlib: XLA aborts the process with a fatal C++ log and a
  stack trace. So the timeout is enforced by a watchdog thread (the connect call releases the GIL),
  and JAX's own timeout is set a little longer so that it never fires first.
  """
  message = settings.timeout_message()
  watchdog = threading.Timer(settings.timeout_s, on_timeout, args=(message,))
  watchdog.daemon = True
  watchdog.start()
  # Only what was set is passed: with nothing set this is jax.distributed.initialize() with no
  # topology arguments, and JAX's cluster detection (TPU, SLURM, Open MPI, k8s) supplies all three.
  kwargs = {
      k: v
      for k, v in (
          ('coordinator_address', settings.coordinator_address),
          ('num_processes', settings.num_processes),
          ('process_id', settings.process_id),
      )
      if v is not None
  }
  try:
    jax.distributed.initialize(
        initialization_timeout=settings.timeout_s + _JAX_TIMEOUT_MARGIN_S, **kwargs
    )
  except ValueError as e:  # typically: not on a TPU pod or SLURM job, and nothing set explicitly
    hint = (
        ''
        if settings.explicit
        else (
            f' No TPU pod or SLURM job was detected: set {ENV_COORDINATOR}=host:port, '
            f'{ENV_NUM_PROCESSES} and {ENV_PROCESS_ID}, or run without {ENV_DISTRIBUTED}=1 / '
            '--config.runtime.distributed=True.'
        )
    )
    raise ValueError(f'multi-host start-up failed: {e}{hint}') from None
  finally:
    watchdog.cancel()


def _config_text(config: ml_collections.ConfigDict, workdir: str | None) -> str:
  """Canonical JSON of everything the processes must agree on."""
  return json.dumps({'config': json.loads(config.to_json()), 'workdir': workdir}, sort_keys=True)


def _broadcast_text(text: str) -> str:
  """Process 0's `text` on every process (collective: every process must call it)."""
  data = np.frombuffer(text.encode(), np.uint8).astype(np.int32)
  lengths = np.asarray(multihost_utils.process_allgather(np.int32(data.size))).reshape(-1)
  padded = np.zeros(int(lengths.max()), np.int32)
  padded[: data.size] = data
  received = np.asarray(multihost_utils.broadcast_one_to_all(padded))
  return bytes(received[: int(lengths[0])].astype(np.uint8)).decode()


def check_same_config(config: ml_collections.ConfigDict, workdir: str | None = None) -> None:
  """Raises ConfigMismatchError on every process unless all processes run the same config (and
  workdir). Collective: call it on every process, after jax.distributed.initialize.

  Different configs would not fail by themselves: the processes would train different models in
  lockstep and silently exchange mismatched batches. A hash of the canonical config JSON is
  gathered from every process; on a mismatch process 0's config is broadcast so that each
  differing process can name the keys that differ.
  """
  if jax.process_count() == 1:
    return
  text = _config_text(config, workdir)
  digest = np.frombuffer(hashlib.sha256(text.encode()).digest()[:16], np.int32)
  digests = np.asarray(multihost_utils.process_allgather(digest))
  differing = [i for i in range(digests.shape[0]) if not np.array_equal(digests[i], digests[0])]
  if not differing:
    logging.info('All %d processes run the same config.', jax.process_count())
    return
  reference = schema.flatten(json.loads(_broadcast_text(text)))
  me = jax.process_index()
  hint = 'start every process with the same command and config file'
  if me not in differing:
    raise ConfigMismatchError(
        f'processes disagree on the config: process(es) {", ".join(map(str, differing))} differ '
        f'from process 0 (their logs name the keys); {hint}.'
    )
  mine = schema.flatten(json.loads(text))
  keys = sorted(k for k in set(mine) | set(reference) if mine.get(k) != reference.get(k))
  shown = ', '.join(
      f'{k.removeprefix("config.")}={mine.get(k)!r} (process 0: {reference.get(k)!r})'
      for k in keys[:5]
  )
  more = f' and {len(keys) - 5} more' if len(keys) > 5 else ''
  raise ConfigMismatchError(
      f'processes disagree on the config: process {me} differs from process 0 in {shown}{more}; '
      f'{hint}.'
  )
