"""cpu.convolution: the CPU form of nn.Conv equals lax.conv_general_dilated, gradients too."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from ganomaly_jax.cpu import conv_transpose, convolution
from helpers import jitted

DN = ('NHWC', 'HWIO', 'NHWC')


@pytest.mark.parametrize(
    'size,k,stride,padding,cin',
    [
        (
            16,
            4,
            2,
            ((1, 1), (1, 1)),
            16,
        ),  # encoder conv, 8x8 output: input grad via the sub-pixel form
        (17, 4, 2, ((1, 1), (1, 1)), 16),  # the last row is never reached by a window (r = 1)
        (20, 5, 2, ((2, 2), (2, 2)), 12),  # 5x5 kernels (modified GANomaly)
        (16, 3, 2, ((0, 1), (1, 0)), 16),  # asymmetric padding
        (18, 4, 3, ((1, 1), (1, 1)), 16),  # stride 3
        (16, 4, 2, 'SAME', 16),
        (8, 4, 2, ((1, 1), (1, 1)), 16),  # 4x4 output: XLA's own gradient
        (16, 4, 2, ((1, 1), (1, 1)), 3),  # image-like channels: XLA's own gradient
        (16, 3, 1, ((1, 1), (1, 1)), 16),  # stride 1: plain lax
        (4, 4, 1, 'VALID', 16),  # 1x1 output: a matmul
    ],
)
def test_equals_lax_values_and_gradients(size, k, stride, padding, cin):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, size, size, cin)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(k, k, cin, 7)), jnp.float32) / k
  dn = lax.conv_dimension_numbers(x.shape, w.shape, DN)
  ref = lambda x, w: lax.conv_general_dilated(x, w, (stride, stride), padding, dimension_numbers=DN)
  ours = lambda x, w: convolution.conv_general_dilated(
      x, w, (stride, stride), padding, dimension_numbers=dn
  )
  dy = jnp.asarray(rng.normal(size=jax.eval_shape(ref, x, w).shape), jnp.float32)
  (y, grads), (y_ref, grads_ref) = jitted.values_and_grads(ours, ref, (x, w), dy)
  assert y.shape == y_ref.shape
  np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5)
  for g, g_ref in zip(grads, grads_ref):
    np.testing.assert_allclose(g, g_ref, rtol=1e-4, atol=1e-4)


def test_strided_conv_is_used_where_its_input_gradient_pays():
  pads = ((1, 1), (1, 1))
  on_cpu = jax.default_backend() == 'cpu'
  assert conv_transpose.input_grad_impl((64, 32, 32, 64), (4, 4, 64, 128), (2, 2), pads) == (
      'subpixel' if on_cpu else None
  )
  # 4x4 output: the input gradient is a transposed conv from 4x4, where XLA's kernel is as fast.
  assert conv_transpose.input_grad_impl((64, 8, 8, 128), (4, 4, 128, 256), (2, 2), pads) is None
  # Padding beyond the kernel has no adjoint form.
  assert (
      conv_transpose.input_grad_impl((64, 32, 32, 64), (4, 4, 64, 128), (2, 2), ((4, 4), (4, 4)))
      is None
  )
