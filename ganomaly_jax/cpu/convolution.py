"""The CPU form of `nn.Conv`'s convolution: the fastest exact form for its shape on XLA:CPU.

`conv_general_dilated` has `lax.conv_general_dilated`'s signature; `kernels` runs it in place of
flax's call for steps lowered for CPU, on `nn.Conv`'s own parameters. For plain NHWC x HWIO
convolutions it picks
  * a matmul when the output map is 1x1 or 2x2 (`matmul_conv`);
  * for strided convs, `conv_transpose.strided_conv`: XLA's forward and kernel gradient, with the
    input gradient computed as our fastest transposed convolution;
and `lax.conv_general_dilated` for everything else.
"""

from __future__ import annotations

from typing import Any, Sequence

from jax import lax

from ganomaly_jax.cpu import conv_transpose, matmul_conv


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
  """`lax.conv_general_dilated` with faster exact forms for plain NHWC/HWIO convs (see module doc)."""
  if matmul_conv.is_plain_nhwc(
      lhs,
      rhs,
      lhs_dilation,
      rhs_dilation,
      dimension_numbers,
      feature_group_count,
      preferred_element_type,
  ):
    strides = tuple(int(s) for s in window_strides)
    y = matmul_conv.tiny_output_conv(lhs, rhs, strides, padding, precision)
    if y is not None:
      return y
    if max(strides) > 1:
      pads = matmul_conv.explicit_padding(lhs, rhs, strides, padding)
      if conv_transpose.input_grad_impl(lhs.shape, rhs.shape, strides, pads) is not None:
        return conv_transpose.strided_conv(lhs, rhs, strides, pads, precision)
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
