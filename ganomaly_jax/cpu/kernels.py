"""The one switch of the CPU speed layer: `runtime.cpu_kernels` = 'auto' | 'off'.

Under 'auto', `cpu_kernels` installs a flax method interceptor (`nn.intercept_methods`) while a step
is traced: every call of `nn.Conv`, `nn.ConvTranspose` and `nn.BatchNorm` is computed here, on the
module's own variables (same names, shapes, initialisers and RNG streams, so parameter trees and
checkpoints do not depend on the switch), as

  jax.lax.platform_dependent(..., cpu=<CPU form>, default=<flax's computation>)

The choice is made for the platform the step is *lowered* for, not the host's default backend: a
step exported or compiled for TPU or CUDA contains flax's own convolutions and BatchNorm reductions
only, and one lowered for CPU only the CPU forms. The CPU forms run under the named scope
`CPU_SCOPE`, which shows up in the lowered program's locations (tests look for it). Layers whose
options the CPU forms do not cover (dilation, groups, masks, circular padding, a BatchNorm over other
axes or across a named axis) go to flax unchanged. 'off' installs nothing: plain XLA everywhere.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterator

import flax.linen as nn
from flax.linen import dtypes as flax_dtypes
import jax
from jax import lax
import jax.numpy as jnp

from ganomaly_jax.cpu import batch_norm, conv_transpose, convolution

MODES = ('auto', 'off')
CPU_SCOPE = 'ganomaly_cpu_kernel'
_NHWC = ('NHWC', 'HWIO', 'NHWC')


def _on_cpu(fast: Callable, plain: Callable, *operands) -> Any:
  """`fast(*operands)` in a step lowered for CPU, `plain(*operands)` for every other platform."""

  def cpu(*args):
    with jax.named_scope(CPU_SCOPE):
      return fast(*args)

  return lax.platform_dependent(*operands, cpu=cpu, default=plain)


def _pairs(value, n: int = 2) -> tuple[int, ...]:
  if value is None:
    return (1,) * n
  return (value,) * n if isinstance(value, int) else tuple(value)


def _explicit_padding(padding, kernel_size) -> Any:
  """nn.Conv's padding as lax takes it ('SAME' / 'VALID' or explicit pairs); None if unsupported."""
  if isinstance(padding, str):
    return padding if padding in ('SAME', 'VALID') else None
  if isinstance(padding, int):
    return ((padding, padding),) * len(kernel_size)
  pads = []
  for p in padding:
    pads.append((p, p) if isinstance(p, int) else tuple(p))
  return tuple(pads)


def _variables(module: nn.Conv | nn.ConvTranspose, inputs: jax.Array, kernel_size: tuple[int, ...]):
  """The module's own kernel and bias (same names, shapes, initialisers as flax), promoted as flax does.

  Returns (inputs, kernel, bias or None) in the module's compute dtype.
  """
  kernel = module.param(
      'kernel',
      module.kernel_init,
      kernel_size + (inputs.shape[-1], module.features),
      module.param_dtype,
  )
  bias = (
      module.param('bias', module.bias_init, (module.features,), module.param_dtype)
      if module.use_bias
      else None
  )
  return flax_dtypes.promote_dtype(inputs, kernel, bias, dtype=module.dtype)


def _conv(module: nn.Conv, inputs: jax.Array) -> jax.Array | None:
  """nn.Conv's __call__ with the CPU convolution; None where the CPU form does not apply."""
  kernel_size = (
      tuple(module.kernel_size)
      if not isinstance(module.kernel_size, int)
      else (module.kernel_size,)
  )
  padding = _explicit_padding(module.padding, kernel_size)
  if (
      inputs.ndim != 4
      or len(kernel_size) != 2
      or padding is None
      or module.mask is not None
      or not module.shared_weights
      or module.feature_group_count != 1
      or _pairs(module.input_dilation) != (1, 1)
      or _pairs(module.kernel_dilation) != (1, 1)
      or module.conv_general_dilated is not None
      or module.conv_general_dilated_cls is not None
  ):
    return None
  strides = _pairs(module.strides)
  x, kernel, bias = _variables(module, inputs, kernel_size)
  conv = lambda fn: lambda x, k: fn(
      x, k, strides, padding, dimension_numbers=_NHWC, precision=module.precision
  )
  y = _on_cpu(conv(convolution.conv_general_dilated), conv(lax.conv_general_dilated), x, kernel)
  return y if bias is None else y + bias


def _conv_transpose(module: nn.ConvTranspose, inputs: jax.Array) -> jax.Array | None:
  """nn.ConvTranspose's __call__ with the CPU transposed conv; None where it does not apply."""
  kernel_size = (
      tuple(module.kernel_size)
      if not isinstance(module.kernel_size, int)
      else (module.kernel_size,)
  )
  if (
      inputs.ndim != 4
      or len(kernel_size) != 2
      or module.transpose_kernel
      or module.mask is not None
      or _pairs(module.kernel_dilation) != (1, 1)
      or module.preferred_element_type is not None
      or module.padding == 'CIRCULAR'
  ):
    return None
  strides = _pairs(module.strides)
  padding = _explicit_padding(module.padding, kernel_size)
  if padding is None:
    return None
  pads = conv_transpose.explicit_padding(padding, kernel_size, strides)
  x, kernel, bias = _variables(module, inputs, kernel_size)
  fast = lambda x, k: conv_transpose.conv_transpose(x, k, strides, pads, module.precision)
  plain = lambda x, k: lax.conv_transpose(
      x, k, strides, pads, dimension_numbers=_NHWC, precision=module.precision
  )
  y = _on_cpu(fast, plain, x, kernel)
  return y if bias is None else y + bias


def _exact_stats(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """flax's statistics with use_fast_variance=False: float32 reductions, centred variance."""
  x = x.astype(jnp.float32)
  axes = tuple(range(x.ndim - 1))
  mean = x.mean(axes)
  return mean, jnp.square(x - mean).mean(axes)


def _batch_norm(
    module: nn.BatchNorm, x: jax.Array, use_running_average=None, *, mask=None
) -> jax.Array | None:
  """nn.BatchNorm's __call__ with the CPU statistics; None where it does not apply."""
  axes = (module.axis,) if isinstance(module.axis, int) else tuple(module.axis)
  if (
      mask is not None
      or module.axis_name is not None
      or axes not in ((-1,), (x.ndim - 1,))
      or not (module.use_scale and module.use_bias)
      or not module.force_float32_reductions
  ):
    return None
  use_running_average = nn.merge_param(
      'use_running_average', module.use_running_average, use_running_average
  )
  features = (x.shape[-1],)
  ra_mean = module.variable('batch_stats', 'mean', lambda s: jnp.zeros(s, jnp.float32), features)
  ra_var = module.variable('batch_stats', 'var', lambda s: jnp.ones(s, jnp.float32), features)
  if use_running_average:
    mean, var = ra_mean.value, ra_var.value
  else:
    mean, var = _on_cpu(batch_norm.batch_stats, _exact_stats, x)
    if not module.is_initializing():
      ra_mean.value = module.momentum * ra_mean.value + (1 - module.momentum) * mean
      ra_var.value = module.momentum * ra_var.value + (1 - module.momentum) * var
  scale = module.param('scale', module.scale_init, features, module.param_dtype)
  bias = module.param('bias', module.bias_init, features, module.param_dtype)
  multiplier = scale * lax.rsqrt(var + module.epsilon)
  dtype = flax_dtypes.canonicalize_dtype(x, scale, bias, dtype=module.dtype)
  # (x - mean) * multiplier + bias, with the per-channel parts folded into one multiply-add.
  return x.astype(dtype) * multiplier.astype(dtype) + (bias - mean * multiplier).astype(dtype)


_FORMS = {nn.Conv: _conv, nn.ConvTranspose: _conv_transpose, nn.BatchNorm: _batch_norm}


def _interceptor(next_fun, args, kwargs, context):
  form = _FORMS.get(type(context.module)) if context.method_name == '__call__' else None
  if form is not None:
    y = form(context.module, *args, **kwargs)
    if y is not None:
      return y
  return next_fun(*args, **kwargs)


def check_mode(mode: str) -> str:
  if mode not in MODES:
    raise ValueError(f'runtime.cpu_kernels={mode!r}: use one of {", ".join(MODES)}.')
  return mode


@contextlib.contextmanager
def cpu_kernels(mode: str = 'auto') -> Iterator[None]:
  """Within this context, flax layers traced run their CPU forms on CPU ('auto') or flax's ('off')."""
  if check_mode(mode) == 'off':
    yield
    return
  with nn.intercept_methods(_interceptor):
    yield


def with_cpu_kernels(fn: Callable, mode: str = 'auto') -> Callable:
  """`fn` traced under `cpu_kernels(mode)` (wrap before jax.jit: the switch acts at trace time)."""
  if check_mode(mode) == 'off':
    return fn

  def wrapped(*args, **kwargs):
    with cpu_kernels(mode):
      return fn(*args, **kwargs)

  # jit names its programs after the function ('Compiling jit(train_step)'), partials included.
  base = fn.func if isinstance(fn, functools.partial) else fn
  wrapped.__name__ = wrapped.__qualname__ = getattr(base, '__name__', 'wrapped')
  wrapped.__doc__ = getattr(base, '__doc__', None)
  return wrapped
