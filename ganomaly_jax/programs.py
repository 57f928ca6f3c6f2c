"""The compiled functions of a run, built in one place for a config and a device mesh.

`build(config, mesh)` returns the jitted initialiser, training step and evaluation steps that
`train`, `evaluate`, `infer`, `bench/*` and the tests use (and `readout_program` the evaluation of
every read-out candidate at once, for eval.readout=auto), with the shardings and donation of the
training loop and the runtime CPU switch (`runtime.cpu_kernels`, see `cpu/kernels.py`) applied to
the traced steps. The initialiser runs flax's own layers: the switch never changes a parameter.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import ml_collections

from ganomaly_jax import parallel, state as state_lib, step as step_lib
from ganomaly_jax.cpu import kernels


class Programs(NamedTuple):
  """Jitted functions of one config on one mesh (compiled on first call, or via `.lower`)."""

  components: state_lib.Components
  hp: step_lib.StepConfig
  init: Callable  # rng -> GanState, replicated over the mesh
  train_step: Callable  # (state, batch, rng) -> (state, metrics); donates the state
  eval_step: Callable  # (state, batch) -> scores and losses
  eval_maps: Callable  # (state, batch) -> the same plus reconstructions and anomaly maps


def build(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None,
          components: state_lib.Components | None = None) -> Programs:
  """The run's jitted functions; `mesh` defaults to all devices, `components` to the config's."""
  mesh = parallel.make_mesh() if mesh is None else mesh
  components = state_lib.build_components(config) if components is None else components
  hp = step_lib.StepConfig.from_config(config)
  repl, batch_sh = parallel.replicated(mesh), parallel.batch_sharding(mesh)
  fast = functools.partial(kernels.with_cpu_kernels, mode=config.runtime.cpu_kernels)
  init = jax.jit(functools.partial(state_lib.create_state, config, components), out_shardings=repl)
  train_step = jax.jit(fast(functools.partial(step_lib.train_step, components=components, hp=hp)),
                       in_shardings=(repl, batch_sh, repl), out_shardings=(repl, repl),
                       donate_argnums=0)
  eval_step = jax.jit(fast(functools.partial(step_lib.eval_step, components=components, hp=hp)))
  eval_maps = jax.jit(fast(functools.partial(step_lib.eval_step, components=components, hp=hp,
                                             with_maps=True)))
  return Programs(components, hp, init, train_step, eval_step, eval_maps)


def readout_program(config: ml_collections.ConfigDict, progs: Programs,
                    readouts: tuple[tuple[str, str], ...]) -> Callable:
  """(state, batch) -> `step.eval_readouts` of every (score, map) in `readouts`, jitted as one
  program (eval.readout=auto: one compile however many candidates)."""
  fast = functools.partial(kernels.with_cpu_kernels, mode=config.runtime.cpu_kernels)
  return jax.jit(fast(functools.partial(step_lib.eval_readouts, components=progs.components,
                                        hp=progs.hp, readouts=tuple(readouts))))
