"""SkipGANomaly's U-Net generator (docs/methods.md#skip_ganomaly; pix2pix UnetGenerator with BatchNorm)."""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ganomaly_jax.models import layers


def unet_channels(isize: int, base: int, max_channels: int = 0) -> list[int]:
  """Channels of the log2(isize) down convs: base, 2b, 4b, 8b, then 8b down to 1x1."""
  if isize % 16 or isize < 16:
    raise ValueError(f'model.isize must be a multiple of 16 (>= 16), got {isize}.')
  cap = max_channels or 8 * base
  return [min(base * 2**i, 8 * base, cap) for i in range(int(math.log2(isize)))]


class UNetGenerator(nn.Module):
  """U-Net with 4x4 stride-2 convs down to 1x1 and skip connections; returns {'recon': x̂, 'code': the
  innermost activations}.

  Down block i: (LeakyReLU 0.2 unless outermost) -> conv -> (BN unless outermost or innermost).
  Up block i:   ReLU -> transposed conv -> BN, input = concat(skip_i, up_{i+1}); the outermost up
  is ReLU -> transposed conv with bias (the only biased conv) -> tanh.
  """

  isize: int
  channels: int
  base: int = 64
  max_channels: int = 0
  residual_blocks: bool = False
  self_attention: int = 0
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, stochastic: bool | None = None) -> dict:
    deterministic = not (train if stochastic is None else stochastic)
    chans = unet_channels(self.isize, self.base, self.max_channels)
    n = len(chans)
    pad = [layers.same_padding(4)] * 2

    h = x.astype(self.dtype)
    skips = []
    for i, c in enumerate(chans):
      if i > 0:
        h = layers.leaky_relu(h)
      h = layers.conv(c, 4, 2, pad, self.dtype, name=f'down_{i}')(h)
      if 0 < i < n - 1:
        h = layers.batch_norm(train, self.dtype, name=f'down_bn_{i}')(h)
        if self.residual_blocks:
          h = layers.ResidualBlock(layers.leaky_relu, self.dtype, name=f'down_res_{i}')(h, train)
      skips.append(h)

    for i in reversed(range(n)):
      if i < n - 1:
        h = jnp.concatenate([skips[i], h], axis=-1)
      h = nn.relu(h)
      out_ch = chans[i - 1] if i > 0 else self.channels
      h = layers.conv_transpose(
          out_ch, 4, 2, layers.transpose_padding(4), self.dtype, use_bias=(i == 0), name=f'up_{i}'
      )(h)
      if i == 0:
        break
      h = layers.batch_norm(train, self.dtype, name=f'up_bn_{i}')(h)
      if self.dropout > 0:
        h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
      if self.residual_blocks:
        h = layers.ResidualBlock(nn.relu, self.dtype, name=f'up_res_{i}')(h, train)
      if self.self_attention == h.shape[1]:
        h = layers.SelfAttention(self.dtype, name='attention')(h)
    return {'recon': jnp.tanh(h).astype(jnp.float32), 'code': skips[-1].astype(jnp.float32)}


class PlainUNet(nn.Module):
  """RIAD's generator (docs/methods.md#riad): a U-Net autoencoder (Ronneberger et al. 2015) with 3x3
  double convs; returns {'recon': x̂, 'code': the innermost activations}.

  Five levels; level i is (3x3 conv -> BatchNorm -> ReLU) twice at isize / 2^i with
  min(2^i base, 8 base) channels (64 ... 512 at base 64; capped by max_channels), the first at full
  resolution; 2x2 max-pooling between levels. Up: 2x2 stride-2 transposed conv to the level's
  channels, concat with the level's skip, double conv; a 1x1 conv (with bias) to the image's
  channels, then tanh because the images are in [-1, 1]. Convs have no bias before BatchNorm.
  """

  isize: int
  channels: int
  base: int = 64
  max_channels: int = 0
  dtype: Any = jnp.float32

  LEVELS = 5

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, stochastic: bool | None = None) -> dict:
    if self.isize >> (self.LEVELS - 1) < 1:
      raise ValueError(f'model.isize={self.isize} is too small for {self.LEVELS} U-Net levels.')
    cap = self.max_channels or 8 * self.base
    chans = [min(self.base * 2**i, 8 * self.base, cap) for i in range(self.LEVELS)]

    def double_conv(h, features, name):
      for j in range(2):
        h = layers.conv(features, 3, 1, 'SAME', self.dtype, name=f'{name}_conv{j}')(h)
        h = nn.relu(layers.batch_norm(train, self.dtype, name=f'{name}_bn{j}')(h))
      return h

    h = x.astype(self.dtype)
    skips = []
    for i, c in enumerate(chans):
      if i > 0:
        h = nn.max_pool(h, (2, 2), strides=(2, 2))
      h = double_conv(h, c, f'down_{i}')
      skips.append(h)
    for i in reversed(range(self.LEVELS - 1)):
      h = layers.conv_transpose(chans[i], 2, 2, 'VALID', self.dtype, name=f'up_{i}')(h)
      h = double_conv(jnp.concatenate([skips[i], h], axis=-1), chans[i], f'up_{i}')
    h = layers.conv(self.channels, 1, 1, 'SAME', self.dtype, use_bias=True, name='out')(h)
    return {'recon': jnp.tanh(h).astype(jnp.float32), 'code': skips[-1].astype(jnp.float32)}
