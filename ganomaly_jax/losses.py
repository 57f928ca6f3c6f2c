"""Loss terms as small pure functions, pixel anomaly maps, the adversarial objectives' registry.

Equation numbers are the study's (chapters 3 and 6; docs/methods.md#ganomaly and
docs/methods.md#skip_ganomaly; GANomaly: Akçay et al. 2018; Skip-GANomaly: Akçay et al. 2019):
  eq. 3.1  L_G   = w_adv L_adv + w_con L_con + w_enc L_enc   (1 / 50 / 1)
  eq. 3.2  L_adv = mean((f(x) - f(x̂))²)                 feature matching, f = D's features
  eq. 3.3  L_con = mean|x - x̂|                          contextual (reconstruction) loss
  eq. 3.4  L_enc = mean((z - ẑ)²)                        latent (encoder) loss
  eq. 3.5  L_D   = 0.5 (BCE(D(x), 1) + BCE(D(x̂), 0))
  eq. 3.6  L_adv' = L_adv + E[log(1 - D(x̂))]            extra adversarial term (we use the
           non-saturating form -E[log D(x̂)], which has the same fixed point and useful gradients;
           docs/methods.md#ganomaly_modified)
  eq. 3.7  SkipGANomaly L_adv = BCE(D(x̂), 1)
  eq. 3.8  SkipGANomaly L_D = BCE(D(x), 1) + BCE(D(x̂), 0) + the latent term mean((f(x) - f(x̂))²)

The contextual term is L1 (eq. 3.3) or, for RIAD, L2 (`loss.reconstruction`, registry
`RECONSTRUCTION`). Beside it, every reconstruction method may add SSIM and multi-scale
gradient-magnitude similarity terms to G's loss (`loss.w_ssim`, `loss.w_msgms`; `structural_loss`)
and choose its pixel anomaly map (`eval.map`, registry `MAPS`), as RIAD does (Zavrtanik, Kristan,
Skočaj, Pattern Recognition 2021; docs/methods.md#riad). The `map_*` scores (`scores.py`) reduce
that map to one number per image.

A method picks its adversarial objective (`loss.adversarial`; 'none' for a plain autoencoder) by
name from `ADVERSARIAL`; the train step calls the registered functions, and `checks.py` reads each
entry's facts. A new one is one `register_adversarial` call (see docs/extending.md#adding-a-method).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from ganomaly_jax import similarity
from ganomaly_jax.config import frozen


def _per_example_mean(x: jax.Array) -> jax.Array:
  return jnp.mean(x.reshape(x.shape[0], -1), axis=1)


def feature_matching(features_real: jax.Array, features_fake: jax.Array) -> jax.Array:
  """Eq. 3.2 (and the latent term of eq. 3.8): mean squared distance between D's features of x and x̂."""
  return jnp.mean(jnp.square(features_real - features_fake))


def reconstruction_l1(x: jax.Array, recon: jax.Array, weight: jax.Array | None = None) -> jax.Array:
  """Eq. 3.3: mean |x - x̂|; `weight` (broadcastable to x) re-weights pixels, e.g. masked holes.

  With a weight map the sum is normalised by the total weight, so a hole weight only shifts the
  emphasis between hole and context, not the overall scale of the term.
  """
  err = jnp.abs(x - recon)
  if weight is None:
    return jnp.mean(err)
  weight = jnp.broadcast_to(weight, err.shape)
  return jnp.sum(err * weight) / jnp.maximum(jnp.sum(weight), 1e-8)


def reconstruction_l2(x: jax.Array, recon: jax.Array, weight: jax.Array | None = None) -> jax.Array:
  """RIAD's pixel term: mean (x - x̂)²; `weight` re-weights pixels as in `reconstruction_l1`."""
  err = jnp.square(x - recon)
  if weight is None:
    return jnp.mean(err)
  weight = jnp.broadcast_to(weight, err.shape)
  return jnp.sum(err * weight) / jnp.maximum(jnp.sum(weight), 1e-8)


# The contextual term of G's loss (`loss.reconstruction`), weighted by loss.w_con.
RECONSTRUCTION: dict[str, Callable[..., jax.Array]] = {
    'l1': reconstruction_l1,  # eq. 3.3
    'l2': reconstruction_l2,  # RIAD
}


def latent_l2(z: jax.Array, z_hat: jax.Array) -> jax.Array:
  """Eq. 3.4: mean squared distance between the two latent codes."""
  return jnp.mean(jnp.square(z - z_hat))


def bce_with_logits(logits: jax.Array, targets: jax.Array | float) -> jax.Array:
  """Mean binary cross-entropy of sigmoid(logits) against (possibly soft) targets, computed stably."""
  targets = jnp.broadcast_to(jnp.asarray(targets, logits.dtype), logits.shape)
  # log(sigmoid(l)) = -softplus(-l); log(1 - sigmoid(l)) = -softplus(l)
  return jnp.mean(targets * jax.nn.softplus(-logits) + (1 - targets) * jax.nn.softplus(logits))


def discriminator_bce(
    real_logits: jax.Array,
    fake_logits: jax.Array,
    real_targets: jax.Array | float = 1.0,
    fake_targets: jax.Array | float = 0.0,
) -> jax.Array:
  """Eq. 3.5 (and the BCE part of eq. 3.8): 0.5 (BCE(D(x), real) + BCE(D(x̂), fake)); targets may be
  soft or flipped labels."""
  return 0.5 * (
      bce_with_logits(real_logits, real_targets) + bce_with_logits(fake_logits, fake_targets)
  )


def generator_bce(fake_logits: jax.Array) -> jax.Array:
  """Non-saturating adversarial term -E[log D(x̂)] (eq. 3.6 extra term; SkipGANomaly's L_adv, eq. 3.7)."""
  return bce_with_logits(fake_logits, 1.0)


def wgan_critic(real_scores: jax.Array, fake_scores: jax.Array) -> jax.Array:
  """WGAN critic loss (Gulrajani et al. 2017; the study's future work, docs/methods.md#ganomaly) E[D(x̂)] - E[D(x)] (gradient penalty added separately)."""
  return jnp.mean(fake_scores) - jnp.mean(real_scores)


def wgan_generator(fake_scores: jax.Array) -> jax.Array:
  """WGAN generator loss -E[D(x̂)]."""
  return -jnp.mean(fake_scores)


def gradient_penalty(critic, real: jax.Array, fake: jax.Array, rng: jax.Array) -> jax.Array:
  """WGAN-GP (Gulrajani et al. 2017): E[(‖∇D(x̃)‖₂ - 1)²] on random interpolates x̃.

  `critic` maps a batch of images to per-example scores [B]; it must not mix examples (no BatchNorm).
  """
  eps = jax.random.uniform(rng, (real.shape[0],) + (1,) * (real.ndim - 1), real.dtype)
  mixed = eps * real + (1 - eps) * fake
  grads = jax.grad(lambda x: jnp.sum(critic(x)))(mixed)
  norms = jnp.sqrt(jnp.sum(jnp.square(grads.reshape(grads.shape[0], -1)), axis=1) + 1e-12)
  return jnp.mean(jnp.square(norms - 1.0))


def soft_labels(rng: jax.Array, shape: tuple[int, ...], real: bool) -> jax.Array:
  """Soft targets for the discriminator: real ~ U[0.9, 1.0], fake ~ U[0.0, 0.1]."""
  low = 0.9 if real else 0.0
  return jax.random.uniform(rng, shape, minval=low, maxval=low + 0.1)


def flip_labels(rng: jax.Array, targets: jax.Array, prob: float) -> jax.Array:
  """Noisy labels: each target t becomes 1 - t with probability `prob`."""
  flip = jax.random.bernoulli(rng, prob, targets.shape)
  return jnp.where(flip, 1.0 - targets, targets)


def discriminator_targets(
    step_config: frozen.StepConfig, rng: jax.Array, n: int
) -> tuple[jax.Array, jax.Array]:
  """Discriminator targets: hard 1/0, optionally soft (U[0.9,1] / U[0,0.1]) and randomly flipped."""
  r_soft, f_soft, r_flip, f_flip = jax.random.split(rng, 4)
  if step_config.train.soft_labels:
    real = soft_labels(r_soft, (n,), real=True)
    fake = soft_labels(f_soft, (n,), real=False)
  else:
    real, fake = jnp.ones((n,)), jnp.zeros((n,))
  if step_config.train.label_flip_prob > 0:
    real = flip_labels(r_flip, real, step_config.train.label_flip_prob)
    fake = flip_labels(f_flip, fake, step_config.train.label_flip_prob)
  return real, fake


def discriminator_inputs(
    step_config: frozen.StepConfig, rng: jax.Array, real: jax.Array, fake: jax.Array
):
  """D's inputs for training: instance noise on both passes when train.d_input_noise_std > 0."""
  std = step_config.train.d_input_noise_std
  if std <= 0:
    return real, fake
  nr, nf = jax.random.split(rng)
  return (
      real + std * jax.random.normal(nr, real.shape),
      fake + std * jax.random.normal(nf, fake.shape),
  )


def pixel_map(x: jax.Array, recon: jax.Array) -> jax.Array:
  """Per-pixel anomaly map |x - x̂| averaged over channels: [B, H, W]."""
  return jnp.mean(jnp.abs(x - recon), axis=-1)


def structural_loss(
    x: jax.Array, recon: jax.Array, w_ssim: float, w_msgms: float
) -> tuple[jax.Array | float, dict[str, jax.Array]]:
  """RIAD's structural terms beside L1 (eq. 3.3), added to G's loss (eq. 3.1).

  Returns (w_ssim * g_ssim + w_msgms * g_msgms, the unweighted terms for logging) with g_ssim =
  1 - mean SSIM and g_msgms = the mean over scales of mean(1 - GMS); a term whose weight is 0 is
  not computed (the weights are static). Both cover the whole image (no hole weight).
  """
  terms = {}
  if w_ssim > 0:
    terms['g_ssim'] = similarity.ssim_loss(x, recon)
  if w_msgms > 0:
    terms['g_msgms'] = similarity.msgms_loss(x, recon)
  total = w_ssim * terms.get('g_ssim', 0.0) + w_msgms * terms.get('g_msgms', 0.0)
  return total, terms


# ---- Pixel anomaly maps (`eval.map`): (x, x̂) -> [B, H, W], higher = more anomalous. ----


@dataclasses.dataclass(frozen=True)
class PixelMap:
  """An anomaly map `fn(x, x̂) -> [B, H, W]` and the largest value it can take.

  `max_value` bounds the map for images in [-1, 1] (smoothing keeps the bound): the pixel metrics'
  histogram spans [0, max_value], so no value of the map in use is clipped.
  """

  fn: Callable[..., jax.Array]
  max_value: float
  # Whether `fn` takes a third argument, the side of its mean filter (`eval.map_filter`).
  filtered: bool = False

  def __call__(self, x: jax.Array, recon: jax.Array, filter_side: int = 0) -> jax.Array:
    return self.fn(x, recon, filter_side) if self.filtered else self.fn(x, recon)


MAPS: dict[str, PixelMap] = {
    'l1': PixelMap(pixel_map, 2.0),  # |x - x̂| of images in [-1, 1]
    'ssim': PixelMap(similarity.ssim_anomaly_map, 2.0),  # 1 - SSIM, SSIM in [-1, 1]
    # RIAD's map: 1 - MSGMS, mean-filtered
    'msgms': PixelMap(similarity.msgms_anomaly_map, 1.0, filtered=True),
    # Both structural maps summed: SSIM reacts to local contrast, MSGMS to edges.
    'ssim_msgms': PixelMap(
        lambda x, recon, side: similarity.ssim_anomaly_map(x, recon)
        + similarity.msgms_anomaly_map(x, recon, side),
        3.0,
        filtered=True,
    ),
}


def register_map(name: str, pixel_map_: PixelMap) -> None:
  """Makes `eval.map=name` select `pixel_map_` (validation, the test pass and the read-out see it)."""
  MAPS[name] = pixel_map_


def anomaly_map(x: jax.Array, outputs: dict, name: str, filter_side: int = 0) -> jax.Array:
  """The `eval.map` map of x against the generator's reconstruction: [B, H, W].

  With several evaluation tilings (`outputs['recons']`, [T, B, H, W, C]: the grid mask's cell sizes)
  the T maps are averaged, as RIAD averages its maps over cell sizes. `filter_side` is
  `eval.map_filter` (the maps that mean-filter; 0: their own scaled side).
  """
  fn = MAPS[name]
  if 'recons' not in outputs:
    return fn(x, outputs['recon'], filter_side)
  recons = outputs['recons']
  return sum(fn(x, recons[t], filter_side) for t in range(recons.shape[0])) / recons.shape[0]


# ---- Registry: the adversarial objectives (`loss.adversarial`). ----


class AdversarialInputs(NamedTuple):
  """What an adversarial objective sees of one training step (all from D *before* its update)."""

  real_logits: jax.Array  # D's logits on x, [B]
  fake_logits: jax.Array  # D's logits on x̂, [B]
  real_features: jax.Array  # f(x)
  fake_features: jax.Array  # f(x̂)
  real_targets: jax.Array  # D's targets for x (soft / flipped where the objective uses labels), [B]
  fake_targets: jax.Array
  real: jax.Array  # x, for penalties on D's input space
  fake: jax.Array  # x̂ with stop-gradient
  critic: Callable[[jax.Array], jax.Array]  # images -> D's logits, D's statistics frozen
  rng: jax.Array  # for stochastic penalties (e.g. gradient-penalty interpolates)


@dataclasses.dataclass(frozen=True)
class Adversarial:
  """An adversarial objective and the facts validation and model building need about it.

  `generator_loss(inputs, step_config)` is G's adversarial term (L_adv of eq. 3.1) and
  `discriminator_loss(inputs, step_config)` is D's loss; `step_config` is the step's frozen config
  view
  (`config.frozen.StepConfig`: `step_config.loss.gp_weight`, ...).
  """

  generator_loss: Callable[[AdversarialInputs, Any], jax.Array]
  discriminator_loss: Callable[[AdversarialInputs, Any], jax.Array]
  d_norm: str = (
      'batch'  # normalisation in D: 'batch' | 'layer' | 'none' (models.discriminator_norm)
  )
  uses_labels: bool = True  # train.soft_labels / train.label_flip_prob change D's targets
  allows_extra: bool = False  # loss.adv_extra (eq. 3.6) adds something this objective lacks
  d_loss_bounded: bool = (
      True  # D's loss is >= 0, so train.d_reinit_threshold means "D wins outright"
  )
  multi_critic: bool = False  # loss.n_critic > 1: extra D-only updates per step
  needs_discriminator: bool = True  # False only for 'none' (model.discriminator=none)


ADVERSARIAL: dict[str, Adversarial] = {}


def register_adversarial(name: str, entry: Adversarial) -> Adversarial:
  """Makes `loss.adversarial=<name>` available to the step, the models and validation."""
  ADVERSARIAL[name] = entry
  return entry


def _bce_discriminator(d: AdversarialInputs, step_config: Any) -> jax.Array:
  return discriminator_bce(d.real_logits, d.fake_logits, d.real_targets, d.fake_targets)


def _wgan_gp_critic(d: AdversarialInputs, step_config: Any) -> jax.Array:
  """E[D(x̂)] - E[D(x)] + gp_weight * gradient penalty."""
  return wgan_critic(d.real_logits, d.fake_logits) + step_config.loss.gp_weight * gradient_penalty(
      d.critic, d.real, d.fake, d.rng
  )


# GANomaly (eq. 3.2 for G, eq. 3.5 for D); eq. 3.6 may add the non-saturating BCE term to G.
register_adversarial(
    'feature_matching',
    Adversarial(
        generator_loss=lambda d, _: feature_matching(d.real_features, d.fake_features),
        discriminator_loss=_bce_discriminator,
        allows_extra=True,
    ),
)
# SkipGANomaly (eq. 3.7 for G, eq. 3.8 for D; loss.latent_in_d adds the latent term).
register_adversarial(
    'bce',
    Adversarial(
        generator_loss=lambda d, _: generator_bce(d.fake_logits),
        discriminator_loss=_bce_discriminator,
    ),
)
# WGAN-GP critic: the penalty needs per-sample gradients, so D normalises per sample (LayerNorm);
# labels do not exist, and the critic's loss is unbounded below (no re-initialisation threshold).
register_adversarial(
    'wgan_gp',
    Adversarial(
        generator_loss=lambda d, _: wgan_generator(d.fake_logits),
        discriminator_loss=_wgan_gp_critic,
        d_norm='layer',
        uses_labels=False,
        d_loss_bounded=False,
        multi_critic=True,
    ),
)


# No adversary (RIAD, docs/methods.md#riad): with model.discriminator=none nothing is trained
# against G and D's loss is 0 (D has no parameters).
register_adversarial(
    'none',
    Adversarial(
        generator_loss=lambda d, _: jnp.zeros(()),
        discriminator_loss=lambda d, _: jnp.zeros(()),
        d_norm='none',
        uses_labels=False,
        needs_discriminator=False,
    ),
)
