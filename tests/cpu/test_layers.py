"""cpu.batch_norm and the BatchNorm interceptor equal flax's nn.BatchNorm; models' initialisers."""

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
  x = 3.0 + 2.0 * np.random.default_rng(0).standard_normal(shape).astype(np.float32)
  module = _flax(train=True)
  init = lambda x: module.init(jax.random.key(1), x)
  variables = jax.jit(init)(x)
  with kernels.cpu_kernels('auto'):  # same variables, names, shapes and initial values
    ours_variables = jax.jit(init)(x)
  assert jax.tree.map(jnp.shape, ours_variables) == jax.tree.map(jnp.shape, variables)
  for a, b in zip(jax.tree.leaves(ours_variables), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(a, b)
  variables = jax.tree.map(
      lambda v: v + 0.1 * np.random.default_rng(2).standard_normal(v.shape).astype(np.float32),
      variables,
  )

  def outputs(mode):
    """Training (output, new statistics), gradients of sum(sin(output)), evaluation output."""
    train = lambda v, x: _flax(True).apply(v, x, mutable=['batch_stats'])
    loss = lambda v, x: jnp.sum(jnp.sin(train(v, x)[0]))
    evaluate = lambda v, x: _flax(False).apply(v, x, mutable=['batch_stats'])[0]
    return kernels.with_cpu_kernels(
        lambda v, x: (train(v, x), jax.grad(loss, argnums=(0, 1))(v, x), evaluate(v, x)), mode
    )

  # Both modes in one program (op-by-op dispatch or a program each compiles far more).
  ours, theirs = jax.jit(lambda v, x: (outputs('auto')(v, x), outputs('off')(v, x)))(variables, x)
  (y_ours, new_ours), grad_ours, eval_ours = ours
  (y_theirs, new_theirs), grad_theirs, eval_theirs = theirs
  np.testing.assert_allclose(y_ours, y_theirs, atol=2e-5, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(new_ours), jax.tree.leaves(new_theirs)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(grad_ours), jax.tree.leaves(grad_theirs)):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
  # evaluation: running statistics, nothing updated
  np.testing.assert_allclose(eval_ours, eval_theirs, atol=2e-5, rtol=1e-5)


def test_batch_norm_bfloat16_keeps_float32_statistics():
  x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 2, 2, 3)), jnp.bfloat16)
  module = _flax(train=True, dtype=jnp.bfloat16)
  variables = jax.jit(lambda x: module.init(jax.random.key(1), x))(x)
  fn = jax.jit(kernels.with_cpu_kernels(lambda v, x: module.apply(v, x, mutable=['batch_stats'])))
  y, stats = fn(variables, x)
  assert y.dtype == jnp.bfloat16
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(stats))
  assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(variables['params']))


def test_batch_stats_gradients_are_the_centred_ones():
  x = 5.0 + np.random.default_rng(0).standard_normal((6, 2, 2, 3)).astype(np.float32)
  plain = lambda x: (x.mean((0, 1, 2)), x.var((0, 1, 2)))
  grads = lambda stats: [
      jax.grad(lambda x, i=i: jnp.sum(jnp.sin(stats(x)[i])))(x) for i in range(2)
  ]
  ours, want = jax.jit(lambda x: (grads(batch_norm.batch_stats), grads(plain)))(x)
  for i in range(2):
    np.testing.assert_allclose(ours[i], want[i], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize('shape', [(4, 4, 64, 128), (4, 4, 1, 64), (1, 1, 3, 8)])
def test_conv_init_is_dcgan_normal(shape):
  # N(0, 0.02), drawn as flax's normal initialiser (the same bits as earlier versions' flat draw).
  key = jax.random.key(7)
  ours = layers.conv_init(key, shape)
  assert ours.shape == shape and ours.dtype == jnp.float32
  np.testing.assert_array_equal(
      ours, jax.random.normal(key, (int(np.prod(shape)),)).reshape(shape) * 0.02
  )
