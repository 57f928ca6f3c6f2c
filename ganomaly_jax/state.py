"""Train state of both networks and its creation (pure Flax init, no compilation of a step)."""

from __future__ import annotations

import functools
import json
from typing import Any, NamedTuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from ganomaly_jax import models


@flax.struct.dataclass
class GanState:
  """Everything a step reads and writes; a pytree of arrays only, so orbax saves it as is."""

  step: jax.Array
  g_params: Any
  g_stats: Any  # BatchNorm statistics of G ('batch_stats' collection)
  g_opt: Any
  d_params: Any
  d_stats: Any  # BatchNorm and spectral-norm state of D ('batch_stats' collection)
  d_opt: Any
  d_reinits: jax.Array  # how often the discriminator was re-initialised (reference rule)
  skipped_steps: jax.Array  # steps whose update was dropped because a loss was not finite


class Components(NamedTuple):
  """The static half of training: the two modules and their optimizers (closed over, not saved)."""

  generator: nn.Module
  discriminator: nn.Module
  g_tx: optax.GradientTransformation
  d_tx: optax.GradientTransformation


def build_components(config: ml_collections.ConfigDict) -> Components:
  """Modules from `config.model`; Adam optimizers from `config.optim` (TTUR: separate rates)."""
  generator, discriminator = models.build_models(config)
  o = config.optim
  g_tx = optax.adam(o.g_lr, b1=o.b1, b2=o.b2)
  d_tx = optax.adam(o.d_lr, b1=o.b1, b2=o.b2)
  return Components(generator, discriminator, g_tx, d_tx)


def image_shape(config: ml_collections.ConfigDict, batch: int = 1) -> tuple[int, int, int, int]:
  m = config.model
  return (batch, m.isize, m.isize, m.channels)


def init_generator(components: Components, rng: jax.Array, shape) -> tuple[Any, Any]:
  """Returns (params, batch_stats) of the generator."""
  variables = components.generator.init(
      {'params': rng, 'dropout': rng}, jnp.zeros(shape, jnp.float32), train=False
  )
  return variables['params'], variables.get('batch_stats', {})


def init_discriminator(components: Components, rng: jax.Array, shape) -> tuple[Any, Any]:
  """Returns (params, batch_stats) of the discriminator (spectral-norm state lives in batch_stats);
  both empty for model.discriminator=none."""
  variables = components.discriminator.init(rng, jnp.zeros(shape, jnp.float32), train=False)
  return variables.get('params', {}), variables.get('batch_stats', {})


def create_state(
    config: ml_collections.ConfigDict, components: Components, rng: jax.Array
) -> GanState:
  """Initialises both networks and both optimizers."""
  g_rng, d_rng = jax.random.split(rng)
  shape = image_shape(config)
  g_params, g_stats = init_generator(components, g_rng, shape)
  d_params, d_stats = init_discriminator(components, d_rng, shape)
  return GanState(
      step=jnp.zeros((), jnp.int32),
      g_params=g_params,
      g_stats=g_stats,
      g_opt=components.g_tx.init(g_params),
      d_params=d_params,
      d_stats=d_stats,
      d_opt=components.d_tx.init(d_params),
      d_reinits=jnp.zeros((), jnp.int32),
      skipped_steps=jnp.zeros((), jnp.int32),
  )


def abstract_state(config: ml_collections.ConfigDict, components: Components) -> GanState:
  """Shapes and dtypes of the state without allocating or computing anything."""
  return jax.eval_shape(lambda: create_state(config, components, jax.random.key(0)))


# Images per traced forward pass of `trace`: > 1, so that a flattened spatial remainder cannot pass
# for the batch axis in the shape checks (config/checks.py).
FORWARD_BATCH = 2


class Traced(NamedTuple):
  """A config's networks, built once and traced under `jax.eval_shape` (no compute, no compile).

  The architecture check (`checks.check_architecture`), the programs (`programs.build`) and the
  loop's shape-only work (the workdir and disk checks, the ahead-of-time compile) all read this one
  trace, so the networks are built and traced once per architecture, not once per reader.

  Attributes:
    components: the modules and optimizers, as `build_components` gives them.
    state: shapes and dtypes of `create_state`'s GanState (None when the trace failed).
    outputs: shapes of (G's outputs, D's outputs) for FORWARD_BATCH images (None on failure).
    error: why the trace failed (one line), or None.
  """

  components: Components
  state: GanState | None
  outputs: Any
  error: str | None


def trace(config: ml_collections.ConfigDict) -> Traced:
  """The config's `Traced` networks; cached on what they depend on (model, optimizer, dtype and
  the adversarial objective), so every later caller gets the same built components."""
  return _trace(
      json.dumps(
          {
              'model': config.model.to_dict(),
              'optim': config.optim.to_dict(),
              'adversarial': config.loss.adversarial,
              'dtype': config.runtime.dtype,
          },
          sort_keys=True,
          default=list,
      )
  )


@functools.lru_cache(maxsize=64)
def _trace(key: str) -> Traced:
  # Built from the key itself, so an equal key always gets an equal trace (the sections hold
  # scalars only: JSON gives them back unchanged).
  spec = json.loads(key)
  config = ml_collections.ConfigDict(
      {
          'model': spec['model'],
          'optim': spec['optim'],
          'loss': {'adversarial': spec['adversarial']},
          'runtime': {'dtype': spec['dtype']},
      }
  )
  components = build_components(config)
  image = jax.ShapeDtypeStruct(image_shape(config, FORWARD_BATCH), jnp.float32)

  def init_and_forward(x):
    state = create_state(config, components, jax.random.key(0))
    g_out = components.generator.apply(
        {'params': state.g_params, 'batch_stats': state.g_stats}, x, train=False
    )
    d_out = components.discriminator.apply(
        {'params': state.d_params, 'batch_stats': state.d_stats}, x, train=False
    )
    return state, (g_out, d_out)

  try:
    state, outputs = jax.eval_shape(init_and_forward, image)
  except Exception as e:  # a shape error anywhere in either network # pylint: disable=broad-except
    text = str(e).strip().splitlines()
    return Traced(components, None, None, f'{type(e).__name__}: {text[0] if text else ""}'[:200])
  return Traced(components, state, outputs, None)
