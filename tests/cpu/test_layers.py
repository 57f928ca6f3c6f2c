"""layers: BatchNorm is flax's nn.BatchNorm (variables, outputs, running stats, gradients); conv_init."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ganomaly_jax.models import layers


def _pair(train, dtype=jnp.float32):
  kwargs = dict(use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                scale_init=layers.bn_scale_init)
  return nn.BatchNorm(**kwargs), layers.BatchNorm(**kwargs)


@pytest.mark.parametrize('shape', [(8, 4, 4, 6), (5, 3)])
def test_batch_norm_equals_flax(shape):
  x = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), shape)
  theirs, ours = _pair(train=True)
  variables = theirs.init(jax.random.key(1), x)
  ours_variables = ours.init(jax.random.key(1), x)
  # Same tree, shapes and initial values: checkpoints and counts do not change.
  assert jax.tree.map(jnp.shape, ours_variables) == jax.tree.map(jnp.shape, variables)
  for a, b in zip(jax.tree.leaves(ours_variables), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(a, b)
  variables = jax.tree.map(lambda v: v + 0.1 * jax.random.normal(jax.random.key(2), v.shape),
                           variables)

  y_theirs, new_theirs = theirs.apply(variables, x, mutable=['batch_stats'])
  y_ours, new_ours = ours.apply(variables, x, mutable=['batch_stats'])
  np.testing.assert_allclose(y_ours, y_theirs, atol=2e-5, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(new_ours), jax.tree.leaves(new_theirs)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)

  loss = lambda module: lambda v, x: jnp.sum(jnp.sin(module.apply(v, x, mutable=['batch_stats'])[0]))
  g_theirs = jax.grad(loss(theirs), argnums=(0, 1))(variables, x)
  g_ours = jax.grad(loss(ours), argnums=(0, 1))(variables, x)
  for a, b in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_theirs)):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)

  theirs, ours = _pair(train=False)  # evaluation: running statistics, nothing updated
  np.testing.assert_allclose(ours.apply(variables, x), theirs.apply(variables, x), atol=2e-5,
                             rtol=1e-5)


def test_batch_norm_bfloat16_keeps_float32_statistics():
  x = jax.random.normal(jax.random.key(0), (4, 2, 2, 3)).astype(jnp.bfloat16)
  _, ours = _pair(train=True, dtype=jnp.bfloat16)
  variables = ours.init(jax.random.key(1), x)
  y, stats = ours.apply(variables, x, mutable=['batch_stats'])
  assert y.dtype == jnp.bfloat16
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(stats))
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(variables['params']))


@pytest.mark.parametrize('shape', [(4, 4, 64, 128), (4, 4, 1, 64), (1, 1, 3, 8), (7,)])
def test_conv_init_is_flax_normal_bit_for_bit(shape):
  # The flat draw only changes how fast XLA compiles the initialiser, never the weights: checkpoints
  # and results of earlier runs with the same seed stay reproducible.
  key = jax.random.key(7)
  ours = layers.conv_init(key, shape)
  assert ours.shape == shape and ours.dtype == jnp.float32
  np.testing.assert_array_equal(ours, nn.initializers.normal(stddev=0.02)(key, shape))
  assert 0.01 < float(jnp.std(ours)) < 0.03 or ours.size < 100
