"""The training step and the evaluation step: pure functions of (state, batch, rng).

One step updates G and D from a single forward pass. As in the reference GANomaly code, the
generator's loss and the discriminator's loss both use the discriminator *before* this step's update,
so D(x) and D(x̂) are computed once and shared: we linearise the joint forward with `jax.vjp` and pull
back the G loss to G's parameters and the D loss to D's parameters only (x̂ acts as a constant for D,
exactly like `fake.detach()`; XLA drops the unused cotangents).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

from ganomaly_jax import losses, masks, models
from ganomaly_jax import scores as scores_lib
from ganomaly_jax.config import frozen
from ganomaly_jax.data import normalization
from ganomaly_jax.state import Components, GanState, init_discriminator


def _apply_g(
    components: Components, params, stats, x, train: bool, rng=None, stochastic: bool | None = None
):
  """Runs G; returns (outputs dict, new batch_stats)."""
  variables = {'params': params, 'batch_stats': stats}
  rngs = {'dropout': rng} if rng is not None else None
  if train:
    out, mutated = components.generator.apply(
        variables, x, train=True, rngs=rngs, mutable=['batch_stats']
    )
    return out, mutated.get('batch_stats', {})
  out = components.generator.apply(variables, x, train=False, stochastic=stochastic, rngs=rngs)
  return out, stats


def _apply_d(components: Components, params, stats, x, train: bool, update_stats: bool = True):
  """Runs D; returns ((logits, features), new batch_stats)."""
  variables = {'params': params, 'batch_stats': stats}
  if train:
    out, mutated = components.discriminator.apply(
        variables, x, train=True, update_stats=update_stats, mutable=['batch_stats']
    )
    return out, mutated.get('batch_stats', {})
  return components.discriminator.apply(variables, x, train=False), stats


def reconstruct_for_training(
    components: Components,
    step_config: frozen.StepConfig,
    g_params,
    g_stats,
    x: jax.Array,
    rng: jax.Array,
):
  """Generator forward in train mode, with the method's masking
  (`masks.KINDS[step_config.mask.kind]`).

  Returns (outputs dict with 'recon' [and 'z', 'z_hat'], new G stats, per-pixel L1 weight or None).
  """
  mask_rng, drop_rng = jax.random.split(rng)
  kind, m = masks.KINDS[step_config.mask.kind], step_config.mask
  if kind.train_on_combination:
    # Grid masks (the study's grid, RIAD): K complementary masks per image; all K masked copies go
    # through one G call and each pixel is taken from the copy where it was hidden, so every loss
    # term sees a reconstruction made entirely from context.
    holes = kind.train_holes(mask_rng, x.shape[0], step_config.model.isize, m)
    new_stats = {}

    def reconstruct(images):
      out, new_stats['g'] = _apply_g(components, g_params, g_stats, images, True, drop_rng)
      return out['recon']

    recon = masks.combine_inpaintings(reconstruct, x, holes, m.fill)
    return {'recon': recon}, new_stats['g'], None
  if kind.train_holes is None:  # no masking
    out, g_stats = _apply_g(components, g_params, g_stats, x, True, drop_rng)
    return out, g_stats, None
  # square / stain: one random hole per image; the generator completes it from context.
  hole = kind.train_holes(mask_rng, x.shape[0], step_config.model.isize, m)
  out, g_stats = _apply_g(
      components, g_params, g_stats, masks.apply_mask(x, hole, m.fill), True, drop_rng
  )
  weight = 1.0 + (step_config.loss.hole_weight - 1.0) * hole
  return out, g_stats, weight


def _all_finite(tree) -> jax.Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(l)) for l in jax.tree.leaves(tree)]))


def _adversarial_inputs(
    components: Components,
    d_params,
    d_stats,
    real_out,
    fake_out,
    targets,
    real: jax.Array,
    fake: jax.Array,
    rng: jax.Array,
) -> losses.AdversarialInputs:
  """Packs D's outputs for the registered objective; `critic` is D with its statistics frozen."""
  critic = lambda images: _apply_d(components, d_params, d_stats, images, True, update_stats=False)[
      0
  ][0]
  return losses.AdversarialInputs(
      real_logits=real_out[0],
      fake_logits=fake_out[0],
      real_features=real_out[1],
      fake_features=fake_out[1],
      real_targets=targets[0],
      fake_targets=targets[1],
      real=real,
      fake=fake,
      critic=critic,
      rng=rng,
  )


def _critic_updates(
    components: Components,
    step_config: frozen.StepConfig,
    state: GanState,
    x: jax.Array,
    targets,
    rng: jax.Array,
) -> tuple[GanState, jax.Array]:
  """`step_config.loss.n_critic - 1` D-only updates on this batch (WGAN-GP); returns (state, all
  finite).

  They run before the joint step, against G's current reconstruction held fixed (G in train mode,
  its statistics not kept), each with its own gradient-penalty interpolates. The joint step then
  makes the n_critic-th critic update together with the generator's.
  """
  adversarial = losses.ADVERSARIAL[step_config.loss.adversarial]
  recon_rng, loop_rng = jax.random.split(rng)
  out, _, _ = reconstruct_for_training(
      components, step_config, state.g_params, state.g_stats, x, recon_rng
  )
  fake = jax.lax.stop_gradient(out['recon'])

  def critic_loss(d_params, d_stats, step_rng):
    noise_rng, gp_rng = jax.random.split(step_rng)
    real_in, fake_in = losses.discriminator_inputs(step_config, noise_rng, x, fake)
    real_out, new_stats = _apply_d(components, d_params, d_stats, real_in, True)
    fake_out, new_stats = _apply_d(components, d_params, new_stats, fake_in, True)
    inputs = _adversarial_inputs(
        components, d_params, d_stats, real_out, fake_out, targets, x, fake, gp_rng
    )
    return adversarial.discriminator_loss(inputs, step_config), new_stats

  def update(i, carry):
    d_params, d_opt, d_stats, finite = carry
    (loss, d_stats_new), grads = jax.value_and_grad(critic_loss, has_aux=True)(
        d_params, d_stats, jax.random.fold_in(loop_rng, i)
    )
    updates, d_opt = components.d_tx.update(grads, d_opt, d_params)
    return (
        optax.apply_updates(d_params, updates),
        d_opt,
        d_stats_new,
        finite & _all_finite((loss, grads)),
    )

  d_params, d_opt, d_stats, finite = jax.lax.fori_loop(
      0,
      step_config.loss.n_critic - 1,
      update,
      (state.d_params, state.d_opt, state.d_stats, jnp.asarray(True)),
  )
  return state.replace(d_params=d_params, d_opt=d_opt, d_stats=d_stats), finite


def train_step(
    state: GanState,
    batch: dict[str, jax.Array],
    rng: jax.Array,
    *,
    components: Components,
    step_config: frozen.StepConfig,
) -> tuple[GanState, dict[str, jax.Array]]:
  """One G update and one D update from a shared forward pass; returns (new state, metrics).

  G's loss is eq. 3.1, w_adv L_adv + w_con L_con + w_enc L_enc: L_adv from the adversarial
  objective `losses.ADVERSARIAL[step_config.loss.adversarial]` (eq. 3.2 feature matching, eq. 3.7
  BCE, or WGAN-GP; loss.adv_extra adds eq. 3.6's term), L_con eq. 3.3, L_enc the generator's
  latent term (`models.GENERATORS[...]`: eq. 3.4 for GANomaly, D's latent features for
  SkipGANomaly). D's loss is the objective's (eq. 3.5 / 3.8) plus, with loss.latent_in_d, the
  latent term of eq. 3.8.
  See docs/methods.md#ganomaly and docs/methods.md#skip_ganomaly.

  With `loss.n_critic` > 1 the critic first takes n_critic - 1 updates of its own.

  A step whose losses or gradients are not finite leaves the state unchanged (and is counted in
  `skipped_steps`), so a single bad batch never poisons the parameters; the loop decides whether to
  stop or continue from the metrics it already fetches for logging.
  """
  adversarial = losses.ADVERSARIAL[step_config.loss.adversarial]
  generator = models.GENERATORS[step_config.model.generator]
  w = step_config.loss
  x = normalization.from_tanh(batch['image'], step_config.normalization)
  n = x.shape[0]
  g_rng, noise_rng, label_rng, gp_rng, reinit_rng = jax.random.split(rng, 5)
  targets = losses.discriminator_targets(step_config, label_rng, n)
  original, critic_finite = state, jnp.asarray(True)
  if w.n_critic > 1:  # the critic takes extra steps before the joint one
    state, critic_finite = _critic_updates(
        components, step_config, state, x, targets, jax.random.fold_in(rng, 1)
    )

  def forward(g_params, d_params):
    out, g_stats, weight = reconstruct_for_training(
        components, step_config, g_params, state.g_stats, x, g_rng
    )
    recon = out['recon']
    d_real_in, d_fake_in = losses.discriminator_inputs(step_config, noise_rng, x, recon)
    real_out, d_stats = _apply_d(components, d_params, state.d_stats, d_real_in, True)
    fake_out, d_stats = _apply_d(components, d_params, d_stats, d_fake_in, True)
    (real_logits, real_feat), (fake_logits, fake_feat) = real_out, fake_out
    inputs = _adversarial_inputs(
        components,
        d_params,
        state.d_stats,
        real_out,
        fake_out,
        targets,
        x,
        jax.lax.stop_gradient(recon),
        gp_rng,
    )

    # ---- Generator loss, eq. 3.1. ----
    g_adv = adversarial.generator_loss(inputs, step_config)
    if w.adv_extra:  # eq. 3.6, non-saturating form
      g_adv = g_adv + losses.generator_bce(fake_logits)
    g_con = losses.RECONSTRUCTION[w.reconstruction](x, recon, weight)  # eq. 3.3 (RIAD: L2)
    # RIAD's SSIM / MSGMS terms beside the pixel term (0 and not computed unless switched on).
    g_struct, g_struct_terms = losses.structural_loss(x, recon, w.w_ssim, w.w_msgms)
    g_lat = generator.latent_term(out, real_feat, fake_feat)
    g_loss = w.w_adv * g_adv + w.w_con * g_con + g_struct + w.w_enc * g_lat

    # ---- Discriminator loss (eq. 3.5; SkipGANomaly eq. 3.8 with the latent term). ----
    d_loss = adversarial.discriminator_loss(inputs, step_config)
    if w.latent_in_d:
      d_loss = d_loss + w.w_enc * losses.feature_matching(real_feat, fake_feat)
    if step_config.debug_nan_at_step >= 0:
      # Steps are counted from 1 (the step number after the update), as in the loop and logs.
      g_loss = g_loss + jnp.where(state.step + 1 == step_config.debug_nan_at_step, jnp.nan, 0.0)

    metrics = {'g_loss': g_loss, 'g_con': g_con, 'g_lat': g_lat, **g_struct_terms}
    # Else no D: nothing to report.
    if models.DISCRIMINATORS[step_config.model.discriminator].present:
      metrics.update(
          {
              'g_adv': g_adv,
              'd_loss': d_loss,
              'd_real': jnp.mean(jax.nn.sigmoid(real_logits)),
              'd_fake': jnp.mean(jax.nn.sigmoid(fake_logits)),
          }
      )
    return (g_loss, d_loss), (g_stats, d_stats, metrics)

  (g_loss, d_loss), pullback, (g_stats, d_stats, metrics) = jax.vjp(
      forward, state.g_params, state.d_params, has_aux=True
  )
  one, zero = jnp.ones_like(g_loss), jnp.zeros_like(g_loss)
  g_grads = pullback((one, zero))[0]
  d_grads = pullback((zero, one))[1]

  g_updates, g_opt = components.g_tx.update(g_grads, state.g_opt, state.g_params)
  d_updates, d_opt = components.d_tx.update(d_grads, state.d_opt, state.d_params)
  g_params = optax.apply_updates(state.g_params, g_updates)
  d_params = optax.apply_updates(state.d_params, d_updates)

  reinit = jnp.asarray(False)
  if step_config.train.d_reinit_threshold > 0:
    # Reference rule: a discriminator that wins outright (loss below the threshold) is restarted.
    reinit = d_loss < step_config.train.d_reinit_threshold

    def fresh_d(_):
      params, stats = init_discriminator(components, reinit_rng, (1,) + x.shape[1:])
      return params, stats, components.d_tx.init(params)

    d_params, d_stats, d_opt = jax.lax.cond(
        reinit, fresh_d, lambda _: (d_params, d_stats, d_opt), None
    )

  finite = _all_finite((g_loss, d_loss, g_grads, d_grads)) & critic_finite
  limit = step_config.train.loss_limit
  if limit > 0:  # an exploding loss is divergence too, even while still finite
    finite &= (jnp.abs(g_loss) < limit) & (jnp.abs(d_loss) < limit)
  candidate = state.replace(
      step=state.step + 1,
      g_params=g_params,
      g_stats=g_stats,
      g_opt=g_opt,
      d_params=d_params,
      d_stats=d_stats,
      d_opt=d_opt,
      d_reinits=state.d_reinits + reinit.astype(jnp.int32),
  )
  skipped = original.replace(step=state.step + 1, skipped_steps=state.skipped_steps + 1)
  new_state = jax.tree.map(lambda a, b: jnp.where(finite, a, b), candidate, skipped)
  metrics = dict(
      metrics, nonfinite=1.0 - finite.astype(jnp.float32), d_reinit=reinit.astype(jnp.float32)
  )
  return new_state, metrics


def reconstruct_for_eval(
    components: Components,
    step_config: frozen.StepConfig,
    state: GanState,
    x: jax.Array,
    rng: jax.Array | None = None,
    stochastic: bool = False,
) -> dict:
  """Generator forward in eval mode (BatchNorm running statistics).

  Masked methods reconstruct every region from its context: the holes of each tiling of the mask
  kind's `eval_holes` tile the image, so damage anywhere is inpainted rather than copied through (the
  study's stated limitation, docs/methods.md#masked). With several tilings (the grid mask's cell
  sizes, docs/methods.md#riad) 'recon' is their mean and 'recons' [T, B, H, W, C] holds each,
  so `losses.anomaly_map` can average the per-size maps as RIAD does. `stochastic=True` keeps
  dropout active for MC-dropout.
  """

  def run(images):
    out, _ = _apply_g(components, state.g_params, state.g_stats, images, False, rng, stochastic)
    return out

  kind, m = masks.KINDS[step_config.mask.kind], step_config.mask
  if kind.eval_holes is None:
    return run(x)
  tilings = kind.eval_holes(step_config.model.isize, m)
  recons = masks.combine_tilings(lambda imgs: run(imgs)['recon'], x, tilings, m.fill)
  if recons.shape[0] == 1:
    return {'recon': recons[0]}
  return {'recon': jnp.mean(recons, axis=0), 'recons': recons}


def _eval_networks(components: Components, state: GanState, x: jax.Array) -> dict:
  """D in eval mode (images -> (logits, features)) and G's eval-mode outputs on x itself, each
  traced only where a score or feature calls it."""
  return dict(
      discriminator=lambda images: _apply_d(
          components, state.d_params, state.d_stats, images, False
      )[0],
      plain_outputs=lambda: _apply_g(components, state.g_params, state.g_stats, x, False)[0],
  )


def score_inputs(
    components: Components,
    step_config: frozen.StepConfig,
    state: GanState,
    x: jax.Array,
    banks: dict | None = None,
) -> scores_lib.ScoreInputs:
  """What a registered score sees of a batch: x, the eval-mode reconstruction(s), D in eval mode,
  G on the unmasked images (traced only where a score reads it) and the training normals'
  embeddings `banks` (feature name -> [N, D]) for the scores that compare with them."""
  return scores_lib.ScoreInputs(
      x=x,
      outputs=reconstruct_for_eval(components, step_config, state, x),
      banks=banks,
      **_eval_networks(components, state, x),
  )


def embed(
    state: GanState,
    batch: dict[str, jax.Array],
    *,
    components: Components,
    step_config: frozen.StepConfig,
    feature: str,
) -> jax.Array:
  """The embedding `scores.FEATURES[feature]` of a batch's images, [B, D], in eval mode: what
  evaluation/feature_bank.py collects from the training normals."""
  x = normalization.from_tanh(batch['image'], step_config.normalization)
  inputs = scores_lib.ScoreInputs(x=x, outputs={}, **_eval_networks(components, state, x))
  return scores_lib.FEATURES[feature].fn(inputs)


def reference_scores(
    state: GanState, x: jax.Array, *, components: Components, step_config: frozen.StepConfig
) -> jax.Array:
  """Raw scores as the official GANomaly / Skip-GANomaly test loops compute them: BatchNorm in
  train mode, i.e. normalised with the statistics of this very batch (they never call
  `netg.eval()`), in G and in D alike. The statistics are not kept: the state is not changed.

  The score is the method's (`scores.SCORES[step_config.eval.score]`): GANomaly's mean((z - ẑ)²), and
  Skip-GANomaly's 0.9·mean((x - x̂)²) + 0.1·mean((f(x) - f(x̂))²) as in their code. For the
  reference read-out only (evaluation/reference.py), never for the honest results.
  """
  x = normalization.from_tanh(x, step_config.normalization)
  out, _ = _apply_g(components, state.g_params, state.g_stats, x, True)
  discriminator = lambda images: _apply_d(
      components, state.d_params, state.d_stats, images, True, update_stats=False
  )[0]
  inputs = scores_lib.ScoreInputs(x=x, outputs=out, discriminator=discriminator)
  return scores_lib.SCORES[step_config.eval.score].fn(inputs, step_config)


def _l1(x: jax.Array, recon: jax.Array) -> jax.Array:
  return jnp.mean(jnp.abs(x - recon).reshape(x.shape[0], -1), axis=1)


def eval_step(
    state: GanState,
    batch: dict[str, jax.Array],
    banks: dict | None = None,
    *,
    components: Components,
    step_config: frozen.StepConfig,
    with_maps: bool = False,
) -> dict[str, jax.Array]:
  """Per-image raw anomaly scores (not yet normalised) and reconstruction L1, in eval mode.

  The score is `scores.SCORES[step_config.eval.score]` (eq. 6.1 for SkipGANomaly); D runs in eval
  mode. A score with a `feature` reads that bank of `banks` (evaluation/feature_bank.py); without
  banks (validation during training) such a score is left out.
  With maps, 'map' is the `eval.map` pixel map (`losses.anomaly_map`), not yet smoothed.
  """
  x = normalization.from_tanh(batch['image'], step_config.normalization)
  inputs = score_inputs(components, step_config, state, x, banks)
  recon = inputs.outputs['recon']
  result: dict[str, Any] = {'l1': _l1(x, recon)}
  score = scores_lib.SCORES[step_config.eval.score]
  if score.feature is None or banks is not None:  # during training no bank exists yet: L1 only
    result['score'] = score.fn(inputs, step_config)
  if with_maps:
    result['recon'] = recon
    result['map'] = losses.anomaly_map(
        x, inputs.outputs, step_config.eval.map, step_config.eval.map_filter
    )
  return result


def readout_key(score: str, map_name: str) -> str:
  """`eval_readouts`' output key of the read-out (score, map): 'score/<score>/<map>' for a score
  that reduces the map, 'score/<score>' for one that does not (the same for every map)."""
  return f'score/{score}/{map_name}' if scores_lib.SCORES[score].uses_map else f'score/{score}'


def eval_readouts(
    state: GanState,
    batch: dict[str, jax.Array],
    banks: dict | None = None,
    *,
    components: Components,
    step_config: frozen.StepConfig,
    readouts: tuple[tuple[str, str], ...],
) -> dict[str, jax.Array]:
  """Every read-out (eval.score, eval.map) of `readouts` from one eval-mode reconstruction.

  For eval.readout=auto (evaluation/readout.py): one program instead of one per candidate. Returns
  'l1' and 'recon' as `eval_step`, each read-out's raw score under `readout_key` (a score that does
  not use the map is computed once) and each named map, unsmoothed, under 'map/<map>'. Every other
  eval key (smooth_sigma, score_lambda, topk_fraction) is `step_config`'s.
  """
  x = normalization.from_tanh(batch['image'], step_config.normalization)
  inputs = score_inputs(components, step_config, state, x, banks)
  result: dict[str, Any] = {'l1': _l1(x, inputs.outputs['recon']), 'recon': inputs.outputs['recon']}
  for score, map_name in readouts:
    key = readout_key(score, map_name)
    if key not in result:
      readout_config = step_config.with_eval(score=score, map=map_name)
      result[key] = scores_lib.SCORES[score].fn(inputs, readout_config)
    if f'map/{map_name}' not in result:
      result[f'map/{map_name}'] = losses.anomaly_map(
          x, inputs.outputs, map_name, step_config.eval.map_filter
      )
  return result
