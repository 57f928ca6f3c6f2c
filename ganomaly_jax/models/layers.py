"""Initialisers, normalisation and small blocks shared by the generators and discriminators."""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp

# DCGAN initialisation used by every GANomaly variant (docs/methods.md#ganomaly): conv kernels N(0, 0.02),
# BatchNorm scale N(1, 0.02) and bias 0.


def conv_init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
  """Conv kernels ~ N(0, 0.02): the same values as `nn.initializers.normal(0.02)`, drawn flat.

  Threefry numbers its outputs by flat index, so a flat draw reshaped is bit-identical to a draw of
  the kernel's shape, but XLA:CPU compiles the rank-1 draw much faster (as in masks.py).
  """
  return jax.random.normal(key, (math.prod(shape),), dtype).reshape(shape) * 0.02


def bn_scale_init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
  """BatchNorm scale ~ N(1, 0.02)."""
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


class BatchNorm(nn.Module):
  """`nn.BatchNorm` over all axes but the last, with the same variables, computed faster on CPU.

  Parameters `scale`, `bias` and statistics `mean`, `var` (in 'batch_stats') are named and shaped as
  flax's, so checkpoints and parameter counts are unchanged, and the maths is flax's default (biased
  batch variance E[x^2] - E[x]^2 clipped at 0, running averages with `momentum`). The batch statistics
  are two matrix-vector products instead of reductions: XLA:CPU split the reductions into slow
  reduce-window passes, and the whole training step ran 3-5 % faster this way (GANomaly 32x32x1
  204 -> 214 images/s, 64x64x3 36.9 -> 38.1, SkipGANomaly 126 -> 133; bench A/B, batch 64). Under
  jit with a sharded batch the statistics are over the global batch, as with flax's.
  """

  use_running_average: bool = False
  momentum: float = 0.9
  epsilon: float = 1e-5
  dtype: Any = None
  param_dtype: Any = jnp.float32
  scale_init: Callable[..., jax.Array] = nn.initializers.ones
  bias_init: Callable[..., jax.Array] = nn.initializers.zeros

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    features = x.shape[-1]
    running_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,), jnp.float32)
    running_var = self.variable('batch_stats', 'var', jnp.ones, (features,), jnp.float32)
    scale = self.param('scale', self.scale_init, (features,), self.param_dtype)
    bias = self.param('bias', self.bias_init, (features,), self.param_dtype)
    if self.use_running_average:
      mean, var = running_mean.value, running_var.value
    else:
      rows = x.reshape(-1, features).astype(jnp.float32)  # statistics in float32, as flax
      weights = jnp.full((rows.shape[0],), 1.0 / rows.shape[0], jnp.float32)
      mean = weights @ rows
      var = jnp.maximum(weights @ (rows * rows) - mean * mean, 0.0)
      if not self.is_initializing():
        running_mean.value = self.momentum * running_mean.value + (1 - self.momentum) * mean
        running_var.value = self.momentum * running_var.value + (1 - self.momentum) * var
    multiplier = scale * lax.rsqrt(var + self.epsilon)
    dtype = self.dtype or x.dtype
    # (x - mean) * multiplier + bias, with the per-channel parts folded into one multiply-add.
    return (x.astype(dtype) * multiplier.astype(dtype)
            + (bias - mean * multiplier).astype(dtype))


def batch_norm(train: bool, dtype: Any, name: str | None = None) -> BatchNorm:
  """BatchNorm with PyTorch's momentum (0.1 -> flax 0.9) and eps; statistics stay float32."""
  return BatchNorm(
      use_running_average=not train,
      momentum=0.9,
      epsilon=1e-5,
      dtype=dtype,
      param_dtype=jnp.float32,
      scale_init=bn_scale_init,
      name=name,
  )


def same_padding(kernel_size: int) -> tuple[int, int]:
  """Padding of a stride-2 conv that halves an even map, as PyTorch's `padding=(k - 1) // 2`."""
  p = (kernel_size - 1) // 2
  return (p, p)


def transpose_padding(kernel_size: int) -> tuple[int, int]:
  """Padding of a stride-2 transposed conv that doubles a map.

  Mirrors PyTorch's ConvTranspose2d(k, stride=2, padding=p, output_padding=op) with p = (k - 1) // 2
  and op = k % 2 (k=4: p=1, op=0; k=5: p=2, op=1), written as lax.conv_transpose padding
  (k - 1 - p, k - 1 - p + op).
  """
  p = (kernel_size - 1) // 2
  op = kernel_size % 2
  return (kernel_size - 1 - p, kernel_size - 1 - p + op)


class Norm(nn.Module):
  """Selectable normalisation: 'batch', 'layer' (for WGAN-GP critics) or 'none'."""

  kind: str = 'batch'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if self.kind == 'batch':
      return batch_norm(train, self.dtype)(x)
    if self.kind == 'layer':
      # Per-sample normalisation keeps the gradient penalty well defined (no cross-sample mixing).
      return nn.LayerNorm(dtype=self.dtype, param_dtype=jnp.float32)(x)
    if self.kind == 'none':
      return x
    raise ValueError(f'Unknown normalisation {self.kind!r}.')


class ResidualBlock(nn.Module):
  """Pre-activation-free residual block: conv3x3-BN-act-conv3x3-BN plus identity (same shape)."""

  activation: Callable[[jax.Array], jax.Array]
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    c = x.shape[-1]
    h = nn.Conv(c, (3, 3), padding=1, use_bias=False, kernel_init=conv_init, dtype=self.dtype)(x)
    h = self.activation(batch_norm(train, self.dtype)(h))
    h = nn.Conv(c, (3, 3), padding=1, use_bias=False, kernel_init=conv_init, dtype=self.dtype)(h)
    h = batch_norm(train, self.dtype)(h)
    return self.activation(x + h)


class SelfAttention(nn.Module):
  """SAGAN self-attention (Zhang et al. 2019): x + gamma * attention(x), gamma initialised to 0.

  gamma starts at zero so the block begins as the identity and the network learns how much
  non-local context to mix in.
  """

  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    inner = max(c // 8, 1)
    conv1x1 = lambda f, name: nn.Conv(f, (1, 1), use_bias=False, kernel_init=conv_init,
                                      dtype=self.dtype, name=name)
    q = conv1x1(inner, 'query')(x).reshape(b, h * w, inner)
    k = conv1x1(inner, 'key')(x).reshape(b, h * w, inner)
    v = conv1x1(c, 'value')(x).reshape(b, h * w, c)
    attn = jax.nn.softmax(jnp.einsum('bqc,bkc->bqk', q, k).astype(jnp.float32), axis=-1)
    out = jnp.einsum('bqk,bkc->bqc', attn.astype(v.dtype), v).reshape(b, h, w, c)
    gamma = self.param('gamma', nn.initializers.zeros, (), jnp.float32)
    return x + gamma.astype(x.dtype) * out


def leaky_relu(x: jax.Array) -> jax.Array:
  """LeakyReLU with the DCGAN slope 0.2."""
  return nn.leaky_relu(x, negative_slope=0.2)
