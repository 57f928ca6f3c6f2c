"""bench/conv_bound.py finds every convolution and dot of a compiled program and rebuilds each one.

Only the HLO reading is tested here; the timing is a benchmark's job.
"""

import os
import sys

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np

from helpers import REPO

sys.path.insert(0, os.path.join(REPO, 'bench'))
import conv_bound  # noqa: E402


def _loss(w1, w2, w3, x):
  h = lax.conv_general_dilated(
      x, w1, (2, 2), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )
  h = jax.nn.relu(h)
  h = lax.conv_transpose(h, w2, (2, 2), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  return jnp.sum(jnp.tanh(h.reshape(h.shape[0], -1) @ w3) ** 2)


def test_every_conv_and_dot_is_found_and_rebuilt_with_its_shapes():
  rng = np.random.default_rng(0)
  args = [
      rng.standard_normal(s).astype(np.float32)
      for s in ((4, 4, 3, 8), (4, 4, 8, 5), (8 * 8 * 5, 6), (2, 8, 8, 3))
  ]
  compiled = jax.jit(jax.grad(_loss, argnums=(0, 1, 2))).lower(*args).compile()
  ops = conv_bound.kernel_ops(compiled.as_text())

  kinds = {kind for kind, *_ in ops}
  assert kinds == {'conv', 'dot'}, ops
  # Forward and backward: at least the two forward convs and each kernel's gradient.
  assert sum(n for (kind, *_), n in ops.items() if kind == 'conv') >= 4
  for kind, out, lhs, rhs, attrs in ops:
    shapes = [jax.ShapeDtypeStruct(conv_bound._dims(s), jnp.float32) for s in (lhs, rhs)]
    result = jax.eval_shape(conv_bound.rebuild(kind, attrs), *shapes)
    assert result.shape == conv_bound._dims(out), (kind, out, lhs, rhs, attrs)


def test_rebuilt_strided_conv_computes_the_same_values():
  rng = np.random.default_rng(1)
  x = rng.standard_normal((2, 8, 8, 3)).astype(np.float32)
  w = rng.standard_normal((4, 4, 3, 8)).astype(np.float32)
  conv = lambda x, w: lax.conv_general_dilated(
      x, w, (2, 2), ((1, 1), (1, 1)), dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )
  ops = conv_bound.kernel_ops(jax.jit(conv).lower(x, w).compile().as_text())
  ((kind, out, lhs, rhs, attrs),) = ops
  assert (kind, lhs, rhs) == ('conv', '2,8,8,3', '4,4,3,8')
  np.testing.assert_allclose(
      conv_bound.rebuild(kind, attrs)(x, w), conv(x, w), rtol=1e-5, atol=1e-5
  )


def test_reversed_kernel_window_is_reproduced():
  # Unoptimised HLO can carry rhs_reversal; the rebuilt conv must reverse the kernel the same way.
  attrs = 'window={size=2x3 rhs_reversal=1x0}, dim_labels=b01f_01io->b01f'
  x = np.arange(2 * 4 * 5 * 1, dtype=np.float32).reshape(2, 4, 5, 1)
  w = np.arange(2 * 3, dtype=np.float32).reshape(2, 3, 1, 1)
  expected = lax.conv_general_dilated(
      x, w[::-1], (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )
  np.testing.assert_allclose(conv_bound.rebuild('conv', attrs)(x, w), expected)
