"""The training step and the evaluation step: pure functions of (state, batch, rng).

One step updates G and D from a single forward pass. As in the reference GANomaly code, the
generator's loss and the discriminator's loss both use the discriminator *before* this step's update,
so D(x) and D(x̂) are computed once and shared: we linearise the joint forward with `jax.vjp` and pull
back the G loss to G's parameters and the D loss to D's parameters only (x̂ acts as a constant for D,
exactly like `fake.detach()`; XLA drops the unused cotangents).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from ganomaly_jax import losses, masks
from ganomaly_jax.state import Components, GanState, init_discriminator


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """The hashable subset of the config that the step depends on (static under jit)."""

  generator: str
  discriminator: str
  w_adv: float
  w_con: float
  w_enc: float
  adversarial: str
  adv_extra: bool
  latent_in_d: bool
  gp_weight: float
  n_critic: int
  hole_weight: float
  soft_labels: bool
  label_flip_prob: float
  d_input_noise_std: float
  d_reinit_threshold: float
  mask_kind: str
  mask_size: float
  mask_cells: int
  mask_fill: float
  isize: int
  score: str
  score_lambda: float
  debug_nan_at_step: int
  loss_limit: float

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> 'StepConfig':
    return cls(
        generator=config.model.generator, discriminator=config.model.discriminator,
        w_adv=config.loss.w_adv, w_con=config.loss.w_con, w_enc=config.loss.w_enc,
        adversarial=config.loss.adversarial, adv_extra=config.loss.adv_extra,
        latent_in_d=config.loss.latent_in_d, gp_weight=config.loss.gp_weight,
        n_critic=config.loss.n_critic,
        hole_weight=config.loss.hole_weight, soft_labels=config.train.soft_labels,
        label_flip_prob=config.train.label_flip_prob,
        d_input_noise_std=config.train.d_input_noise_std,
        d_reinit_threshold=config.train.d_reinit_threshold, mask_kind=config.mask.kind,
        mask_size=config.mask.size, mask_cells=config.mask.cells, mask_fill=config.mask.fill,
        isize=config.model.isize, score=config.eval.score, score_lambda=config.eval.score_lambda,
        debug_nan_at_step=config.debug_nan_at_step, loss_limit=config.train.loss_limit)


def _apply_g(components: Components, params, stats, x, train: bool, rng=None,
             stochastic: bool | None = None):
  """Runs G; returns (outputs dict, new batch_stats)."""
  variables = {'params': params, 'batch_stats': stats}
  rngs = {'dropout': rng} if rng is not None else None
  if train:
    out, mutated = components.generator.apply(variables, x, train=True, rngs=rngs,
                                              mutable=['batch_stats'])
    return out, mutated.get('batch_stats', {})
  out = components.generator.apply(variables, x, train=False, stochastic=stochastic, rngs=rngs)
  return out, stats


def _apply_d(components: Components, params, stats, x, train: bool, update_stats: bool = True):
  """Runs D; returns ((logits, features), new batch_stats)."""
  variables = {'params': params, 'batch_stats': stats}
  if train:
    out, mutated = components.discriminator.apply(variables, x, train=True,
                                                  update_stats=update_stats,
                                                  mutable=['batch_stats'])
    return out, mutated.get('batch_stats', {})
  return components.discriminator.apply(variables, x, train=False), stats


def reconstruct_for_training(components: Components, hp: StepConfig, g_params, g_stats,
                             x: jax.Array, rng: jax.Array):
  """Generator forward in train mode, with the method's masking.

  Returns (outputs dict with 'recon' [and 'z', 'z_hat'], new G stats, per-pixel L1 weight or None).
  """
  mask_rng, drop_rng = jax.random.split(rng)
  if hp.mask_kind == 'none':
    out, g_stats = _apply_g(components, g_params, g_stats, x, True, drop_rng)
    return out, g_stats, None
  if hp.mask_kind == 'grid':
    # Grid-mask proposal: reconstruct both complementary masked copies in one G call and paste
    # each hole region into one full reconstruction; every loss term then sees that combination.
    grid = masks.grid_masks(hp.isize, hp.mask_cells)
    new_stats = {}

    def reconstruct(images):
      out, new_stats['g'] = _apply_g(components, g_params, g_stats, images, True, drop_rng)
      return out['recon']

    recon = masks.combine_inpaintings(reconstruct, x, grid, hp.mask_fill)
    return {'recon': recon}, new_stats['g'], None
  # square / stain: one random hole per image; the generator completes it from context.
  hole = masks.train_masks(hp.mask_kind, mask_rng, x.shape[0], hp.isize, hp.mask_size,
                           hp.mask_cells)
  out, g_stats = _apply_g(components, g_params, g_stats,
                          masks.apply_mask(x, hole, hp.mask_fill), True, drop_rng)
  weight = 1.0 + (hp.hole_weight - 1.0) * hole
  return out, g_stats, weight


def _d_targets(hp: StepConfig, rng: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
  """Discriminator targets: hard 1/0, optionally soft (U[0.9,1] / U[0,0.1]) and randomly flipped."""
  r_soft, f_soft, r_flip, f_flip = jax.random.split(rng, 4)
  if hp.soft_labels:
    real = losses.soft_labels(r_soft, (n,), real=True)
    fake = losses.soft_labels(f_soft, (n,), real=False)
  else:
    real, fake = jnp.ones((n,)), jnp.zeros((n,))
  if hp.label_flip_prob > 0:
    real = losses.flip_labels(r_flip, real, hp.label_flip_prob)
    fake = losses.flip_labels(f_flip, fake, hp.label_flip_prob)
  return real, fake


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(l)) for l in jax.tree.leaves(tree)]))


def _d_inputs(hp: StepConfig, rng: jax.Array, real: jax.Array, fake: jax.Array):
  """D's inputs for training: instance noise on both passes when train.d_input_noise_std > 0."""
  if hp.d_input_noise_std <= 0:
    return real, fake
  nr, nf = jax.random.split(rng)
  return (real + hp.d_input_noise_std * jax.random.normal(nr, real.shape),
          fake + hp.d_input_noise_std * jax.random.normal(nf, fake.shape))


def _wgan_critic_loss(components: Components, hp: StepConfig, d_params, d_stats, real_scores,
                      fake_scores, real: jax.Array, fake: jax.Array, gp_rng: jax.Array) -> jax.Array:
  """WGAN-GP critic loss: E[D(x̂)] - E[D(x)] + gp_weight * gradient penalty (D's stats frozen)."""
  critic = lambda images: _apply_d(components, d_params, d_stats, images, True,
                                   update_stats=False)[0][0]
  return (losses.wgan_critic(real_scores, fake_scores)
          + hp.gp_weight * losses.gradient_penalty(critic, real, fake, gp_rng))


def _critic_updates(components: Components, hp: StepConfig, state: GanState, x: jax.Array,
                    rng: jax.Array) -> tuple[GanState, jax.Array]:
  """`hp.n_critic - 1` WGAN-GP critic-only updates on this batch; returns (state, all finite).

  They run before the joint step, against G's current reconstruction held fixed (G in train mode,
  its statistics not kept), each with its own gradient-penalty interpolates. The joint step then
  makes the n_critic-th critic update together with the generator's.
  """
  recon_rng, loop_rng = jax.random.split(rng)
  out, _, _ = reconstruct_for_training(components, hp, state.g_params, state.g_stats, x, recon_rng)
  fake = jax.lax.stop_gradient(out['recon'])

  def critic_loss(d_params, d_stats, step_rng):
    noise_rng, gp_rng = jax.random.split(step_rng)
    real_in, fake_in = _d_inputs(hp, noise_rng, x, fake)
    (real_scores, _), new_stats = _apply_d(components, d_params, d_stats, real_in, True)
    (fake_scores, _), new_stats = _apply_d(components, d_params, new_stats, fake_in, True)
    loss = _wgan_critic_loss(components, hp, d_params, d_stats, real_scores, fake_scores, x, fake,
                             gp_rng)
    return loss, new_stats

  def update(i, carry):
    d_params, d_opt, d_stats, finite = carry
    (loss, d_stats_new), grads = jax.value_and_grad(critic_loss, has_aux=True)(
        d_params, d_stats, jax.random.fold_in(loop_rng, i))
    updates, d_opt = components.d_tx.update(grads, d_opt, d_params)
    return (optax.apply_updates(d_params, updates), d_opt, d_stats_new,
            finite & _all_finite((loss, grads)))

  d_params, d_opt, d_stats, finite = jax.lax.fori_loop(
      0, hp.n_critic - 1, update, (state.d_params, state.d_opt, state.d_stats, jnp.asarray(True)))
  return state.replace(d_params=d_params, d_opt=d_opt, d_stats=d_stats), finite


def train_step(state: GanState, batch: dict[str, jax.Array], rng: jax.Array, *,
               components: Components, hp: StepConfig) -> tuple[GanState, dict[str, jax.Array]]:
  """One G update and one D update from a shared forward pass; returns (new state, metrics).

  Under WGAN-GP with `loss.n_critic` > 1 the critic first takes n_critic - 1 updates of its own.

  A step whose losses or gradients are not finite leaves the state unchanged (and is counted in
  `skipped_steps`), so a single bad batch never poisons the parameters; the loop decides whether to
  stop or continue from the metrics it already fetches for logging.
  """
  x = batch['image']
  n = x.shape[0]
  g_rng, noise_rng, label_rng, gp_rng, reinit_rng = jax.random.split(rng, 5)
  real_t, fake_t = _d_targets(hp, label_rng, n)
  original, critic_finite = state, jnp.asarray(True)
  if hp.n_critic > 1:  # WGAN-GP: the critic takes extra steps before the joint one
    state, critic_finite = _critic_updates(components, hp, state, x, jax.random.fold_in(rng, 1))

  def forward(g_params, d_params):
    out, g_stats, weight = reconstruct_for_training(components, hp, g_params, state.g_stats, x, g_rng)
    recon = out['recon']
    d_real_in, d_fake_in = _d_inputs(hp, noise_rng, x, recon)
    (real_logits, real_feat), d_stats = _apply_d(components, d_params, state.d_stats, d_real_in, True)
    (fake_logits, fake_feat), d_stats = _apply_d(components, d_params, d_stats, d_fake_in, True)

    # ---- Generator loss (eq. 3.4; SkipGANomaly: adversarial BCE + L1 + latent-feature L2). ----
    if hp.adversarial == 'feature_matching':
      g_adv = losses.feature_matching(real_feat, fake_feat)
    elif hp.adversarial == 'bce':
      g_adv = losses.generator_bce(fake_logits)
    else:  # wgan_gp
      g_adv = losses.wgan_generator(fake_logits)
    if hp.adv_extra:
      g_adv = g_adv + losses.generator_bce(fake_logits)
    g_con = losses.reconstruction_l1(x, recon, weight)
    if hp.generator == 'ede':
      g_lat = losses.latent_l2(out['z'], out['z_hat'])
    else:  # U-Net has no latent code: the latent term compares D's latent features (REFERENCE §4)
      g_lat = losses.feature_matching(real_feat, fake_feat)
    g_loss = hp.w_adv * g_adv + hp.w_con * g_con + hp.w_enc * g_lat

    # ---- Discriminator loss (eq. 3.5, or the WGAN-GP critic). ----
    if hp.adversarial == 'wgan_gp':
      d_loss = _wgan_critic_loss(components, hp, d_params, state.d_stats, real_logits, fake_logits,
                                 x, jax.lax.stop_gradient(recon), gp_rng)
    else:
      d_loss = losses.discriminator_bce(real_logits, fake_logits, real_t, fake_t)
    if hp.latent_in_d:
      d_loss = d_loss + hp.w_enc * losses.feature_matching(real_feat, fake_feat)
    if hp.debug_nan_at_step >= 0:
      # Steps are counted from 1 (the step number after the update), as in the loop and logs.
      g_loss = g_loss + jnp.where(state.step + 1 == hp.debug_nan_at_step, jnp.nan, 0.0)

    metrics = {
        'g_loss': g_loss, 'g_adv': g_adv, 'g_con': g_con, 'g_lat': g_lat, 'd_loss': d_loss,
        'd_real': jnp.mean(jax.nn.sigmoid(real_logits)),
        'd_fake': jnp.mean(jax.nn.sigmoid(fake_logits)),
    }
    return (g_loss, d_loss), (g_stats, d_stats, metrics)

  (g_loss, d_loss), pullback, (g_stats, d_stats, metrics) = jax.vjp(
      forward, state.g_params, state.d_params, has_aux=True)
  one, zero = jnp.ones_like(g_loss), jnp.zeros_like(g_loss)
  g_grads = pullback((one, zero))[0]
  d_grads = pullback((zero, one))[1]

  g_updates, g_opt = components.g_tx.update(g_grads, state.g_opt, state.g_params)
  d_updates, d_opt = components.d_tx.update(d_grads, state.d_opt, state.d_params)
  g_params = optax.apply_updates(state.g_params, g_updates)
  d_params = optax.apply_updates(state.d_params, d_updates)

  reinit = jnp.asarray(False)
  if hp.d_reinit_threshold > 0:
    # Reference rule: a discriminator that wins outright (loss below the threshold) is restarted.
    reinit = d_loss < hp.d_reinit_threshold

    def fresh_d(_):
      params, stats = init_discriminator(components, reinit_rng, (1,) + x.shape[1:])
      return params, stats, components.d_tx.init(params)

    d_params, d_stats, d_opt = jax.lax.cond(reinit, fresh_d, lambda _: (d_params, d_stats, d_opt),
                                            None)

  finite = _all_finite((g_loss, d_loss, g_grads, d_grads)) & critic_finite
  if hp.loss_limit > 0:  # an exploding loss is divergence too, even while still finite
    finite &= (jnp.abs(g_loss) < hp.loss_limit) & (jnp.abs(d_loss) < hp.loss_limit)
  candidate = state.replace(
      step=state.step + 1, g_params=g_params, g_stats=g_stats, g_opt=g_opt, d_params=d_params,
      d_stats=d_stats, d_opt=d_opt, d_reinits=state.d_reinits + reinit.astype(jnp.int32))
  skipped = original.replace(step=state.step + 1, skipped_steps=state.skipped_steps + 1)
  new_state = jax.tree.map(lambda a, b: jnp.where(finite, a, b), candidate, skipped)
  metrics = dict(metrics, nonfinite=1.0 - finite.astype(jnp.float32),
                 d_reinit=reinit.astype(jnp.float32))
  return new_state, metrics


def reconstruct_for_eval(components: Components, hp: StepConfig, state: GanState, x: jax.Array,
                         rng: jax.Array | None = None, stochastic: bool = False) -> dict:
  """Generator forward in eval mode (BatchNorm running statistics).

  Masked methods reconstruct every region from its context: the holes of `masks.eval_masks` tile the
  image, so damage anywhere is inpainted rather than copied through (the study's stated limitation).
  `stochastic=True` keeps dropout active for MC-dropout.
  """
  def run(images):
    out, _ = _apply_g(components, state.g_params, state.g_stats, images, False, rng, stochastic)
    return out

  if hp.mask_kind == 'none':
    return run(x)
  tiles = masks.eval_masks(hp.mask_kind, hp.isize, hp.mask_size, hp.mask_cells)
  return {'recon': masks.combine_inpaintings(lambda imgs: run(imgs)['recon'], x, tiles, hp.mask_fill)}


def eval_step(state: GanState, batch: dict[str, jax.Array], *, components: Components,
              hp: StepConfig, with_maps: bool = False) -> dict[str, jax.Array]:
  """Per-image raw anomaly scores (not yet normalised) and reconstruction L1, in eval mode."""
  x = batch['image']
  out = reconstruct_for_eval(components, hp, state, x)
  recon = out['recon']
  result: dict[str, Any] = {'l1': jnp.mean(jnp.abs(x - recon).reshape(x.shape[0], -1), axis=1)}
  if hp.score == 'latent':
    result['score'] = losses.latent_score(out['z'], out['z_hat'])
  elif hp.score in ('reconstruction', 'inpaint'):
    result['score'] = losses.reconstruction_score(x, recon)
  else:  # lambda, eq. 6.1, with D in eval mode
    (_, real_feat), _ = _apply_d(components, state.d_params, state.d_stats, x, False)
    (_, fake_feat), _ = _apply_d(components, state.d_params, state.d_stats, recon, False)
    result['score'] = losses.lambda_score(x, recon, real_feat, fake_feat, hp.score_lambda)
  if with_maps:
    result['recon'] = recon
    result['map'] = losses.pixel_map(x, recon)
  return result
