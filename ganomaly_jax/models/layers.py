"""Initialisers, normalisation and small blocks shared by the generators and discriminators."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

# DCGAN initialisation used by every GANomaly variant (docs/methods.md#ganomaly; Radford et al. 2016):
# conv kernels N(0, 0.02), BatchNorm scale N(1, 0.02) and bias 0.
conv_init = nn.initializers.normal(0.02)


def bn_scale_init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
  """BatchNorm scale ~ N(1, 0.02)."""
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def batch_norm(train: bool, dtype: Any, name: str | None = None) -> nn.BatchNorm:
  """flax's BatchNorm with PyTorch's momentum (0.1 -> flax 0.9) and eps; statistics in float32.

  The variance is the centred E[(x - E[x])^2] (`use_fast_variance=False`): flax's default
  E[x^2] - E[x]^2 loses the variance of activations whose mean is large against their spread.
  """
  return nn.BatchNorm(
      use_running_average=not train,
      momentum=0.9,
      epsilon=1e-5,
      dtype=dtype,
      param_dtype=jnp.float32,
      scale_init=bn_scale_init,
      use_fast_variance=False,
      name=name,
  )


def conv(
    features: int,
    kernel: int,
    strides: int = 1,
    padding: Any = 'SAME',
    dtype: Any = None,
    use_bias: bool = False,
    name: str | None = None,
) -> nn.Conv:
  """A square bias-free `nn.Conv` with the DCGAN initialiser and float32 parameters."""
  return nn.Conv(
      features,
      (kernel, kernel),
      strides=strides,
      padding=padding,
      use_bias=use_bias,
      kernel_init=conv_init,
      dtype=dtype,
      param_dtype=jnp.float32,
      name=name,
  )


def conv_transpose(
    features: int,
    kernel: int,
    strides: int,
    padding: Any,
    dtype: Any = None,
    use_bias: bool = False,
    name: str | None = None,
) -> nn.ConvTranspose:
  """A square `nn.ConvTranspose` (PyTorch's kernel layout: `transpose_kernel=False`), DCGAN init.

  `padding` is 'VALID' or one (lo, hi) pair of `lax.conv_transpose` pads used for both spatial dims.
  """
  if not isinstance(padding, str):
    padding = (tuple(padding), tuple(padding))
  return nn.ConvTranspose(
      features,
      (kernel, kernel),
      strides=(strides, strides),
      padding=padding,
      use_bias=use_bias,
      kernel_init=conv_init,
      dtype=dtype,
      param_dtype=jnp.float32,
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
    h = conv(c, 3, padding=1, dtype=self.dtype)(x)
    h = self.activation(batch_norm(train, self.dtype)(h))
    h = conv(c, 3, padding=1, dtype=self.dtype)(h)
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
    conv1x1 = lambda f, name: conv(f, 1, dtype=self.dtype, name=name)
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
