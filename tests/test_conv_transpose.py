"""The sub-pixel transposed convolution equals flax's nn.ConvTranspose (values, gradients, params)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ganomaly_jax.models.conv_transpose import ConvTranspose, resolve_impl

CASES = [
    # (kernel, stride, padding, input size)
    (4, 2, (2, 2), 4), (4, 2, (2, 2), 7), (5, 2, (2, 3), 4), (5, 2, (2, 3), 8),
    (4, 2, (1, 2), 5), (4, 2, (3, 3), 4), (4, 2, (0, 0), 6), (5, 2, 'VALID', 3),
    (4, 2, 'VALID', 1), (4, 1, 'VALID', 1), (3, 2, (1, 2), 4),
]


def _pair(padding):
  return padding if isinstance(padding, str) else (padding, padding)


@pytest.mark.parametrize('k,s,padding,size', CASES)
def test_subpixel_equals_flax_conv_transpose(k, s, padding, size):
  x = jax.random.normal(jax.random.key(0), (2, size, size, 6))
  reference = nn.ConvTranspose(5, (k, k), strides=(s, s), padding=_pair(padding),
                               use_bias=True, transpose_kernel=False)
  params = reference.init(jax.random.key(1), x)
  params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.key(2), p.shape), params)
  ours = ConvTranspose(5, k, s, padding, use_bias=True, impl='subpixel')
  # Identical parameter trees: checkpoints and counts do not depend on the implementation.
  assert jax.tree.structure(ours.init(jax.random.key(1), x)) == jax.tree.structure(params)
  assert jax.tree.map(jnp.shape, ours.init(jax.random.key(1), x)) == jax.tree.map(jnp.shape, params)

  want, got = reference.apply(params, x), ours.apply(params, x)
  assert want.shape == got.shape
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)

  loss = lambda module: lambda p, x: jnp.sum(jnp.sin(module.apply(p, x)))
  g_want = jax.grad(loss(reference), argnums=(0, 1))(params, x)
  g_got = jax.grad(loss(ours), argnums=(0, 1))(params, x)
  for a, b in zip(jax.tree.leaves(g_got), jax.tree.leaves(g_want)):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_xla_impl_is_flax():
  x = jax.random.normal(jax.random.key(0), (1, 4, 4, 3))
  params = nn.ConvTranspose(4, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)),
                            transpose_kernel=False, use_bias=False).init(jax.random.key(1), x)
  got = ConvTranspose(4, 4, 2, (2, 2), impl='xla').apply(params, x)
  want = nn.ConvTranspose(4, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)),
                          transpose_kernel=False, use_bias=False).apply(params, x)
  np.testing.assert_array_equal(got, want)


def test_bfloat16_compute():
  x = jnp.ones((1, 4, 4, 8), jnp.bfloat16)
  module = ConvTranspose(16, 4, 2, (2, 2), dtype=jnp.bfloat16, impl='subpixel')
  params = module.init(jax.random.key(0), x)
  assert jax.tree.leaves(params)[0].dtype == jnp.float32  # parameters stay float32
  assert module.apply(params, x).dtype == jnp.bfloat16


def test_auto_picks_subpixel_only_where_it_pays():
  assert resolve_impl('auto', (2, 2), 128) == ('subpixel' if jax.default_backend() == 'cpu' else 'xla')
  assert resolve_impl('auto', (2, 2), 1) == 'xla'  # an image layer is too narrow for the matmul
  assert resolve_impl('xla', (2, 2), 128) == 'xla'
  # Without a backward pass (evaluation) XLA's own kernel is faster on mid-sized inputs only;
  # explicit choices stay.
  on_cpu = jax.default_backend() == 'cpu'
  sub = 'subpixel' if on_cpu else 'xla'
  fwd = lambda size, cin: resolve_impl('auto', (2, 2), 128, forward_only=True, in_size=size,
                                       in_features=cin)
  assert fwd(4, 64) == fwd(8, 128) == fwd(16, 256) == 'xla'
  assert fwd(2, 1024) == fwd(16, 128) == fwd(32, 512) == sub
  assert resolve_impl('subpixel', (2, 2), 128, forward_only=True, in_size=4) == 'subpixel'
  with pytest.raises(ValueError, match='impl'):
    resolve_impl('fast', (2, 2))


def test_generator_eval_output_does_not_depend_on_the_forward_kernel():
  # 'auto' evaluates with XLA's kernel and trains with the sub-pixel one: the same parameters must
  # give the same reconstruction either way.
  from ganomaly_jax.models.dcgan import EDEGenerator

  x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3), minval=-1.0, maxval=1.0)
  outs = {}
  for impl in ('xla', 'subpixel'):
    model = EDEGenerator(32, 3, latent_dim=8, base=8, conv_transpose=impl)
    params = model.init(jax.random.key(1), x, train=False)
    outs[impl] = model.apply(params, x, train=False)['recon']
  np.testing.assert_allclose(outs['xla'], outs['subpixel'], atol=1e-5)
