"""Convolutions with tiny output maps (1x1, 2x2), computed as matmuls.

The last conv of every encoder (4x4 features -> latent, 'VALID') and the innermost U-Net conv
(2x2 -> 1x1, stride 2, padding 1) see a single window. XLA:CPU handles the second one badly: it
rewrites it into a kernel-reversed, negatively padded convolution that ran slowly and took a large
share of a SkipGANomaly inference step (bench/profile_step.py). As a matmul over the kernel taps that
actually meet the input, the same layer is exact and fast; padding taps, which only ever multiply
zeros, are skipped. Figures: docs/performance.md#tiny-output-convolutions.

A 2x2 output map (the U-Net conv 4x4 -> 2x2) has a similar problem in training: XLA's input
gradient of it was slow, a large share of a SkipGANomaly step. Written as im2col (four strided
slices of the padded input) and one matmul, autodiff turns the slices into pads and adds and the
gradient into matmuls.

`conv_general_dilated` has `lax.conv_general_dilated`'s signature (used by `convolution`).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from jax import lax

_NHWC = lax.conv_dimension_numbers((1,) * 4, (1,) * 4, ('NHWC', 'HWIO', 'NHWC'))


# Output maps with at most this many positions (2x2) use im2col + matmul.
_IM2COL_MAX_POSITIONS = 4


def explicit_padding(lhs, rhs, strides, padding) -> tuple[tuple[int, int], ...]:
  """((lo_h, hi_h), (lo_w, hi_w)) of a conv given 'SAME' / 'VALID' or explicit pads."""
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def _output_positions(lhs, rhs, strides, pads) -> int:
  n = 1
  for size, k, s, (lo, hi) in zip(lhs.shape[1:3], rhs.shape[:2], strides, pads):
    n *= max(0, (size + lo + hi - k) // s + 1)
  return n


def im2col_conv(
    x: jax.Array,
    kernel: jax.Array,
    strides: tuple[int, int],
    pads: tuple[tuple[int, int], tuple[int, int]],
    precision: Any = None,
) -> jax.Array:
  """NHWC x HWIO conv as patches @ kernel: one strided slice of the padded input per kernel tap."""
  kh, kw, cin, cout = kernel.shape
  sh, sw = strides
  n = x.shape[0]
  # lax.pad takes negative pads too (they crop).
  xp = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (*pads[0], 0), (*pads[1], 0), (0, 0, 0)))
  ho = (xp.shape[1] - kh) // sh + 1
  wo = (xp.shape[2] - kw) // sw + 1
  cols = [
      lax.slice(
          xp, (0, i, j, 0), (n, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, cin), (1, sh, sw, 1)
      )
      for i in range(kh)
      for j in range(kw)
  ]
  patches = jnp.concatenate(cols, axis=-1)
  return jnp.einsum(
      'nhwk,ko->nhwo', patches, kernel.reshape(kh * kw * cin, cout), precision=precision
  )


def _single_window_pads(lhs, rhs, strides, padding):
  """Explicit pads if this is a plain NHWC/HWIO conv whose output is 1x1, else None."""
  if lhs.ndim != 4 or rhs.ndim != 4:
    return None
  pads = explicit_padding(lhs, rhs, strides, padding)
  for size, k, s, (lo, hi) in zip(lhs.shape[1:3], rhs.shape[:2], strides, pads):
    if size + lo + hi < k or (size + lo + hi - k) // s + 1 != 1:
      return None
  return pads


def single_window_conv(
    x: jax.Array,
    kernel: jax.Array,
    pads: tuple[tuple[int, int], tuple[int, int]],
    precision: Any = None,
) -> jax.Array:
  """A conv whose one window starts at (-lo_h, -lo_w): sum over the kernel taps that meet x.

  Args:
    x: [N, H, W, C_in].
    kernel: [kh, kw, C_in, C_out].
    pads: ((lo_h, hi_h), (lo_w, hi_w)) with one output position per spatial dim.
    precision: passed to the matmul.

  Returns:
    [N, 1, 1, C_out].
  """
  (lo_h, _), (lo_w, _) = pads
  kh, kw = kernel.shape[:2]
  # Input rows r meet kernel row r + lo; keep those with 0 <= r + lo < k (and 0 <= r < H).
  r0, r1 = max(0, -lo_h), min(x.shape[1], kh - lo_h)
  c0, c1 = max(0, -lo_w), min(x.shape[2], kw - lo_w)
  x = x[:, r0:r1, c0:c1, :]
  kernel = kernel[r0 + lo_h : r1 + lo_h, c0 + lo_w : c1 + lo_w]
  y = jnp.einsum('nhwc,hwco->no', x, kernel, precision=precision)
  return y[:, None, None, :]


def is_plain_nhwc(
    lhs,
    rhs,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    preferred_element_type: Any = None,
) -> bool:
  """Whether a `lax.conv_general_dilated` call is an ordinary NHWC x HWIO conv (no dilation, groups)."""
  return (
      all(d == 1 for d in (lhs_dilation or (1, 1)))
      and all(d == 1 for d in (rhs_dilation or (1, 1)))
      and feature_group_count == 1
      and preferred_element_type is None
      and dimension_numbers is not None
      and lhs.ndim == 4
      and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers) == _NHWC
  )


def tiny_output_conv(
    lhs, rhs, strides: tuple[int, int], padding, precision: Any = None
) -> jax.Array | None:
  """A plain NHWC conv with a 1x1 or 2x2 output map as matmuls; None for any other output size."""
  pads = _single_window_pads(lhs, rhs, strides, padding)
  if pads is not None:
    return single_window_conv(lhs, rhs, pads, precision)
  pads = explicit_padding(lhs, rhs, strides, padding)
  if 0 < _output_positions(lhs, rhs, strides, pads) <= _IM2COL_MAX_POSITIONS:
    return im2col_conv(lhs, rhs, strides, pads, precision)
  return None


def conv_general_dilated(
    lhs,
    rhs,
    window_strides: Sequence[int],
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    precision: Any = None,
    preferred_element_type: Any = None,
):
  """`lax.conv_general_dilated`, as matmuls when the output map is 1x1 or 2x2 (plain NHWC/HWIO only)."""
  if is_plain_nhwc(
      lhs,
      rhs,
      lhs_dilation,
      rhs_dilation,
      dimension_numbers,
      feature_group_count,
      preferred_element_type,
  ):
    y = tiny_output_conv(lhs, rhs, tuple(window_strides), padding, precision)
    if y is not None:
      return y
  return lax.conv_general_dilated(
      lhs,
      rhs,
      window_strides,
      padding,
      lhs_dilation,
      rhs_dilation,
      dimension_numbers,
      feature_group_count,
      precision=precision,
      preferred_element_type=preferred_element_type,
  )
