"""Loss terms as small pure functions, with the study's equation numbers.

Equations (the study's chapter 3 and 6; GANomaly: Akçay et al. 2018; Skip-GANomaly: Akçay et al. 2019):
  eq. 3.1  L_adv = mean((f(x) - f(x̂))²)                 feature matching, f = D's features
  eq. 3.2  L_con = mean|x - x̂|                          contextual (reconstruction) loss
  eq. 3.3  L_enc = mean((z - ẑ)²)                        latent (encoder) loss
  eq. 3.4  L_G   = w_adv L_adv + w_con L_con + w_enc L_enc   (1 / 50 / 1)
  eq. 3.5  L_D   = 0.5 (BCE(D(x), 1) + BCE(D(x̂), 0))
  eq. 3.6  L_adv' = L_adv + E[log(1 - D(x̂))]            extra adversarial term (we use the
           non-saturating form -E[log D(x̂)], which has the same fixed point and useful gradients)
  eq. 6.1  A(x)  = λ mean((x - x̂)²) + (1 - λ) mean((f(x) - f(x̂))²)   SkipGANomaly score
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _per_example_mean(x: jax.Array) -> jax.Array:
  return jnp.mean(x.reshape(x.shape[0], -1), axis=1)


def feature_matching(features_real: jax.Array, features_fake: jax.Array) -> jax.Array:
  """Eq. 3.1: mean squared distance between discriminator features of x and x̂."""
  return jnp.mean(jnp.square(features_real - features_fake))


def reconstruction_l1(x: jax.Array, recon: jax.Array, weight: jax.Array | None = None) -> jax.Array:
  """Eq. 3.2: mean |x - x̂|; `weight` (broadcastable to x) re-weights pixels, e.g. masked holes.

  With a weight map the sum is normalised by the total weight, so a hole weight only shifts the
  emphasis between hole and context, not the overall scale of the term.
  """
  err = jnp.abs(x - recon)
  if weight is None:
    return jnp.mean(err)
  weight = jnp.broadcast_to(weight, err.shape)
  return jnp.sum(err * weight) / jnp.maximum(jnp.sum(weight), 1e-8)


def latent_l2(z: jax.Array, z_hat: jax.Array) -> jax.Array:
  """Eq. 3.3: mean squared distance between the two latent codes."""
  return jnp.mean(jnp.square(z - z_hat))


def bce_with_logits(logits: jax.Array, targets: jax.Array | float) -> jax.Array:
  """Mean binary cross-entropy of sigmoid(logits) against (possibly soft) targets, computed stably."""
  targets = jnp.broadcast_to(jnp.asarray(targets, logits.dtype), logits.shape)
  # log(sigmoid(l)) = -softplus(-l); log(1 - sigmoid(l)) = -softplus(l)
  return jnp.mean(targets * jax.nn.softplus(-logits) + (1 - targets) * jax.nn.softplus(logits))


def discriminator_bce(real_logits: jax.Array, fake_logits: jax.Array,
                      real_targets: jax.Array | float = 1.0,
                      fake_targets: jax.Array | float = 0.0) -> jax.Array:
  """Eq. 3.5: 0.5 (BCE(D(x), real) + BCE(D(x̂), fake)); targets may be soft or flipped labels."""
  return 0.5 * (bce_with_logits(real_logits, real_targets) + bce_with_logits(fake_logits, fake_targets))


def generator_bce(fake_logits: jax.Array) -> jax.Array:
  """Non-saturating adversarial term -E[log D(x̂)] (eq. 3.6 extra term; SkipGANomaly's L_adv)."""
  return bce_with_logits(fake_logits, 1.0)


def wgan_critic(real_scores: jax.Array, fake_scores: jax.Array) -> jax.Array:
  """WGAN critic loss E[D(x̂)] - E[D(x)] (gradient penalty added separately)."""
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


# ---- Anomaly scores (per image; normalisation over the whole set happens in evaluation). ----


def latent_score(z: jax.Array, z_hat: jax.Array) -> jax.Array:
  """GANomaly's score: per-image mean((z - ẑ)²)."""
  return _per_example_mean(jnp.square(z - z_hat))


def reconstruction_score(x: jax.Array, recon: jax.Array) -> jax.Array:
  """Per-image mean((x - x̂)²)."""
  return _per_example_mean(jnp.square(x - recon))


def lambda_score(x: jax.Array, recon: jax.Array, features_real: jax.Array,
                 features_fake: jax.Array, lam: float) -> jax.Array:
  """Eq. 6.1: λ mean((x - x̂)²) + (1 - λ) mean((f(x) - f(x̂))²), per image."""
  return (lam * reconstruction_score(x, recon)
          + (1 - lam) * _per_example_mean(jnp.square(features_real - features_fake)))


def pixel_map(x: jax.Array, recon: jax.Array) -> jax.Array:
  """Per-pixel anomaly map |x - x̂| averaged over channels: [B, H, W]."""
  return jnp.mean(jnp.abs(x - recon), axis=-1)
