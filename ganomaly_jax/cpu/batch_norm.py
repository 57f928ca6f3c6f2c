"""BatchNorm's batch statistics as two matrix-vector products, the form XLA:CPU runs fastest.

XLA:CPU split flax's reductions over the batch and spatial axes into slow reduce-window passes; as
matrix-vector products over the rows of the flattened activations the training step is faster
(docs/performance.md#batchnorm-statistics). The products are taken at HIGHEST precision and on
data shifted by one sample per channel: the variance is then E[d^2] - E[d]^2 of values near zero,
which keeps float32 exact for activations whose mean is large against their spread (E[x^2] -
E[x]^2 on the raw values would cancel), and a backend that runs default-precision dots in bfloat16
could not lose it.
"""

from __future__ import annotations

import jax
from jax import lax
import jax.numpy as jnp


def batch_stats(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Biased mean and variance over all axes but the last, in float32 (as flax's BatchNorm)."""
  rows = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
  weights = jnp.full((rows.shape[0],), 1.0 / rows.shape[0], jnp.float32)
  shift = lax.stop_gradient(rows[0])  # any value near the mean; the result does not depend on it
  d = rows - shift
  mean_d = jnp.dot(weights, d, precision=lax.Precision.HIGHEST)
  var = jnp.maximum(jnp.dot(weights, d * d, precision=lax.Precision.HIGHEST) - mean_d * mean_d, 0.0)
  return shift + mean_d, var
