"""The compiled functions of a run, built in one place for a config and a device mesh.

`build(config, mesh)` returns the jitted initialiser, training step and evaluation steps that
`train`, `evaluate`, `infer`, `bench/*` and the tests use (and `readout_program` the evaluation of
every read-out candidate at once, for eval.readout=auto), with the shardings and donation of the
training loop and the runtime CPU switch (`runtime.cpu_kernels`, see `cpu/kernels.py`) applied to
the traced steps. The initialiser runs flax's own layers: the switch never changes a parameter.

The programs of the last few (config, mesh) pairs are kept (`CACHE_SIZE`), keyed on everything
they are traced from (`program_key`): a run of the same method on another class, seed or step
budget gets the same jitted functions and so reuses their compiled executables instead of
compiling again (a benchmark suite runs each method on many classes and seeds in one process).
Seeds and data are arguments of the programs, never constants in them, so a reused program
computes exactly what a fresh one would.
"""

from __future__ import annotations

import collections
import functools
import json
import threading
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from ganomaly_jax import state as state_lib, step as step_lib
from ganomaly_jax.config import frozen, schema
from ganomaly_jax.runtime import parallel
from ganomaly_jax.cpu import kernels


class Programs(NamedTuple):
  """Jitted functions of one config on one mesh (compiled on first call, or via `.lower`)."""

  components: state_lib.Components
  step_config: frozen.StepConfig
  init: Callable  # rng -> GanState, replicated over the mesh
  train_step: Callable  # (state, batch, rng) -> (state, metrics); donates the state
  eval_step: Callable  # (state, batch) -> scores and losses
  eval_maps: Callable  # (state, batch) -> the same plus reconstructions and anomaly maps
  # Executables compiled ahead of time from these functions (`compiled`), by what they were
  # compiled for; kept with the programs so a cached entry keeps them too.
  aot: dict[Any, Any]

  def compiled(self, name: str, *shapes: Any) -> Any:
    """`getattr(self, name).lower(*shapes).compile()`, once per (name, shapes) for these programs."""
    leaves, treedef = jax.tree.flatten(shapes)
    key = (name, treedef, tuple((tuple(x.shape), str(x.dtype)) for x in leaves))
    if key not in self.aot:
      self.aot[key] = getattr(self, name).lower(*shapes).compile()
    return self.aot[key]


# Config keys no program reads: the data (an argument), the seed (PRNG keys are arguments), the
# loop's schedule and the run's bookkeeping. Runs that differ only here share their programs;
# tests/test_program_cache.py checks that changing all of them leaves the lowered programs equal.
PROGRAM_FREE_KEYS = (
    'method',
    'mode',
    'seed',
    'restart',
    'dataset',
    'train.num_steps',
    'train.log_every',
    'train.eval_every',
    'train.checkpoint_every',
    'train.image_every',
    'train.keep_checkpoints',
    'train.on_nonfinite',
    'train.max_rollbacks',
    'eval.bank_size',
    'runtime.compile_cache_dir',
    'runtime.distributed',
)
# Keys inside PROGRAM_FREE_KEYS' groups that the programs do read (config.frozen.StepConfig.normalization).
PROGRAM_KEYS = ('dataset.normalization',)
# Kept programs (each holds a method's compiled executables for one mesh): the oldest go first.
CACHE_SIZE = 4
_cache: collections.OrderedDict[Any, Programs] = collections.OrderedDict()
_cache_lock = threading.Lock()


def program_key(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh) -> tuple[str, Any]:
  """What the programs of `config` on `mesh` are traced from: the config less PROGRAM_FREE_KEYS."""
  flat = {
      k: v
      for k, v in schema.flatten(config.to_dict()).items()
      if k in PROGRAM_KEYS or not any(k == f or k.startswith(f + '.') for f in PROGRAM_FREE_KEYS)
  }
  return json.dumps(flat, sort_keys=True, default=repr), mesh


def group_key(config: ml_collections.ConfigDict) -> str | None:
  """Runs with the same key may train as one group (`runtime.step_group`): training runs with
  equal programs; None for a run that trains nothing (mode=eval)."""
  if config.mode != 'train':
    return None
  return program_key(config, None)[0]


def set_cache_size(size: int) -> None:
  """Keeps at most `size` programs (at least 1); drops the oldest beyond it now."""
  global CACHE_SIZE
  with _cache_lock:
    CACHE_SIZE = max(1, int(size))
    while len(_cache) > CACHE_SIZE:
      _cache.popitem(last=False)


def clear_cache() -> None:
  """Forgets every kept program (their executables go when nothing else holds them)."""
  with _cache_lock:
    _cache.clear()


def build(
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh | None = None,
    components: state_lib.Components | None = None,
) -> Programs:
  """The run's jitted functions; `mesh` defaults to all devices, `components` to the config's.

  Without `components`, the programs of an equal `program_key` built before are returned when
  still kept (see the module docstring); given components are the caller's own, never cached.
  """
  mesh = parallel.make_mesh() if mesh is None else mesh
  if components is not None:
    return _build(config, mesh, components)
  key = program_key(config, mesh)
  with _cache_lock:
    if key in _cache:
      _cache.move_to_end(key)
      return _cache[key]
  # The components the architecture check traced (`state.trace`): the networks are built once.
  progs = _build(config, mesh, state_lib.trace(config).components)
  with _cache_lock:
    progs = _cache.setdefault(key, progs)  # another thread may have built the same meanwhile
    _cache.move_to_end(key)
    while len(_cache) > CACHE_SIZE:
      _cache.popitem(last=False)
  return progs


def _build(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh, components: state_lib.Components
) -> Programs:
  step_config = frozen.StepConfig.from_config(config)
  repl, batch_sh = parallel.replicated(mesh), parallel.batch_sharding(mesh)
  fast = functools.partial(kernels.with_cpu_kernels, mode=config.runtime.cpu_kernels)
  init = jax.jit(functools.partial(state_lib.create_state, config, components), out_shardings=repl)
  bound = dict(components=components, step_config=step_config)
  train_step = jax.jit(
      fast(functools.partial(step_lib.train_step, **bound)),
      in_shardings=(repl, batch_sh, repl),
      out_shardings=(repl, repl),
      donate_argnums=0,
  )
  eval_step = jax.jit(fast(functools.partial(step_lib.eval_step, **bound)))
  eval_maps = jax.jit(fast(functools.partial(step_lib.eval_step, **bound, with_maps=True)))
  return Programs(components, step_config, init, train_step, eval_step, eval_maps, {})


def kept_program(
    config: ml_collections.ConfigDict, progs: Programs, step_fn: Callable, **static: Any
) -> Callable:
  """`step_fn` (a function of `step.py`) bound to the run's components, step config and `static`
  keyword arguments, under the CPU switch and jitted; kept with `progs` (their `aot` dict), so the
  runs that share cached programs share this one too."""
  frozen_static = tuple(sorted(static.items()))
  key = (step_fn.__name__, frozen_static, config.runtime.cpu_kernels)
  if key not in progs.aot:
    fast = functools.partial(kernels.with_cpu_kernels, mode=config.runtime.cpu_kernels)
    bound = functools.partial(
        step_fn, components=progs.components, step_config=progs.step_config, **static
    )
    progs.aot[key] = jax.jit(fast(bound))
  return progs.aot[key]


def readout_program(
    config: ml_collections.ConfigDict, progs: Programs, readouts: tuple[tuple[str, str], ...]
) -> Callable:
  """(state, batch[, banks]) -> `step.eval_readouts` of every (score, map) in `readouts`, jitted as
  one program (eval.readout=auto: one compile however many candidates); kept with `progs`."""
  return kept_program(config, progs, step_lib.eval_readouts, readouts=tuple(readouts))


def embed_program(config: ml_collections.ConfigDict, progs: Programs, feature: str) -> Callable:
  """(state, batch) -> `step.embed` of `feature` ([B, D] embeddings); kept with `progs`."""
  return kept_program(config, progs, step_lib.embed, feature=feature)


def group_program(config: ml_collections.ConfigDict, progs: Programs, mesh: jax.sharding.Mesh):
  """k -> `group_train_step(config, progs, mesh, k)`, one object per kept programs: the runs of a
  step group that hand in the same one share a call (`runtime.step_group`)."""
  key = ('group_program', config.runtime.cpu_kernels)
  if key not in progs.aot:
    progs.aot[key] = functools.partial(group_train_step, config, progs, mesh)
  return progs.aot[key]


def group_train_step(
    config: ml_collections.ConfigDict, progs: Programs, mesh: jax.sharding.Mesh, members: int
) -> Callable:
  """The training step of `members` runs that share these programs, as one jitted program.

  (states, batches, rngs) -> (states, metrics), each a tuple with one entry per run; the states are
  donated. Lowered for CPU, the program holds one copy of the step per run: XLA:CPU runs a
  vmapped step (grouped convolutions) slower than the same steps one by one
  (docs/performance.md#seeds-as-one-program), and each copy computes bit for bit what the run's own
  `train_step` does. Lowered for any other platform the runs are stacked and the step is vmapped,
  which fills an accelerator that one small run leaves mostly idle (equal to the runs alone to float
  tolerance). Kept with `progs` (one per group size); `mesh` is the one `progs` were built for.
  """
  key = ('group_train_step', members, config.runtime.cpu_kernels)
  if key not in progs.aot:
    fast = functools.partial(kernels.with_cpu_kernels, mode=config.runtime.cpu_kernels)
    single = fast(
        functools.partial(
            step_lib.train_step, components=progs.components, step_config=progs.step_config
        )
    )

    def one_by_one(states, batches, rngs):
      outs = [single(s, b, r) for s, b, r in zip(states, batches, rngs)]
      return tuple(o[0] for o in outs), tuple(o[1] for o in outs)

    def stacked(states, batches, rngs):
      stack = lambda trees: jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)
      new_states, metrics = jax.vmap(single)(stack(states), stack(batches), stack(rngs))
      unstack = lambda tree: tuple(
          jax.tree.map(functools.partial(lambda i, x: x[i], i), tree) for i in range(members)
      )
      return unstack(new_states), unstack(metrics)

    def group_step(states, batches, rngs):
      return jax.lax.platform_dependent(states, batches, rngs, cpu=one_by_one, default=stacked)

    group_step.__name__ = group_step.__qualname__ = f'group_train_step_{members}'
    repl, batch_sh = parallel.replicated(mesh), parallel.batch_sharding(mesh)
    progs.aot[key] = jax.jit(
        group_step,
        in_shardings=(repl, batch_sh, repl),
        out_shardings=(repl, repl),
        donate_argnums=0,
    )
  return progs.aot[key]
