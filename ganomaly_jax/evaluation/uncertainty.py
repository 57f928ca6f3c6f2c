"""MC-dropout uncertainty: per-pixel variance over stochastic reconstructions.

With `model.dropout > 0` the generator's dropout layers can stay active at evaluation
(`step.reconstruct_for_eval(..., stochastic=True)`, BatchNorm still on its running statistics). N
reconstructions with independent dropout keys give, per pixel, a variance across samples: the
uncertainty map. Its mean over the image is an alternative anomaly score (`mc_auroc` in results):
inputs unlike the training data tend to make the dropout sub-networks disagree more.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from ganomaly_jax import step as step_lib
from ganomaly_jax.config import frozen


def mc_dropout(
    state: Any,
    x: jax.Array,
    rng: jax.Array,
    *,
    components: Any,
    step_config: frozen.StepConfig,
    num_samples: int,
) -> dict[str, jax.Array]:
  """Runs `num_samples` stochastic reconstructions of a batch and summarises their spread.

  The samples are visited sequentially (`lax.scan`) with Welford's running mean/variance update, so
  memory stays at one reconstruction whatever N is, and the variance does not suffer the float32
  cancellation of E[x²] − E[x]² when the samples barely differ.

  Args:
    state: the train state (GanState).
    x: images [B, H, W, C] in [-1, 1].
    rng: key; sample i uses `fold_in(rng, i)`.
    components: model components (static).
    step_config: step config (static).
    num_samples: N >= 2 (static).

  Returns:
    {'uncertainty': [B, H, W] per-pixel variance (population, over samples; averaged over channels),
     'mc_score': [B] mean variance per image, 'mc_mean': [B, H, W, C] mean reconstruction}.
  """
  if num_samples < 2:
    raise ValueError(f'MC-dropout needs at least 2 samples, got {num_samples}')

  def body(carry, i):
    mean, m2 = carry
    out = step_lib.reconstruct_for_eval(
        components, step_config, state, x, rng=jax.random.fold_in(rng, i), stochastic=True
    )
    sample = out['recon'].astype(jnp.float32)
    count = (i + 1).astype(jnp.float32)
    delta = sample - mean
    mean = mean + delta / count
    m2 = m2 + delta * (sample - mean)
    return (mean, m2), None

  zeros = jnp.zeros(x.shape, jnp.float32)
  (mean, m2), _ = jax.lax.scan(body, (zeros, zeros), jnp.arange(num_samples))
  variance = jnp.mean(m2 / num_samples, axis=-1)  # [B, H, W]
  return {'uncertainty': variance, 'mc_score': jnp.mean(variance, axis=(1, 2)), 'mc_mean': mean}


def make_mc_fn(
    components: Any, step_config: frozen.StepConfig, num_samples: int
) -> Callable[[Any, jax.Array, jax.Array], dict[str, jax.Array]]:
  """A jitted `fn(state, images, rng)` -> `mc_dropout(...)` outputs, for one configuration."""
  return jax.jit(
      functools.partial(
          mc_dropout, components=components, step_config=step_config, num_samples=int(num_samples)
      )
  )
