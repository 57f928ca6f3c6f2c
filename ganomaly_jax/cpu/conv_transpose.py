"""Transposed convolutions computed faster on XLA:CPU, exact equivalents of `nn.ConvTranspose`.

On XLA:CPU the gradient of a strided `lax.conv_transpose` (a convolution with `lhs_dilation`) with
respect to its kernel is slow on these shapes (docs/performance.md#transposed-convolutions), and
the GAN decoders are a chain of such layers. With the CPU kernels on (`ganomaly_jax.cpu.kernels`),
each `nn.ConvTranspose` layer instead runs (`conv_transpose`)
  * forward: whichever of three exact forms was measured fastest for its shape (`resolve_impl`): XLA's
    own kernel, the "sub-pixel" form below, or a single matmul when the input is 1x1;
  * backward: the transposed convolution is the adjoint of a strided convolution, so its input
    gradient is that strided convolution and its kernel gradient is that convolution's kernel
    gradient (`conv_transpose_adjoint_grads`): the ops of an encoder's backward pass, which XLA:CPU
    runs fast.
The parameters are the untouched `nn.ConvTranspose` kernel ([kh, kw, in, out], `transpose_kernel=False`),
so the parameter tree, parameter count and checkpoints do not depend on which implementation runs.

Sub-pixel form: a transposed convolution with stride `s` is exactly a set of `s` x `s` stride-1
convolutions of the *undilated* input, one per output phase, interleaved (depth-to-space). We compute
all phases with ONE stride-1 convolution whose `s*s*features` output channels hold the phases side by
side, then do one reshape/transpose; the sub-kernels are views of the kernel built inside the traced
function. The phase convolution is an im2col matmul where JAX differentiates it (`impl='subpixel'`)
and XLA's stride-1 convolution where it is only run forward (`impl='auto'`).

Derivation (per spatial dim; kernel size k, stride s, explicit padding (lo, hi)). `lax.conv_transpose`
computes

  out[o] = sum_j xd[o + j - lo] * K[j],     xd[s*i] = x[i], zero elsewhere,
  len(out) = (H - 1) * s + 1 + lo + hi - k + 1.

Only taps with `o + j - lo = s*i` contribute. Write the tap as `j = c + s*t` (c = j mod s) and
`m = i - t`; then `o = s*m + lo - c` and

  out[s*m + lo - c] = sum_t x[m + t] * K[c + s*t],

i.e. for each tap residue c, a plain stride-1 correlation of x with the sub-kernel K[c::s] (T = ceil(k/s)
taps, zero-padded at the end where k % s != 0), landing on every s-th output. With phase p = s-1-c the
outputs of all phases, laid out as Z[s*m + p], satisfy out[o] = Z[o + s - 1 - lo]: a depth-to-space
followed by a crop. Sub-kernels of equal size are what makes a single fused convolution possible without
any shifting between phases.
"""

from __future__ import annotations

from collections.abc import Sequence
import functools
import math
from typing import Any, Literal

import flax.linen as nn
from flax.linen import dtypes as flax_dtypes
import jax
from jax import lax
import jax.numpy as jnp

from ganomaly_jax.cpu import matmul_conv

Array = jax.Array
# A (lo, hi) pair shared by every spatial dim, one pair per spatial dim, or 'VALID' / 'SAME'.
PaddingLike = str | tuple[int, int] | Sequence[tuple[int, int]]
Impl = Literal['auto', 'xla', 'subpixel']

_DIMENSION_NUMBERS = ('NHWC', 'HWIO', 'NHWC')


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
  if isinstance(value, int):
    return (value, value)
  value = tuple(int(v) for v in value)
  if len(value) != 2:
    raise ValueError(f'{name} must be an int or a pair, got {value!r}.')
  return value  # type: ignore[return-value]


def _string_padding(k: int, s: int, padding: str) -> tuple[int, int]:
  """Explicit (lo, hi) of `lax.conv_transpose` for 'SAME' / 'VALID' (mirrors its private helper)."""
  if padding == 'SAME':
    pad_len = k + s - 2
    lo = k - 1 if s > k - 1 else math.ceil(pad_len / 2)
  elif padding == 'VALID':
    pad_len = k + s - 2 + max(k - s, 0)
    lo = k - 1
  else:
    raise ValueError(f"Padding string must be 'SAME' or 'VALID', got {padding!r}.")
  return lo, pad_len - lo


def explicit_padding(
    padding: PaddingLike, kernel_size: tuple[int, int], strides: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int]]:
  """Canonical ((lo_h, hi_h), (lo_w, hi_w)) padding of the equivalent `lax.conv_transpose` call.

  Unlike `nn.ConvTranspose`, a single (lo, hi) pair of ints means the same (lo, hi) for every spatial
  dim, because that is how the decoders spell the PyTorch `ConvTranspose2d(padding, output_padding)`
  mapping (lo = k-1-p, hi = k-1-p+output_padding).
  """
  if isinstance(padding, str):
    padding = padding.upper()
    return tuple(_string_padding(k, s, padding) for k, s in zip(kernel_size, strides))  # type: ignore
  padding = tuple(padding)
  if len(padding) == 2 and all(isinstance(p, int) for p in padding):
    return (tuple(padding), tuple(padding))  # type: ignore[return-value]
  if len(padding) == 2 and all(len(p) == 2 for p in padding):  # type: ignore[arg-type]
    return tuple((int(lo), int(hi)) for lo, hi in padding)  # type: ignore
  raise ValueError(f'Cannot interpret padding {padding!r} for a 2D transposed convolution.')


def conv_transpose_xla(
    x: Array,
    kernel: Array,
    strides: tuple[int, int],
    padding: tuple[tuple[int, int], tuple[int, int]],
    precision: Any = None,
) -> Array:
  """Reference path: exactly what `nn.ConvTranspose(transpose_kernel=False)` runs."""
  return lax.conv_transpose(
      x, kernel, strides, padding, dimension_numbers=_DIMENSION_NUMBERS, precision=precision
  )


def _phase_geometry(size: int, k: int, s: int, lo: int, hi: int) -> dict[str, int]:
  """Per-dim bookkeeping of the phase form; see the module docstring for the derivation."""
  out_len = (size - 1) * s + lo + hi - k + 2
  taps = -(-k // s)  # T = ceil(k / s): taps per phase after zero-padding the kernel to s*T.
  z0 = s - 1 - lo  # Index of out[0] in the interleaved phase array Z.
  m_min = z0 // s
  m_max = (z0 + out_len - 1) // s
  return dict(
      out_len=out_len,
      taps=taps,
      # Input padding so that the VALID conv yields exactly phase rows m_min..m_max; either side may
      # be negative (the requested output is cropped), which we turn into a slice of the input.
      pad_lo=-m_min,
      pad_hi=m_max + taps - size,
      crop=z0 - s * m_min,  # == z0 mod s
  )


def _pad_or_crop(x: Array, axis: int, lo: int, hi: int) -> tuple[Array, int, int]:
  """Applies negative padding as a slice; returns the non-negative remainder for the conv."""
  if lo < 0 or hi < 0:
    start = max(-lo, 0)
    stop = x.shape[axis] - max(-hi, 0)
    x = lax.slice_in_dim(x, start, stop, axis=axis)
  return x, max(lo, 0), max(hi, 0)


def subpixel_kernel(kernel: Array, strides: tuple[int, int]) -> Array:
  """[kh, kw, in, out] transposed-conv kernel -> [Th, Tw, in, sh*sw*out] fused phase kernel.

  Output channel (ph, pw, o) holds the sub-kernel K[sh-1-ph::sh, sw-1-pw::sw, :, o]. It is only a
  zero-pad, reshape, flip and transpose of `kernel`, so gradients flow back to the original parameter.
  """
  kh, kw, cin, cout = kernel.shape
  sh, sw = strides
  th, tw = -(-kh // sh), -(-kw // sw)
  # Zero taps at the end make every residue class the same length T (they contribute nothing).
  kernel = jnp.pad(kernel, ((0, sh * th - kh), (0, sw * tw - kw), (0, 0), (0, 0)))
  kernel = kernel.reshape(th, sh, tw, sw, cin, cout)  # [t_h, c_h, t_w, c_w, in, out], j = c + s*t
  kernel = kernel[
      :, ::-1, :, ::-1
  ]  # Phase p = s-1-c, so that phases increase with the output index.
  kernel = kernel.transpose(0, 2, 4, 1, 3, 5)  # [t_h, t_w, in, p_h, p_w, out]
  return kernel.reshape(th, tw, cin, sh * sw * cout)


def _valid_conv_matmul(x: Array, kernel: Array, precision: Any = None) -> Array:
  """Stride-1 'VALID' convolution as patch extraction (im2col) and one matmul.

  XLA:CPU computes the weight gradient of a stride-1 convolution with many output channels far
  slower than the equivalent matmul, and that gradient dominated the decoder's backward pass
  (docs/performance.md#transposed-convolutions). The sub-kernels are tiny
  (ceil(k/s) taps per side), so the patch tensor is only T*T times the input.
  """
  return matmul_conv.im2col_conv(x, kernel, (1, 1), ((0, 0), (0, 0)), precision)


def conv_transpose_subpixel(
    x: Array,
    kernel: Array,
    strides: tuple[int, int],
    padding: tuple[tuple[int, int], tuple[int, int]],
    precision: Any = None,
    phase_conv: str = 'matmul',
) -> Array:
  """`lax.conv_transpose(x, kernel, strides, padding)` as one stride-1 conv (a matmul) + depth-to-space.

  Args:
    x: [N, H, W, in] input.
    kernel: [kh, kw, in, out] kernel with `nn.ConvTranspose(transpose_kernel=False)` semantics.
    strides: (sh, sw).
    padding: explicit ((lo_h, hi_h), (lo_w, hi_w)) of the transposed convolution; any integers.
    precision: passed to the phase convolution.
    phase_conv: 'matmul' (im2col + matmul, whose JAX gradient is fast on XLA:CPU) or 'xla' (XLA's
      stride-1 convolution: faster forward from 8x8 inputs on, but its kernel gradient is slow,
      so only for forward passes and `conv_transpose_adjoint_grads`).

  Returns:
    [N, H_out, W_out, out], equal (to float rounding) to the `lax.conv_transpose` result.
  """
  n, h, w, _ = x.shape
  kh, kw, _, cout = kernel.shape
  sh, sw = strides
  gh = _phase_geometry(h, kh, sh, *padding[0])
  gw = _phase_geometry(w, kw, sw, *padding[1])
  if gh['out_len'] <= 0 or gw['out_len'] <= 0:
    raise ValueError(f'Empty output for input {x.shape}, kernel {kernel.shape}, padding {padding}.')

  x, ph_lo, ph_hi = _pad_or_crop(x, 1, gh['pad_lo'], gh['pad_hi'])
  x, pw_lo, pw_hi = _pad_or_crop(x, 2, gw['pad_lo'], gw['pad_hi'])
  x = jnp.pad(x, ((0, 0), (ph_lo, ph_hi), (pw_lo, pw_hi), (0, 0)))
  phase_kernel = subpixel_kernel(kernel, strides)
  if phase_conv == 'matmul':
    z = _valid_conv_matmul(x, phase_kernel, precision)
  elif phase_conv == 'xla':
    z = lax.conv_general_dilated(
        x, phase_kernel, (1, 1), 'VALID', dimension_numbers=_DIMENSION_NUMBERS, precision=precision
    )
  else:
    raise ValueError(f"phase_conv must be 'matmul' or 'xla', got {phase_conv!r}.")
  # Depth-to-space: [N, Mh, Mw, (ph, pw, out)] -> [N, Mh*sh, Mw*sw, out], then crop to the output.
  _, mh, mw, _ = z.shape
  z = z.reshape(n, mh, mw, sh, sw, cout).transpose(0, 1, 3, 2, 4, 5)
  z = z.reshape(n, mh * sh, mw * sw, cout)
  return lax.slice(
      z,
      (0, gh['crop'], gw['crop'], 0),
      (n, gh['crop'] + gh['out_len'], gw['crop'] + gw['out_len'], cout),
  )


def single_pixel_conv_transpose(
    x: Array, kernel: Array, padding: tuple[tuple[int, int], tuple[int, int]], precision: Any = None
) -> Array:
  """`lax.conv_transpose` of a 1x1 input (any stride) as one matmul with a slice of the kernel.

  With a single input pixel, output o receives x * K[lo - o] (where 0 <= lo - o < k), so the output
  is the flipped kernel, cropped or zero-padded to the output size, weighted by the input channels.
  XLA:CPU ran the decoder's first layer (1x1x100 -> 4x4x256) slowly as a convolution.
  """
  n, h, w, _ = x.shape
  if (h, w) != (1, 1):
    raise ValueError(f'single_pixel_conv_transpose needs a 1x1 input, got {x.shape}.')
  kh, kw = kernel.shape[:2]
  (lo_h, hi_h), (lo_w, hi_w) = padding
  out_h, out_w = lo_h + hi_h - kh + 2, lo_w + hi_w - kw + 2
  if out_h <= 0 or out_w <= 0:
    raise ValueError(f'Empty output for input {x.shape}, kernel {kernel.shape}, padding {padding}.')
  flipped = kernel[::-1, ::-1]  # flipped[k - 1 - lo + o] = K[lo - o]
  # Pad by the out-of-range taps (negative pads crop) so that row o of the result is flipped[k-1-lo+o].
  zero = jnp.zeros((), kernel.dtype)
  taps = lax.pad(
      flipped,
      zero,
      (
          (lo_h - kh + 1, out_h - lo_h - 1, 0),
          (lo_w - kw + 1, out_w - lo_w - 1, 0),
          (0, 0, 0),
          (0, 0, 0),
      ),
  )
  return jnp.einsum('nc,hwco->nhwo', x[:, 0, 0, :], taps, precision=precision)


def conv_transpose_scatter(
    x: Array,
    kernel: Array,
    strides: tuple[int, int],
    padding: tuple[tuple[int, int], tuple[int, int]],
    precision: Any = None,
) -> Array:
  """`lax.conv_transpose` as one matmul (every input pixel times the whole kernel) + scatter-add.

  Input pixel i writes x[i] * K[::-1] to outputs s*i + lo - k + 1 ... s*i + lo. The matmul has no
  wasted FLOPs, but its result is k*k/(s*s) times the output, so this only pays for tiny inputs
  (2x2: the U-Net's 2x2x1024 -> 4x4x256 layer, where the sub-pixel form computes a 3x3 phase grid
  for a 2x2 one and XLA's kernel is slower still; docs/performance.md#transposed-convolutions).
  """
  n, h, w, cin = x.shape
  kh, kw, _, cout = kernel.shape
  sh, sw = strides
  (lo_h, hi_h), (lo_w, hi_w) = padding
  out_h, out_w = (h - 1) * sh + lo_h + hi_h - kh + 2, (w - 1) * sw + lo_w + hi_w - kw + 2
  if out_h <= 0 or out_w <= 0:
    raise ValueError(f'Empty output for input {x.shape}, kernel {kernel.shape}, padding {padding}.')
  flipped = kernel[::-1, ::-1].transpose(2, 0, 1, 3).reshape(cin, kh * kw * cout)
  taps = jnp.dot(x.reshape(n * h * w, cin), flipped, precision=precision)
  taps = taps.reshape(n, h, w, kh, kw, cout)
  # "full" holds every position any tap reaches: full[s*i + t] += x[i] * flipped tap t.
  full_h, full_w = (h - 1) * sh + kh, (w - 1) * sw + kw
  zero = jnp.zeros((), taps.dtype)
  full = sum(
      lax.pad(
          taps[:, :, :, i, j],
          zero,
          ((0, 0, 0), (i, kh - 1 - i, sh - 1), (j, kw - 1 - j, sw - 1), (0, 0, 0)),
      )
      for i in range(kh)
      for j in range(kw)
  )
  # out[o] = full[o - lo + k - 1]: crop (negative pads) or zero-extend to the requested window.
  off_h, off_w = lo_h - kh + 1, lo_w - kw + 1
  return lax.pad(
      full,
      zero,
      (
          (0, 0, 0),
          (off_h, out_h - full_h - off_h, 0),
          (off_w, out_w - full_w - off_w, 0),
          (0, 0, 0),
      ),
  )


def _adjoint_kernel(kernel: Array) -> Array:
  """[kh, kw, a, b] -> [kh, kw, b, a], spatially flipped: the kernel of the adjoint convolution."""
  return jnp.flip(kernel, (0, 1)).transpose(0, 1, 3, 2)


def adjoint_conv_padding(
    kernel_size: tuple[int, int], padding: tuple[tuple[int, int], tuple[int, int]]
) -> tuple[tuple[int, int], tuple[int, int]] | None:
  """Padding of the strided convolution whose adjoint this transposed convolution is (None if < 0).

  `lax.conv_transpose(x, K, s, (lo, hi))` maps H to Ho = (H-1)s + lo + hi - k + 2 and is the adjoint
  (input gradient) of the stride-s convolution of an Ho-sized map with the flipped, in/out-swapped
  kernel and padding (k-1-lo, k-1-hi), which maps Ho back to exactly H.
  """
  pads = tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(kernel_size, padding))
  return None if min(min(p) for p in pads) < 0 else pads  # type: ignore[return-value]


_FORWARDS = {
    'xla': conv_transpose_xla,
    'subpixel': conv_transpose_subpixel,
    'scatter': conv_transpose_scatter,
}
# Forward passes for conv_transpose_adjoint_grads, whose backward never differentiates them.
_FORWARDS_WITHOUT_GRAD = dict(
    _FORWARDS, subpixel=functools.partial(conv_transpose_subpixel, phase_conv='xla')
)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5))
def conv_transpose_adjoint_grads(
    x: Array,
    kernel: Array,
    strides: tuple[int, int],
    padding: tuple[tuple[int, int], tuple[int, int]],
    precision: Any = None,
    forward: str = 'xla',
) -> Array:
  """A transposed convolution computed by `forward`, differentiated as the adjoint of a strided conv.

  The value is `forward`'s ('xla', 'subpixel' on XLA's phase conv, or 'scatter'). The gradients are
  those of a plain strided convolution, read backwards: the input gradient IS the strided
  convolution of the output gradient, and the kernel gradient is that convolution's kernel gradient
  with the input as its output gradient. These are exactly the ops XLA runs for an encoder's
  backward pass, which XLA:CPU runs fast, where its gradient of its own transposed convolution's
  kernel is slow on these shapes (docs/performance.md#transposed-convolutions) and the sub-pixel
  form's im2col matmuls waste the zero taps. Requires non-negative `adjoint_conv_padding`.
  """
  return _FORWARDS_WITHOUT_GRAD[forward](x, kernel, strides, padding, precision)


def _adjoint_grads_fwd(x, kernel, strides, padding, precision, forward):
  return conv_transpose_adjoint_grads(x, kernel, strides, padding, precision, forward), (x, kernel)


def _conv(lhs: Array, rhs: Array, strides, pads, precision) -> Array:
  """Plain NHWC x HWIO strided convolution with explicit pads."""
  return lax.conv_general_dilated(
      lhs, rhs, strides, pads, dimension_numbers=_DIMENSION_NUMBERS, precision=precision
  )


def _conv_kernel_grad(
    lhs: Array, grad_out: Array, kernel: Array, strides, pads, precision
) -> Array:
  """Gradient of `_conv(lhs, kernel)` with respect to the kernel: XLA's own, fast on CPU."""
  _, pullback = jax.vjp(lambda k: _conv(lhs, k, strides, pads, precision), kernel)
  return pullback(grad_out)[0]


def _adjoint_grads_bwd(strides, padding, precision, forward, residuals, grad_out):
  del forward
  x, kernel = residuals
  pads = adjoint_conv_padding(kernel.shape[:2], padding)
  adjoint_kernel = _adjoint_kernel(kernel)
  grad_x = _conv(grad_out, adjoint_kernel, strides, pads, precision)
  # The input plays the strided conv's output gradient.
  grad_adjoint_kernel = _conv_kernel_grad(grad_out, x, adjoint_kernel, strides, pads, precision)
  return grad_x, _adjoint_kernel(grad_adjoint_kernel)


conv_transpose_adjoint_grads.defvjp(_adjoint_grads_fwd, _adjoint_grads_bwd)


def _input_grad_padding(in_hw, kernel_size, strides, pads):
  """`lax.conv_transpose` padding of a strided conv's input gradient (None if a pad is negative).

  The conv maps H to Ho = (H + lo + hi - k) // s + 1; its adjoint with padding (k-1-lo, k-1-hi+r),
  r = (H + lo + hi - k) mod s the rows the conv's last window never reached, maps Ho back to H.
  """
  out = []
  for size, k, s, (lo, hi) in zip(in_hw, kernel_size, strides, pads):
    r = (size + lo + hi - k) % s
    out.append((k - 1 - lo, k - 1 - hi + r))
  return None if min(min(p) for p in out) < 0 else tuple(out)


def input_grad_impl(x_shape, kernel_shape, strides, pads) -> str | None:
  """The transposed-conv forward `strided_conv` would use for this conv's input gradient.

  None when XLA's own gradient is as good (the choice would be 'xla' anyway) or the padding does not
  allow the adjoint form; `strided_conv` is then pointless.
  """
  if _input_grad_padding(x_shape[1:3], kernel_shape[:2], strides, pads) is None:
    return None
  out_hw = tuple(
      (size + lo + hi - k) // s + 1
      for size, k, s, (lo, hi) in zip(x_shape[1:3], kernel_shape[:2], strides, pads)
  )
  forward = resolve_impl('auto', strides, kernel_shape[2], out_hw)
  return None if forward == 'xla' else forward


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def strided_conv(
    x: Array,
    kernel: Array,
    strides: tuple[int, int],
    pads: tuple[tuple[int, int], tuple[int, int]],
    precision: Any = None,
) -> Array:
  """NHWC x HWIO `lax.conv_general_dilated` whose input gradient runs as our fastest transposed conv.

  XLA differentiates a strided convolution into a transposed one with its own lhs-dilated kernel,
  which XLA:CPU runs slower than the sub-pixel form from 8x8 gradients on
  (docs/performance.md#strided-convolutions). The kernel gradient stays XLA's.
  Only for convs where `input_grad_impl` is not None.
  """
  return _conv(x, kernel, strides, pads, precision)


def _strided_conv_fwd(x, kernel, strides, pads, precision):
  return strided_conv(x, kernel, strides, pads, precision), (x, kernel)


def _strided_conv_bwd(strides, pads, precision, residuals, grad_out):
  x, kernel = residuals
  forward = input_grad_impl(x.shape, kernel.shape, strides, pads)
  padding = _input_grad_padding(x.shape[1:3], kernel.shape[:2], strides, pads)
  grad_x = _FORWARDS_WITHOUT_GRAD[forward](
      grad_out, _adjoint_kernel(kernel), strides, padding, precision
  )
  return grad_x, _conv_kernel_grad(x, grad_out, kernel, strides, pads, precision)


strided_conv.defvjp(_strided_conv_fwd, _strided_conv_bwd)


def resolve_impl(
    impl: str, strides: tuple[int, int], features: int = 1 << 30, in_hw: tuple[int, int] = (0, 0)
) -> str:
  """The forward kernel for `impl`: 'xla', 'subpixel', or under 'auto' also 'matmul' or 'scatter'.

  'auto' on XLA:CPU picks, per layer, the forward pass measured fastest (batch 64, forward only;
  bench/conv_transpose_speed.py; timings in docs/performance.md#transposed-convolutions): a matmul for
  1x1 inputs; the scatter form (`conv_transpose_scatter`) for 1x2, 2x1 and 2x2 ones; XLA's own kernel
  on 3x3 and 4x4 inputs and for layers with few output channels (an image layer); the sub-pixel form
  with XLA's stride-1 phase convolution from 5x5 on. The backward
  pass under 'auto' does not depend on this choice (see `conv_transpose_adjoint_grads`). On GPU and
  TPU XLA's own transposed convolution is fine (cuDNN handles lhs dilation natively) and we have not
  measured the alternatives there: `kernels` only ever runs these forms in a step lowered for CPU.
  `in_hw` is the input's (H, W), (0, 0) if unknown.
  """
  if impl not in ('auto', 'xla', 'subpixel'):
    raise ValueError(f"impl must be 'auto', 'xla' or 'subpixel', got {impl!r}.")
  if impl != 'auto':
    return impl
  if tuple(in_hw) == (1, 1):
    return 'matmul'
  if max(in_hw) == 2:
    return 'scatter'
  if features * strides[0] * strides[1] < 32 or min(in_hw) <= 4:
    return 'xla'
  return 'subpixel'


def conv_transpose(
    x: Array,
    kernel: Array,
    strides: tuple[int, int],
    padding: tuple[tuple[int, int], tuple[int, int]],
    precision: Any = None,
) -> Array:
  """`lax.conv_transpose(x, kernel, strides, padding)` (NHWC, HWIO) in its fastest CPU form.

  The forward kernel is chosen per layer (`resolve_impl`); the backward pass is that of the strided
  convolution the layer is the adjoint of (`conv_transpose_adjoint_grads`) where the padding allows.
  """
  forward = resolve_impl('auto', strides, kernel.shape[-1], x.shape[1:3])
  if forward == 'matmul':
    return single_pixel_conv_transpose(x, kernel, padding, precision)
  if adjoint_conv_padding(kernel.shape[:2], padding) is not None:
    return conv_transpose_adjoint_grads(x, kernel, strides, padding, precision, forward)
  return _FORWARDS[forward](x, kernel, strides, padding, precision)


class ConvTranspose(nn.Module):
  """2D transposed convolution with `nn.ConvTranspose` parameters and a selectable kernel (tests, bench).

  Same parameters (`kernel` [k, k, in, features], optional `bias` [features]) and the same output as
  `nn.ConvTranspose(features, (k, k), strides=(s, s), padding=((lo, hi), (lo, hi)),
  transpose_kernel=False)`, so checkpoints are interchangeable across `impl`s.

  Attributes:
    features: number of output channels.
    kernel_size: k (square kernel) or (kh, kw).
    strides: s or (sh, sw).
    padding: (lo, hi) applied to both spatial dims (PyTorch `ConvTranspose2d(p, output_padding=op)` is
      (k-1-p, k-1-p+op)), or ((lo_h, hi_h), (lo_w, hi_w)), or 'VALID' / 'SAME' as in `nn.ConvTranspose`.
      Explicit pads are those of `lax.conv_transpose`; negative values crop.
    use_bias: whether to add a bias.
    kernel_init: initializer of the kernel (same default as flax).
    bias_init: initializer of the bias.
    dtype: compute dtype (None: promote from inputs and params, as flax does).
    param_dtype: dtype of the parameters.
    precision: `lax` precision of the convolution.
    impl: 'xla' (lax.conv_transpose), 'subpixel' (one stride-1 conv + depth-to-space), both
      differentiated by JAX, or 'auto': `conv_transpose`, the CPU form the kernels switch runs.
  """

  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] = 1
  padding: PaddingLike = 'SAME'
  use_bias: bool = False
  kernel_init: nn.initializers.Initializer = nn.linear.default_kernel_init
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()
  dtype: Any = None
  param_dtype: Any = jnp.float32
  precision: Any = None
  impl: Impl = 'auto'

  @nn.compact
  def __call__(self, inputs: Array) -> Array:
    """Applies the transposed convolution to [*batch, H, W, C] (or unbatched [H, W, C]) inputs."""
    kernel_size = _pair(self.kernel_size, 'kernel_size')
    strides = _pair(self.strides, 'strides')
    padding = explicit_padding(self.padding, kernel_size, strides)

    # Like flax: flatten any number of batch dims (or add a missing one) for the 4D conv.
    batch_shape = inputs.shape[:-3]
    x = inputs.reshape((-1,) + inputs.shape[-3:])

    kernel = self.param(
        'kernel', self.kernel_init, kernel_size + (x.shape[-1], self.features), self.param_dtype
    )
    bias = (
        self.param('bias', self.bias_init, (self.features,), self.param_dtype)
        if self.use_bias
        else None
    )
    x, kernel, bias = flax_dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)

    if self.impl == 'auto':
      y = conv_transpose(x, kernel, strides, padding, self.precision)
    else:
      y = _FORWARDS[self.impl](x, kernel, strides, padding, self.precision)
    if bias is not None:
      y = y + bias
    return y.reshape(batch_shape + y.shape[1:])
