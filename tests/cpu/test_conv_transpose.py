"""The sub-pixel transposed convolution equals flax's nn.ConvTranspose (values, gradients, params)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ganomaly_jax.cpu.conv_transpose import ConvTranspose, resolve_impl
from helpers import jitted

CASES = [
    # (kernel, stride, padding, input size)
    (4, 2, (2, 2), 4),
    (4, 2, (2, 2), 7),
    (5, 2, (2, 3), 4),
    (5, 2, (2, 3), 8),
    (4, 2, (1, 2), 5),
    (4, 2, (3, 3), 4),
    (4, 2, (0, 0), 6),
    (5, 2, 'VALID', 3),
    (4, 2, 'VALID', 1),
    (4, 1, 'VALID', 1),
    (3, 2, (1, 2), 4),
]


def _slow_after(cases, n):
  """The first n cases run in the fast loop; the rest only in the full suite (marked slow)."""
  return [c if i < n else pytest.param(*c, marks=pytest.mark.slow) for i, c in enumerate(cases)]


def _pair(padding):
  return padding if isinstance(padding, str) else (padding, padding)


def _assert_equals_flax(impl, k, s, padding, size, features=5):
  """Values (1e-5), gradients (1e-4) and the parameter tree equal nn.ConvTranspose's."""
  reference = nn.ConvTranspose(
      features,
      (k, k),
      strides=(s, s),
      padding=_pair(padding),
      use_bias=True,
      transpose_kernel=False,
  )

  @jax.jit
  def setup():
    x = jax.random.normal(jax.random.key(0), (2, size, size, 6))
    params = reference.init(jax.random.key(1), x)
    return x, jax.tree.map(
        lambda p: p + 0.1 * jax.random.normal(jax.random.key(2), p.shape), params
    )

  x, params = setup()
  ours = ConvTranspose(features, k, s, padding, use_bias=True, impl=impl)
  # Identical parameter trees: checkpoints and counts do not depend on the implementation.
  ours_params = jax.eval_shape(ours.init, jax.random.key(1), x)
  assert jax.tree.structure(ours_params) == jax.tree.structure(params)
  assert jax.tree.map(jnp.shape, ours_params) == jax.tree.map(jnp.shape, params)

  # Values, and gradients with respect to parameters and input (one random cotangent for both).
  shape = jax.eval_shape(reference.apply, params, x).shape
  dy = np.random.default_rng(3).normal(size=shape).astype(np.float32)
  (got, g_got), (want, g_want) = jitted.values_and_grads(
      ours.apply, reference.apply, (params, x), dy
  )
  assert want.shape == got.shape
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g_got), jax.tree.leaves(g_want)):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize('k,s,padding,size', _slow_after(CASES, 2))
def test_subpixel_equals_flax_conv_transpose(k, s, padding, size):
  _assert_equals_flax('subpixel', k, s, padding, size)


def test_xla_impl_is_flax():
  x = jax.random.normal(jax.random.key(0), (1, 4, 4, 3))
  params = nn.ConvTranspose(
      4, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)), transpose_kernel=False, use_bias=False
  ).init(jax.random.key(1), x)
  got = ConvTranspose(4, 4, 2, (2, 2), impl='xla').apply(params, x)
  want = nn.ConvTranspose(
      4, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)), transpose_kernel=False, use_bias=False
  ).apply(params, x)
  np.testing.assert_array_equal(got, want)


def test_bfloat16_compute():
  x = jnp.ones((1, 4, 4, 8), jnp.bfloat16)
  module = ConvTranspose(16, 4, 2, (2, 2), dtype=jnp.bfloat16, impl='subpixel')
  params, y = jax.jit(
      lambda x: (
          module.init(jax.random.key(0), x),
          module.apply(module.init(jax.random.key(0), x), x),
      )
  )(x)
  assert jax.tree.leaves(params)[0].dtype == jnp.float32  # parameters stay float32
  assert y.dtype == jnp.bfloat16


def test_auto_picks_the_forward_kernel_per_layer():
  auto = lambda hw, features=128, strides=(2, 2): resolve_impl('auto', strides, features, hw)
  assert auto((1, 1)) == auto((1, 1), strides=(1, 1)) == 'matmul'  # one input pixel
  assert auto((2, 2)) == auto((1, 2)) == 'scatter'
  assert auto((3, 3)) == auto((4, 4)) == 'xla'
  assert auto((8, 8)) == auto((16, 16)) == auto((32, 32)) == auto((5, 8)) == 'subpixel'
  assert auto((32, 32), features=3) == 'xla'  # an image layer is too narrow for the phase conv
  # Explicit choices stay.
  assert resolve_impl('xla', (2, 2), 128, (32, 32)) == 'xla'
  assert resolve_impl('subpixel', (2, 2), 128, (4, 4)) == 'subpixel'
  with pytest.raises(ValueError, match='impl'):
    resolve_impl('fast', (2, 2))


AUTO_CASES = CASES + [
    (4, 2, (2, 2), 1),
    (4, 2, (2, 2), 16),
    (4, 1, (3, 3), 3),
    (4, 2, (4, 4), 3),
    (4, 2, (2, 2), 2),
    (5, 2, (2, 3), 2),
    (3, 2, (1, 2), 2),
    (4, 2, (0, 4), 2),
]


# Fast loop: a few regular shapes and every small-input form (matmul, scatter-add); all in the full suite.
@pytest.mark.parametrize('features', [5, pytest.param(64, marks=pytest.mark.slow)])
@pytest.mark.parametrize('k,s,padding,size', _slow_after(CASES, 1) + AUTO_CASES[len(CASES) :])
def test_auto_equals_flax_values_and_gradients(k, s, padding, size, features):
  # 'auto' mixes forward kernels (matmul for 1x1 inputs, XLA's or the sub-pixel one) with the
  # adjoint-convolution backward pass; all of it must be nn.ConvTranspose, gradients included.
  _assert_equals_flax('auto', k, s, padding, size, features)


def test_single_pixel_gradient_with_padding_beyond_the_kernel():
  # lo = 5 > k - 1: the output starts before the kernel's reach. (XLA's own gradient of
  # lax.conv_transpose is wrong here on CPU, jaxlib 0.10.2: input gradient ~1e12, so we compare
  # against the sub-pixel form and a finite difference instead.)
  x = jax.random.normal(jax.random.key(0), (2, 1, 1, 6))
  module = lambda impl: ConvTranspose(5, 4, 2, (5, 1), impl=impl)
  params = jax.jit(module('subpixel').init)(jax.random.key(1), x)
  loss = lambda impl: lambda x: jnp.sum(jnp.sin(module(impl).apply(params, x)))

  @jax.jit  # one program: op-by-op dispatch would compile every op of both forms on its own
  def outputs(x):
    step = jnp.zeros_like(x).at[0, 0, 0, 0].set(1e-2)
    return (
        module('auto').apply(params, x),
        module('subpixel').apply(params, x),
        jax.grad(loss('auto'))(x),
        jax.grad(loss('subpixel'))(x),
        (loss('auto')(x + step) - loss('auto')(x - step)) / 2e-2,
    )

  y, y_subpixel, got, got_subpixel, numeric = outputs(x)
  np.testing.assert_allclose(y, y_subpixel, atol=1e-5)
  np.testing.assert_allclose(got, got_subpixel, atol=1e-4, rtol=1e-4)
  np.testing.assert_allclose(got[0, 0, 0, 0], numeric, rtol=1e-2)


@pytest.mark.slow
def test_generator_output_does_not_depend_on_the_cpu_kernels():
  # The same parameters give the same reconstruction (and batch statistics) with the switch on/off.
  from ganomaly_jax.cpu import kernels
  from ganomaly_jax.models.dcgan import EDEGenerator

  x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3), minval=-1.0, maxval=1.0)
  model = EDEGenerator(32, 3, latent_dim=8, base=8)
  variables = jax.jit(lambda x: model.init(jax.random.key(1), x, train=False))(x)
  outs = {}
  for mode in ('off', 'auto'):
    apply = kernels.with_cpu_kernels(
        lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']), mode
    )
    outs[mode] = jax.jit(apply)(variables, x)
    with kernels.cpu_kernels(mode):  # the switch never changes the parameter tree
      assert jax.tree.map(
          jnp.shape, jax.eval_shape(lambda x: model.init(jax.random.key(1), x, train=False), x)
      ) == (jax.tree.map(jnp.shape, variables))
  for a, b in zip(jax.tree.leaves(outs['off']), jax.tree.leaves(outs['auto'])):
    np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-5)
