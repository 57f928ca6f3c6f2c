"""Forward+backward speed of the transposed-conv implementations at the GANomaly decoder's shapes.

  python bench/conv_transpose_speed.py                 # 32x32 and 64x64 decoders, k=4 and k=5
  python bench/conv_transpose_speed.py --isize 32 --kernel 4 --reps 9

Implementations compared (all compute the same `lax.conv_transpose`, see models/conv_transpose.py):
  xla       lax.conv_transpose, i.e. nn.ConvTranspose (a conv with lhs_dilation).
  subpixel  one stride-1 conv with s*s*out channels (sub-kernels zero-padded to ceil(k/s) taps) and one
            depth-to-space; what ConvTranspose(impl='subpixel') runs.
  phases    s*s separate stride-1 convs, each with its own (unpadded) sub-kernel, stacked and
            interleaved; the alternative that wastes no FLOPs when k % s != 0. Kept here only to show
            why the module uses the fused form.
  auto      ConvTranspose(impl='auto'): on CPU the fastest forward per layer and, for the backward pass,
            the adjoint strided convolutions (conv_transpose_adjoint_grads).

Each case is jitted, warmed up, and timed as the median of `--reps` runs of value_and_grad with respect
to both the input and the kernel (the two gradients a GAN step needs).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import jax
from jax import lax
import jax.numpy as jnp

from ganomaly_jax.cpu import conv_transpose as ct

# (H, in, out) of each stride-2 decoder layer; the spatial size doubles at every layer.
DECODERS = {
    32: [(4, 256, 128), (8, 128, 64), (16, 64, 1)],
    64: [(4, 512, 256), (8, 256, 128), (16, 128, 64), (32, 64, 1)],
}
# kernel -> transposed-conv padding, PyTorch ConvTranspose2d(k, 2, p, output_padding) mapped as
# (k-1-p, k-1-p+op): both give an output of exactly 2H.
PADDINGS = {4: (2, 2), 5: (2, 3)}


def conv_transpose_phases(x, kernel, strides, padding, precision=None):
  """s*s separate stride-1 convs (one per output phase), stacked, then depth-to-space."""
  n, h, w, _ = x.shape
  kh, kw, _, cout = kernel.shape
  sh, sw = strides
  gh = ct._phase_geometry(h, kh, sh, *padding[0])  # pylint: disable=protected-access
  gw = ct._phase_geometry(w, kw, sw, *padding[1])  # pylint: disable=protected-access
  assert (
      min(gh['pad_lo'], gh['pad_hi'], gw['pad_lo'], gw['pad_hi']) >= 0
  ), 'no cropping in the bench'
  rows = []
  for ph in range(sh):
    cols = []
    for pw in range(sw):
      sub = kernel[sh - 1 - ph :: sh, sw - 1 - pw :: sw]
      # A shorter sub-kernel needs correspondingly less padding on the high side.
      pad = (
          (gh['pad_lo'], gh['pad_hi'] - (gh['taps'] - sub.shape[0])),
          (gw['pad_lo'], gw['pad_hi'] - (gw['taps'] - sub.shape[1])),
      )
      cols.append(
          lax.conv_general_dilated(
              x, sub, (1, 1), pad, dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=precision
          )
      )
    rows.append(jnp.stack(cols, axis=3))  # [N, Mh, Mw, sw, out]
  z = jnp.stack(rows, axis=2)  # [N, Mh, sh, Mw, sw, out]
  _, mh, _, mw, _, _ = z.shape
  z = z.reshape(n, mh * sh, mw * sw, cout)
  return z[:, gh['crop'] : gh['crop'] + gh['out_len'], gw['crop'] : gw['crop'] + gw['out_len']]


def conv_transpose_auto(x, kernel, strides, padding, precision=None):
  """What ConvTranspose(impl='auto') runs on this backend (forward per layer, adjoint backward)."""
  module = ct.ConvTranspose(
      kernel.shape[-1], kernel.shape[:2], strides, padding, impl='auto', precision=precision
  )
  return module.apply({'params': {'kernel': kernel}}, x)


IMPLS: dict[str, Callable] = {
    'xla': ct.conv_transpose_xla,
    'subpixel': ct.conv_transpose_subpixel,
    'phases': conv_transpose_phases,
    'auto': conv_transpose_auto,
}


def time_fwd_bwd(fn: Callable, x: jax.Array, kernel: jax.Array, padding, reps: int) -> float:
  """Median seconds of one jitted value_and_grad (w.r.t. input and kernel) call."""

  def loss(x, kernel, cot):
    return jnp.sum(fn(x, kernel, (2, 2), padding) * cot)

  # A fixed random cotangent keeps the backward pass honest (no structure for XLA to exploit); it is an
  # argument so that generating it is not part of the timed step.
  out = jax.eval_shape(lambda x, k: fn(x, k, (2, 2), padding), x, kernel)
  cot = jax.random.normal(jax.random.key(3), out.shape, out.dtype)
  step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  jax.block_until_ready(step(x, kernel, cot))  # compile
  jax.block_until_ready(step(x, kernel, cot))  # warm-up
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    jax.block_until_ready(step(x, kernel, cot))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main() -> None:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--isize', type=int, nargs='*', default=[32, 64], choices=sorted(DECODERS))
  parser.add_argument('--kernel', type=int, nargs='*', default=[4, 5], choices=sorted(PADDINGS))
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--reps', type=int, default=7)
  parser.add_argument('--impls', nargs='*', default=list(IMPLS), choices=list(IMPLS))
  args = parser.parse_args()
  from ganomaly_jax.cpu import xla_flags

  xla_flags.apply_cpu_defaults()  # as main does, before JAX starts its backend

  print(
      f'backend={jax.default_backend()} devices={jax.devices()} batch={args.batch} reps={args.reps}'
  )
  header = f'{"isize":>5} {"k":>2} {"pad":>6} {"layer":>22} ' + ' '.join(
      f'{i + " ms":>11}' for i in args.impls
  )
  header += ' ' + ' '.join(f'{"xla/" + i:>12}' for i in args.impls if i != 'xla')
  print(header)
  totals = {}
  for isize in args.isize:
    for k in args.kernel:
      padding = (PADDINGS[k], PADDINGS[k])
      for h, cin, cout in DECODERS[isize]:
        x = jax.random.normal(jax.random.key(0), (args.batch, h, h, cin))
        kernel = 0.02 * jax.random.normal(jax.random.key(1), (k, k, cin, cout))
        ms = {i: 1e3 * time_fwd_bwd(IMPLS[i], x, kernel, padding, args.reps) for i in args.impls}
        for i, t in ms.items():
          totals[(isize, k, i)] = totals.get((isize, k, i), 0.0) + t
        layer = f'{h}x{h}x{cin}->{2 * h}x{2 * h}x{cout}'
        row = f'{isize:>5} {k:>2} {str(PADDINGS[k]):>6} {layer:>22} ' + ' '.join(
            f'{ms[i]:>11.1f}' for i in args.impls
        )
        if 'xla' in ms:
          row += ' ' + ' '.join(f'{ms["xla"] / ms[i]:>12.2f}' for i in args.impls if i != 'xla')
        print(row, flush=True)
      row = f'{isize:>5} {k:>2} {str(PADDINGS[k]):>6} {"decoder total":>22} '
      row += ' '.join(f'{totals[(isize, k, i)]:>11.1f}' for i in args.impls)
      if 'xla' in args.impls:
        row += ' ' + ' '.join(
            f'{totals[(isize, k, "xla")] / totals[(isize, k, i)]:>12.2f}'
            for i in args.impls
            if i != 'xla'
        )
      print(row, flush=True)


if __name__ == '__main__':
  main()
