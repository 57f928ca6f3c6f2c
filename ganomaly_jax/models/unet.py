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
  """U-Net with 4x4 stride-2 convs down to 1x1 and skip connections; returns {'recon': x̂}.

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
      h = layers.conv_transpose(out_ch, 4, 2, layers.transpose_padding(4), self.dtype,
                                use_bias=(i == 0), name=f'up_{i}')(h)
      if i == 0:
        break
      h = layers.batch_norm(train, self.dtype, name=f'up_bn_{i}')(h)
      if self.dropout > 0:
        h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
      if self.residual_blocks:
        h = layers.ResidualBlock(nn.relu, self.dtype, name=f'up_res_{i}')(h, train)
      if self.self_attention == h.shape[1]:
        h = layers.SelfAttention(self.dtype, name='attention')(h)
    return {'recon': jnp.tanh(h).astype(jnp.float32)}
