"""Tiny-output convolutions as matmuls: equal to lax.conv_general_dilated, values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ganomaly_jax.cpu import matmul_conv
from helpers import jitted

DN = ('NHWC', 'HWIO', 'NHWC')


@pytest.mark.parametrize(
    'size,k,stride,padding',
    [
        (4, 4, 1, 'VALID'),  # encoder's last conv: 4x4 features -> latent
        (2, 4, 2, ((1, 1), (1, 1))),  # innermost U-Net conv: 2x2 -> 1x1
        (1, 4, 1, 'SAME'),  # SkipGANomaly classifier on the 1x1 latent map
        (1, 3, 1, 'SAME'),
        (2, 5, 2, ((2, 2), (2, 2))),  # 5x5 kernels (modified GANomaly)
        (3, 2, 1, ((-1, 0), (0, -1))),  # negative padding crops the input
        (4, 4, 2, ((1, 1), (1, 1))),  # 2x2 output (U-Net 4x4 -> 2x2): im2col
        (3, 5, 2, ((2, 2), (2, 2))),  # 2x2 output with 5x5 kernels
        (5, 3, 2, ((0, 1), (1, 0))),  # asymmetric padding
    ],
)
def test_equals_lax_conv_values_and_grads(size, k, stride, padding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(3, size, size, 5)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, 5, 7)), jnp.float32)
  ref = lambda x, w: lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=DN)
  ours = lambda x, w: matmul_conv.conv_general_dilated(
      x,
      w,
      (stride, stride),
      padding,
      dimension_numbers=lax.conv_dimension_numbers(x.shape, w.shape, DN),
  )
  dy = jnp.asarray(rng.normal(size=jax.eval_shape(ref, x, w).shape), jnp.float32)
  (y, grads), (y_ref, grads_ref) = jitted.values_and_grads(ours, ref, (x, w), dy)
  assert y.shape == y_ref.shape and y.shape[1] * y.shape[2] <= 4
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  for g, g_ref in zip(grads, grads_ref):
    np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-5)


def test_multi_window_convs_fall_through_to_lax():
  x = jnp.ones((2, 8, 8, 3))
  w = jnp.ones((4, 4, 3, 4))
  dn = lax.conv_dimension_numbers(x.shape, w.shape, DN)
  y = matmul_conv.conv_general_dilated(x, w, (2, 2), ((1, 1), (1, 1)), dimension_numbers=dn)
  np.testing.assert_allclose(
      y, lax.conv_general_dilated(x, w, (2, 2), ((1, 1), (1, 1)), dimension_numbers=DN)
  )
  assert matmul_conv._single_window_pads(x, w, (2, 2), ((1, 1), (1, 1))) is None
  assert matmul_conv._single_window_pads(jnp.ones((2, 2, 2, 3)), w, (2, 2), ((1, 1), (1, 1))) == (
      (1, 1),
      (1, 1),
  )
