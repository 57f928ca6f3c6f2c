"""Model registries: the generators and discriminators a config can name, and how to build them.

`model.generator` and `model.discriminator` are looked up in `GENERATORS` / `DISCRIMINATORS`; each
entry builds its module from `config.model` and carries the facts the step and validation need. A new
architecture is one `register_generator` / `register_discriminator` call.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from ganomaly_jax import losses
from ganomaly_jax.models.dcgan import Discriminator, EDEGenerator, LatentDiscriminator
from ganomaly_jax.models.unet import PlainUNet, UNetGenerator

# The discriminator's residual blocks (layers.ResidualBlock) normalise with BatchNorm.
RESIDUAL_BLOCK_NORM = 'batch'


@dataclasses.dataclass(frozen=True)
class GeneratorKind:
  """A generator: `build(model_config, dtype)` and the facts the step and validation use.

  `latent_term(outputs, f(x), f(x̂))` is L_enc of eq. 3.1 for this generator;
  `latent_from_discriminator` says it compares D's features (so it needs a discriminator). `outputs`
  are what it returns besides 'recon' (a score that needs 'z' checks this). `ignores` maps model keys
  it does not read to why: validation refuses them when set away from their defaults.
  """

  build: Callable[[ml_collections.ConfigDict, Any], nn.Module]
  latent_term: Callable[[dict, jax.Array, jax.Array], jax.Array]
  outputs: tuple[str, ...] = ()
  ignores: dict[str, str] = dataclasses.field(default_factory=dict)
  latent_from_discriminator: bool = False


@dataclasses.dataclass(frozen=True)
class DiscriminatorKind:
  """A discriminator: `build(model_config, norm, dtype)` (norm from the adversarial objective).

  `latent_features`: its features are a latent code (loss.latent_in_d adds their distance to D's
  loss, eq. 3.8). `present=False`: no discriminator at all (a plain autoencoder such as RIAD), so
  nothing adversarial applies. `ignores`: model keys it does not read, as for generators.
  """

  build: Callable[[ml_collections.ConfigDict, str, Any], nn.Module]
  latent_features: bool = False
  present: bool = True
  ignores: dict[str, str] = dataclasses.field(default_factory=dict)


GENERATORS: dict[str, GeneratorKind] = {}
DISCRIMINATORS: dict[str, DiscriminatorKind] = {}


def register_generator(name: str, entry: GeneratorKind) -> GeneratorKind:
  """Makes `model.generator=<name>` available."""
  GENERATORS[name] = entry
  return entry


def register_discriminator(name: str, entry: DiscriminatorKind) -> DiscriminatorKind:
  """Makes `model.discriminator=<name>` available."""
  DISCRIMINATORS[name] = entry
  return entry


# GANomaly's encoder-decoder-encoder (docs/methods.md#ganomaly): L_enc = mean((z - ẑ)²), eq. 3.4.
register_generator(
    'ede',
    GeneratorKind(
        build=lambda m, dtype: EDEGenerator(
            m.isize,
            m.channels,
            m.latent_dim,
            m.ngf,
            m.kernel_size,
            m.max_channels,
            m.residual_blocks,
            m.self_attention,
            m.dropout,
            dtype,
        ),
        latent_term=lambda out, real_features, fake_features: losses.latent_l2(
            out['z'], out['z_hat']
        ),
        outputs=('z', 'z_hat', 'code'),  # code: z, the embedding of the knn_code score
    ),
)
# SkipGANomaly's U-Net (docs/methods.md#skip_ganomaly) has no latent code: its latent term compares
# D's latent features of x and x̂ (eq. 3.2 form), as the study's G loss does.
register_generator(
    'unet',
    GeneratorKind(
        build=lambda m, dtype: UNetGenerator(
            m.isize,
            m.channels,
            m.ngf,
            m.max_channels,
            m.residual_blocks,
            m.self_attention,
            m.dropout,
            dtype,
        ),
        latent_term=lambda out, real_features, fake_features: losses.feature_matching(
            real_features, fake_features
        ),
        ignores={
            'kernel_size': "the U-Net's convs are 4x4 as in the study; only the discriminator "
            'would change'
        },
        outputs=('code',),  # the innermost activations, the embedding of the knn_code score
        latent_from_discriminator=True,
    ),
)
# RIAD's plain U-Net autoencoder (docs/methods.md#riad): no latent code and no latent term.
register_generator(
    'riad_unet',
    GeneratorKind(
        build=lambda m, dtype: PlainUNet(m.isize, m.channels, m.ngf, m.max_channels, dtype),
        latent_term=lambda out, real_features, fake_features: jnp.zeros(()),
        outputs=('code',),  # the bottleneck's activations, the embedding of the knn_code score
        ignores={
            'kernel_size': "RIAD's U-Net uses 3x3 convs",
            'residual_blocks': "RIAD's U-Net has none",
            'self_attention': "RIAD's U-Net has none",
            'dropout': "RIAD's U-Net has none",
        },
    ),
)

register_discriminator(
    'dcgan',
    DiscriminatorKind(
        build=lambda m, norm, dtype: Discriminator(
            m.isize,
            m.channels,
            m.ndf,
            m.kernel_size,
            m.max_channels,
            norm,
            m.spectral_norm,
            m.residual_blocks,
            dtype,
        ),
        ignores={'classifier_kernel': 'only the latent discriminator has a classifier conv'},
    ),
)
register_discriminator(
    'latent',
    DiscriminatorKind(
        build=lambda m, norm, dtype: LatentDiscriminator(
            m.isize,
            m.channels,
            m.latent_dim,
            m.ndf,
            m.kernel_size,
            m.max_channels,
            m.classifier_kernel,
            norm,
            m.spectral_norm,
            m.residual_blocks,
            dtype,
        ),
        latent_features=True,
    ),
)


class NoDiscriminator(nn.Module):
  """No discriminator (model.discriminator=none): no parameters; logits and features are zeros, so
  the step runs unchanged and every adversarial term is 0."""

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, update_stats: bool = True):
    del train, update_stats
    return jnp.zeros((x.shape[0],), jnp.float32), jnp.zeros((x.shape[0], 1), jnp.float32)


# A plain autoencoder (RIAD): nothing adversarial; validation pairs it with loss.adversarial=none.
register_discriminator(
    'none', DiscriminatorKind(build=lambda m, norm, dtype: NoDiscriminator(), present=False)
)


def discriminator_norm(config: ml_collections.ConfigDict) -> str:
  """D's normalisation, as the adversarial objective needs it (WGAN-GP: LayerNorm, per sample)."""
  adversarial = losses.ADVERSARIAL.get(config.loss.adversarial)
  if adversarial is None:
    raise ValueError(
        f'loss.adversarial must be one of {tuple(losses.ADVERSARIAL)}, '
        f'got {config.loss.adversarial!r}.'
    )
  return adversarial.d_norm


def build_models(config: ml_collections.ConfigDict) -> tuple[nn.Module, nn.Module]:
  """Returns (generator, discriminator) modules for `config.model` (pure Flax linen modules).

  They compute in `config.runtime.dtype` (parameters stay float32, so the dtype is not architecture).
  """
  m, dtype = config.model, jnp.dtype(config.runtime.dtype)
  if m.generator not in GENERATORS:
    raise ValueError(f'model.generator must be one of {tuple(GENERATORS)}, got {m.generator!r}.')
  if m.discriminator not in DISCRIMINATORS:
    raise ValueError(
        f'model.discriminator must be one of {tuple(DISCRIMINATORS)}, ' f'got {m.discriminator!r}.'
    )
  generator = GENERATORS[m.generator].build(m, dtype)
  discriminator = DISCRIMINATORS[m.discriminator].build(m, discriminator_norm(config), dtype)
  return generator, discriminator
