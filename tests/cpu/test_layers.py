"""cpu.batch_norm and the BatchNorm interceptor equal flax's nn.BatchNorm; models' initialisers."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ganomaly_jax.cpu import batch_norm, kernels
from ganomaly_jax.models import layers


def _flax(train, dtype=jnp.float32):
  return layers.batch_norm(train, dtype)


@pytest.mark.parametrize('shape', [(8, 4, 4, 6), (5, 3)])
def test_batch_norm_cpu_form_equals_flax(shape):
  x = 3.0 + 2.0 * jax.random.normal(jax.random.key(0), shape)
  module = _flax(train=True)
  variables = module.init(jax.random.key(1), x)
  with kernels.cpu_kernels('auto'):  # same variables, names, shapes and initial values
    ours_variables = module.init(jax.random.key(1), x)
  assert jax.tree.map(jnp.shape, ours_variables) == jax.tree.map(jnp.shape, variables)
  for a, b in zip(jax.tree.leaves(ours_variables), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(a, b)
  variables = jax.tree.map(lambda v: v + 0.1 * jax.random.normal(jax.random.key(2), v.shape),
                           variables)

  def run(mode, train=True):
    fn = lambda v, x: _flax(train).apply(v, x, mutable=['batch_stats'])
    return jax.jit(kernels.with_cpu_kernels(fn, mode))

  (y_theirs, new_theirs), (y_ours, new_ours) = run('off')(variables, x), run('auto')(variables, x)
  np.testing.assert_allclose(y_ours, y_theirs, atol=2e-5, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(new_ours), jax.tree.leaves(new_theirs)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)

  def grad(mode):
    loss = lambda v, x: jnp.sum(jnp.sin(_flax(True).apply(v, x, mutable=['batch_stats'])[0]))
    return jax.jit(kernels.with_cpu_kernels(jax.grad(loss, argnums=(0, 1)), mode))(variables, x)

  for a, b in zip(jax.tree.leaves(grad('auto')), jax.tree.leaves(grad('off'))):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
  # evaluation: running statistics, nothing updated
  np.testing.assert_allclose(run('auto', False)(variables, x)[0], run('off', False)(variables, x)[0],
                             atol=2e-5, rtol=1e-5)


def test_batch_norm_bfloat16_keeps_float32_statistics():
  x = jax.random.normal(jax.random.key(0), (4, 2, 2, 3)).astype(jnp.bfloat16)
  module = _flax(train=True, dtype=jnp.bfloat16)
  variables = module.init(jax.random.key(1), x)
  fn = jax.jit(kernels.with_cpu_kernels(lambda v, x: module.apply(v, x, mutable=['batch_stats'])))
  y, stats = fn(variables, x)
  assert y.dtype == jnp.bfloat16
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(stats))
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(variables['params']))


def test_batch_stats_gradients_are_the_centred_ones():
  x = 5.0 + jax.random.normal(jax.random.key(0), (6, 2, 2, 3))
  plain = lambda x: (x.mean((0, 1, 2)), x.var((0, 1, 2)))
  for i in range(2):
    ours = jax.grad(lambda x: jnp.sum(jnp.sin(batch_norm.batch_stats(x)[i])))(x)
    want = jax.grad(lambda x: jnp.sum(jnp.sin(plain(x)[i])))(x)
    np.testing.assert_allclose(ours, want, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize('shape', [(4, 4, 64, 128), (4, 4, 1, 64), (1, 1, 3, 8)])
def test_conv_init_is_dcgan_normal(shape):
  # N(0, 0.02), drawn as flax's normal initialiser (the same bits as earlier versions' flat draw).
  key = jax.random.key(7)
  ours = layers.conv_init(key, shape)
  assert ours.shape == shape and ours.dtype == jnp.float32
  np.testing.assert_array_equal(ours, jax.random.normal(key, (int(np.prod(shape)),)).reshape(shape) * 0.02)
