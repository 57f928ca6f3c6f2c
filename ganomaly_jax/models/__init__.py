"""Model registry: builds the generator and discriminator a config asks for."""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from ganomaly_jax.models.dcgan import Discriminator, EDEGenerator, LatentDiscriminator
from ganomaly_jax.models.unet import UNetGenerator

GENERATORS = ('ede', 'unet')
DISCRIMINATORS = ('dcgan', 'latent')


def discriminator_norm(config: ml_collections.ConfigDict) -> str:
  """BatchNorm, except for a WGAN-GP critic: the penalty needs per-sample gradients (LayerNorm)."""
  return 'layer' if config.loss.adversarial == 'wgan_gp' else 'batch'


def build_models(config: ml_collections.ConfigDict) -> tuple[nn.Module, nn.Module]:
  """Returns (generator, discriminator) modules for `config.model` (pure Flax linen modules)."""
  m = config.model
  dtype = jnp.dtype(config.runtime.dtype)
  if m.generator == 'ede':
    generator = EDEGenerator(m.isize, m.channels, m.latent_dim, m.ngf, m.kernel_size,
                             m.max_channels, m.residual_blocks, m.self_attention, m.dropout,
                             dtype)
  elif m.generator == 'unet':
    generator = UNetGenerator(m.isize, m.channels, m.ngf, m.max_channels, m.residual_blocks,
                              m.self_attention, m.dropout, dtype)
  else:
    raise ValueError(f'model.generator must be one of {GENERATORS}, got {m.generator!r}.')

  norm = discriminator_norm(config)
  if m.discriminator == 'dcgan':
    discriminator = Discriminator(m.isize, m.channels, m.ndf, m.kernel_size, m.max_channels, norm,
                                  m.spectral_norm, m.residual_blocks, dtype)
  elif m.discriminator == 'latent':
    discriminator = LatentDiscriminator(m.isize, m.channels, m.latent_dim, m.ndf, m.kernel_size,
                                        m.max_channels, m.classifier_kernel, norm,
                                        m.spectral_norm, m.residual_blocks, dtype)
  else:
    raise ValueError(f'model.discriminator must be one of {DISCRIMINATORS}, got {m.discriminator!r}.')
  return generator, discriminator
