"""Loss and score terms on small hand-computed cases (eq. 3.2-3.8, 6.1; docs/methods.md#equations),
and their registries."""

import jax
import jax.numpy as jnp
import numpy as np

from ganomaly_jax import losses
from ganomaly_jax import scores as scores_lib


def test_generator_terms_by_hand():
  x = jnp.array([[0.0, 1.0], [2.0, -1.0]])
  y = jnp.array([[1.0, 1.0], [0.0, 0.0]])
  assert np.isclose(losses.feature_matching(x, y), (1 + 0 + 4 + 1) / 4)  # eq. 3.2
  assert np.isclose(losses.reconstruction_l1(x, y), (1 + 0 + 2 + 1) / 4)  # eq. 3.3
  assert np.isclose(losses.latent_l2(x, y), 1.5)  # eq. 3.4
  # Hole weighting: weight 3 on the first element only -> (3*1 + 0 + 2 + 1) / (3 + 1 + 1 + 1).
  w = jnp.array([[3.0, 1.0], [1.0, 1.0]])
  assert np.isclose(losses.reconstruction_l1(x, y, w), 6 / 6)
  # RIAD's pixel term (loss.reconstruction=l2): (1 + 0 + 4 + 1) / 4, weighted (3 + 0 + 4 + 1) / 6.
  assert np.isclose(losses.reconstruction_l2(x, y), 1.5)
  assert np.isclose(losses.reconstruction_l2(x, y, w), 8 / 6)
  assert losses.RECONSTRUCTION == {'l1': losses.reconstruction_l1, 'l2': losses.reconstruction_l2}


def test_bce_matches_the_formula():
  logits = jnp.array([-2.0, 0.0, 3.0])
  t = jnp.array([0.0, 0.95, 1.0])
  p = jax.nn.sigmoid(logits)
  want = -jnp.mean(t * jnp.log(p) + (1 - t) * jnp.log(1 - p))
  assert np.isclose(losses.bce_with_logits(logits, t), want, atol=1e-6)
  # eq. 3.5 at D = 0.5 everywhere: 0.5 (log 2 + log 2) = log 2.
  zeros = jnp.zeros(4)
  assert np.isclose(losses.discriminator_bce(zeros, zeros), np.log(2), atol=1e-6)
  assert np.isclose(losses.generator_bce(jnp.zeros(3)), np.log(2), atol=1e-6)


def test_wgan_terms_and_gradient_penalty_of_a_linear_critic():
  assert np.isclose(losses.wgan_critic(jnp.array([1.0, 3.0]), jnp.array([0.0, 0.0])), -2.0)
  assert np.isclose(losses.wgan_generator(jnp.array([1.0, 3.0])), -2.0)
  # critic(x) = sum(a * x): gradient a everywhere, so the penalty is (|a| - 1)^2 exactly.
  a = jnp.full((1, 2, 2, 1), 1.5)
  critic = lambda images: jnp.sum(images * a, axis=(1, 2, 3))
  real = jnp.ones((3, 2, 2, 1))
  gp = losses.gradient_penalty(critic, real, -real, jax.random.key(0))
  assert np.isclose(gp, (3.0 - 1.0) ** 2, atol=1e-5)


def test_soft_and_noisy_labels_over_many_draws():
  real = losses.soft_labels(jax.random.key(0), (20000,), real=True)
  fake = losses.soft_labels(jax.random.key(1), (20000,), real=False)
  assert real.min() >= 0.9 and real.max() <= 1.0 and fake.min() >= 0.0 and fake.max() <= 0.1
  flipped = losses.flip_labels(jax.random.key(2), jnp.ones(20000), 0.05)
  rate = float(jnp.mean(flipped == 0.0))
  assert abs(rate - 0.05) < 4 * np.sqrt(0.05 * 0.95 / 20000)  # binomial tolerance


def test_scores_per_image():
  x = jnp.zeros((2, 2, 2, 1))
  recon = x.at[1].set(1.0)
  np.testing.assert_allclose(scores_lib.reconstruction_score(x, recon), [0.0, 1.0])
  np.testing.assert_allclose(
      scores_lib.latent_score(jnp.zeros((2, 3)), jnp.ones((2, 3)) * 2), [4.0, 4.0]
  )
  f_real, f_fake = jnp.zeros((2, 4)), jnp.ones((2, 4))
  # eq. 6.1 with λ = 0.9: 0.9 * [0, 1] + 0.1 * [1, 1]
  np.testing.assert_allclose(
      scores_lib.lambda_score(x, recon, f_real, f_fake, 0.9), [0.1, 1.0], atol=1e-6
  )
  assert losses.pixel_map(jnp.zeros((1, 2, 2, 3)), jnp.ones((1, 2, 2, 3))).shape == (1, 2, 2)


def test_registered_objectives_carry_what_validation_and_models_need():
  from ganomaly_jax import models
  from ganomaly_jax.config import schema

  wgan = losses.ADVERSARIAL['wgan_gp']
  assert wgan.d_norm == 'layer' and not wgan.uses_labels and not wgan.d_loss_bounded
  assert [k for k, a in losses.ADVERSARIAL.items() if a.allows_extra] == ['feature_matching']
  config = schema.base_config()
  assert models.discriminator_norm(config) == 'batch'
  config.loss.adversarial = 'wgan_gp'
  assert models.discriminator_norm(config) == 'layer'  # read from the registry entry


def test_registered_scores_by_hand():
  x = jnp.zeros((2, 2, 2, 1))
  recon = x.at[1].set(1.0)
  inputs = scores_lib.ScoreInputs(
      x=x,
      outputs={'recon': recon, 'z': jnp.zeros((2, 3)), 'z_hat': jnp.ones((2, 3))},
      discriminator=lambda images: (None, images.reshape(2, -1)),
  )
  step_config = type('HP', (), {'eval': type('E', (), {'score_lambda': 0.9})})
  np.testing.assert_allclose(scores_lib.SCORES['latent'].fn(inputs, step_config), [1.0, 1.0])
  np.testing.assert_allclose(
      scores_lib.SCORES['reconstruction'].fn(inputs, step_config), [0.0, 1.0]
  )
  # eq. 6.1 with f = identity: 0.9 * [0, 1] + 0.1 * [0, 1]
  np.testing.assert_allclose(
      scores_lib.SCORES['lambda'].fn(inputs, step_config), [0.0, 1.0], atol=1e-6
  )
