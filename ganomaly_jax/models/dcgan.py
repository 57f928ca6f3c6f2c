"""DCGAN encoder/decoder, the GANomaly E-D-E generator and the two discriminators.

Architectures and parameter counts: docs/methods.md#ganomaly, docs/methods.md#ganomaly_modified and
docs/methods.md#skip_ganomaly.

Channel schedule: the first stride-2 conv maps `channels -> base`, every further stride-2 conv doubles
the channels (capped at `max_channels` when set) until the map is 4x4; a 4x4 'valid' conv then maps to
the output width (the latent for an encoder, 1 for the discriminator). The decoder mirrors it.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ganomaly_jax.models import layers


def pyramid_channels(isize: int, base: int, max_channels: int = 0) -> list[int]:
  """Output channels of the stride-2 convs, from isize/2 down to 4 (e.g. 32 -> [b, 2b, 4b])."""
  if isize % 16 or isize < 16:
    raise ValueError(f'model.isize must be a multiple of 16 (>= 16), got {isize}.')
  n = int(math.log2(isize // 4))
  chans = [base * 2**i for i in range(n)]
  return [min(c, max_channels) if max_channels else c for c in chans]


class Encoder(nn.Module):
  """Strided-conv encoder. Returns (output [B, out_features], features [B, 4, 4, C]).

  `features` is everything before the last conv: the discriminator's feature-matching target.
  """

  isize: int
  out_features: int
  base: int = 64
  kernel_size: int = 4
  max_channels: int = 0
  norm: str = 'batch'
  spectral_norm: bool = False
  residual_blocks: bool = False
  dtype: Any = jnp.float32

  def _conv(self, x, features, kernel, strides, padding, update_stats, name):
    conv = layers.conv(features, kernel, strides, padding, self.dtype, name=name)
    if self.spectral_norm:
      return nn.SpectralNorm(conv, name=f'{name}_sn')(x, update_stats=update_stats)
    return conv(x)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, update_stats: bool | None = None):
    update_stats = train if update_stats is None else update_stats
    pad = [layers.same_padding(self.kernel_size)] * 2
    h = x.astype(self.dtype)
    for i, c in enumerate(pyramid_channels(self.isize, self.base, self.max_channels)):
      h = self._conv(h, c, self.kernel_size, 2, pad, update_stats, f'conv_{i}')
      if i > 0:  # the first conv has no normalisation (DCGAN)
        h = layers.Norm(self.norm, self.dtype, name=f'norm_{i}')(h, train)
      h = layers.leaky_relu(h)
      if self.residual_blocks and i > 0:
        h = layers.ResidualBlock(layers.leaky_relu, self.dtype, name=f'res_{i}')(h, train)
    features = h
    out = self._conv(h, self.out_features, 4, 1, 'VALID', update_stats, 'conv_out')
    return out.reshape(out.shape[0], -1), features


class Decoder(nn.Module):
  """Transposed-conv decoder from a latent [B, nz] to an image [B, isize, isize, channels] in [-1, 1]."""

  isize: int
  channels: int
  base: int = 64
  kernel_size: int = 4
  max_channels: int = 0
  residual_blocks: bool = False
  self_attention: int = 0
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z: jax.Array, train: bool, stochastic: bool | None = None) -> jax.Array:
    deterministic = not (train if stochastic is None else stochastic)
    chans = pyramid_channels(self.isize, self.base, self.max_channels)[::-1]  # 4x4 level first
    convt = lambda c, k, s, pad, name: layers.conv_transpose(c, k, s, pad, self.dtype, name=name)

    h = z.reshape(z.shape[0], 1, 1, -1).astype(self.dtype)
    h = convt(chans[0], 4, 1, 'VALID', 'convt_in')(h)  # 1x1 -> 4x4
    resolution = 4
    for i, c in enumerate(chans):
      if i > 0:
        h = convt(c, self.kernel_size, 2, layers.transpose_padding(self.kernel_size), f'convt_{i}')(
            h
        )
        resolution *= 2
      h = nn.relu(layers.batch_norm(train, self.dtype, name=f'bn_{i}')(h))
      if self.dropout > 0:
        h = nn.Dropout(self.dropout)(h, deterministic=deterministic)
      if self.residual_blocks:
        h = layers.ResidualBlock(nn.relu, self.dtype, name=f'res_{i}')(h, train)
      if self.self_attention == resolution:
        h = layers.SelfAttention(self.dtype, name='attention')(h)
    # The last layer always uses a 4x4 kernel (study method 2 keeps it at 4 with 5x5 elsewhere).
    h = convt(self.channels, 4, 2, layers.transpose_padding(4), 'convt_out')(h)
    return jnp.tanh(h).astype(jnp.float32)


class EDEGenerator(nn.Module):
  """GANomaly generator: encoder -> decoder -> encoder with separate weights; returns x̂, z, ẑ."""

  isize: int
  channels: int
  latent_dim: int = 100
  base: int = 64
  kernel_size: int = 4
  max_channels: int = 0
  residual_blocks: bool = False
  self_attention: int = 0
  dropout: float = 0.0
  dtype: Any = jnp.float32

  def setup(self):
    enc = lambda: Encoder(
        self.isize,
        self.latent_dim,
        self.base,
        self.kernel_size,
        self.max_channels,
        residual_blocks=self.residual_blocks,
        dtype=self.dtype,
    )
    self.encoder1 = enc()
    self.decoder = Decoder(
        self.isize,
        self.channels,
        self.base,
        self.kernel_size,
        self.max_channels,
        self.residual_blocks,
        self.self_attention,
        self.dropout,
        self.dtype,
    )
    self.encoder2 = enc()

  def __call__(self, x: jax.Array, train: bool, stochastic: bool | None = None) -> dict:
    z, _ = self.encoder1(x, train)
    recon = self.decoder(z, train, stochastic)
    z_hat, _ = self.encoder2(recon, train)
    z = z.astype(jnp.float32)
    return {'recon': recon, 'z': z, 'z_hat': z_hat.astype(jnp.float32), 'code': z}


class Discriminator(nn.Module):
  """GANomaly discriminator: an encoder with one output. Returns (logit [B], features).

  D(x) = sigmoid(logit); features are the 4x4 maps before the last conv (feature matching, eq. 3.2).
  """

  isize: int
  channels: int
  base: int = 64
  kernel_size: int = 4
  max_channels: int = 0
  norm: str = 'batch'
  spectral_norm: bool = False
  residual_blocks: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, update_stats: bool | None = None):
    logit, features = Encoder(
        self.isize,
        1,
        self.base,
        self.kernel_size,
        self.max_channels,
        self.norm,
        self.spectral_norm,
        self.residual_blocks,
        self.dtype,
        name='encoder',
    )(x, train, update_stats)
    return logit[:, 0].astype(jnp.float32), features.astype(jnp.float32)


class LatentDiscriminator(nn.Module):
  """SkipGANomaly discriminator: encoder to the latent (the features), then a classifier conv.

  The study used a 4x4 classifier kernel, the reference code 3x3 (`classifier_kernel`); on the 1x1
  latent map only the centre tap sees data, but the kernel size sets the parameter count.
  """

  isize: int
  channels: int
  latent_dim: int = 100
  base: int = 64
  kernel_size: int = 4
  max_channels: int = 0
  classifier_kernel: int = 4
  norm: str = 'batch'
  spectral_norm: bool = False
  residual_blocks: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, update_stats: bool | None = None):
    update_stats = train if update_stats is None else update_stats
    latent, _ = Encoder(
        self.isize,
        self.latent_dim,
        self.base,
        self.kernel_size,
        self.max_channels,
        self.norm,
        self.spectral_norm,
        self.residual_blocks,
        self.dtype,
        name='encoder',
    )(x, train, update_stats)
    k = self.classifier_kernel
    classifier = layers.conv(1, k, padding='SAME', dtype=self.dtype, name='classifier')
    h = latent.reshape(latent.shape[0], 1, 1, -1)
    if self.spectral_norm:
      logit = nn.SpectralNorm(classifier, name='classifier_sn')(h, update_stats=update_stats)
    else:
      logit = classifier(h)
    return logit.reshape(-1).astype(jnp.float32), latent.astype(jnp.float32)
