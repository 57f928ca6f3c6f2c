"""The train and eval steps, one case per registered adversarial objective and per generator.

Tiny networks (ngf = ndf = 4, batch 8, 16x16) so each case compiles in seconds; every case checks that
the metrics are finite, that both networks moved, and that the eval step scores every image.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ganomaly_jax import losses, models, state as state_lib
from ganomaly_jax.evaluation import pixel_metrics
from helpers import tiny


def run_step(config, seed: int = 0):
  """(state before, state after one train step, metrics, eval-step result on the batch), with the
  run's programs."""
  progs = tiny.build_programs(config)
  state = state_lib.create_state(config, progs.components, jax.random.key(0))
  before = jax.tree.map(jnp.copy, state)  # the train step donates `state`
  shape = state_lib.image_shape(config, config.train.batch_size)
  batch = {'image': np.random.default_rng(seed).uniform(-1, 1, shape).astype(np.float32)}
  new_state, metrics = progs.train_step(state, batch, jax.random.key(1))
  scores = progs.eval_step(new_state, batch)
  return before, new_state, jax.device_get(metrics), jax.device_get(scores)


def max_change(a, b) -> float:
  return max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@functools.lru_cache(maxsize=None)
def run_method(method: str, *overrides: tuple[str, object]):
  """`run_step` of a method config with overrides, cached: several tests share one compile."""
  return run_step(tiny.tiny_config(method, **dict(overrides)))


def check_step(method: str, **overrides) -> dict:
  config = tiny.tiny_config(method, **overrides)
  plain = tiny.tiny_config(method)
  # Overrides the method already has are dropped, so equal configs share one cached step.
  changed = {k: v for k, v in overrides.items() if plain[k.split('.')[0]][k.split('.')[1]] != v}
  before, after, metrics, scores = run_method(method, *sorted(changed.items()))
  assert metrics['nonfinite'] == 0.0
  assert all(np.isfinite(v) for v in metrics.values()), metrics
  assert max_change(before.g_params, after.g_params) > 0
  if models.DISCRIMINATORS[config.model.discriminator].present:
    assert max_change(before.d_params, after.d_params) > 0
  else:  # a plain autoencoder: no discriminator, nothing adversarial reported
    assert not jax.tree.leaves(after.d_params) and 'd_loss' not in metrics
  assert int(after.step) == 1
  n = config.train.batch_size
  assert scores['score'].shape == (n,) and np.all(np.isfinite(scores['score']))
  assert np.ptp(scores['score']) > 0  # a score per image, not one value broadcast
  return metrics


# SkipGANomaly's U-Net keeps its own method; GANomaly's E-D-E generator is tried with every objective
# (in the fast loop only the default, BCE: each objective compiles a step of its own).
_FULL_SUITE_OBJECTIVES = ('feature_matching', 'wgan_gp', 'none')


@pytest.mark.parametrize(
    'adversarial',
    [
        pytest.param(a, marks=pytest.mark.slow) if a in _FULL_SUITE_OBJECTIVES else a
        for a in losses.ADVERSARIAL
    ],
)
def test_step_per_adversarial_objective(adversarial):
  overrides = {'loss.adversarial': adversarial}
  if not losses.ADVERSARIAL[adversarial].needs_discriminator:  # 'none': a plain autoencoder
    overrides['model.discriminator'] = 'none'
  metrics = check_step('ganomaly', **overrides)
  if adversarial == 'feature_matching':  # eq. 3.2: a mean of squares
    assert metrics['g_adv'] > 0


# RIAD's step (its five-level U-Net and the SSIM / MSGMS gradients) is the costliest program to
# compile here, several times any other method's: its cases run in the full suite only.
RIAD_SLOW = pytest.mark.slow


# The U-Net's step is in the fast loop through the grid mask's (test_step_per_mask_kind); its own
# case, with RIAD's, runs in the full suite.
@pytest.mark.parametrize(
    'generator',
    [
        pytest.param(g, marks=pytest.mark.slow) if g in ('unet', 'riad_unet') else g
        for g in models.GENERATORS
    ],
)
def test_step_per_generator(generator):
  method = {'ede': 'ganomaly', 'unet': 'skip_ganomaly', 'riad_unet': 'riad'}[generator]
  metrics = check_step(method, **{'model.generator': generator})
  if generator == 'riad_unet':  # no latent code
    assert metrics['g_lat'] == 0
  else:  # the generator's latent term (eq. 3.4, or D's latent features)
    assert metrics['g_lat'] > 0


# Every mask kind, and the grid's partitions and draws (the grid mask's alternating grid, RIAD's
# random sets drawn per batch, and the other two combinations: each compiles a step of its own, so
# all but the grid mask run in the full suite only).
@pytest.mark.parametrize(
    'method, overrides',
    [
        pytest.param('masked', {}, marks=pytest.mark.slow),
        ('grid_mask', {}),
        pytest.param('riad', {}, marks=RIAD_SLOW),
        pytest.param(
            'grid_mask', {'mask.partition': 'random', 'mask.cells': (4, 8)}, marks=pytest.mark.slow
        ),
        pytest.param(
            'riad',
            {'mask.partition': 'alternating', 'mask.draw': 'image', 'mask.cells': (4, 8)},
            marks=pytest.mark.slow,
        ),
    ],
)
def test_step_per_mask_kind(method, overrides):
  check_step(method, **overrides)


# ---- SkipGANomaly's D loss, eq. 3.8. ----


@pytest.mark.parametrize('method', ['skip_ganomaly', 'masked', 'grid_mask'])
def test_skip_ganomaly_family_defaults_to_the_latent_term_in_d(method, tiny_config):
  assert tiny_config(method).loss.latent_in_d is True


@pytest.mark.slow  # a second SkipGANomaly step to compile (no latent term in D)
def test_skip_ganomaly_d_loss_includes_the_latent_term():
  # Same state, batch and keys: the default D loss is the ablation's plus w_enc * the latent term
  # mean((f(x) - f(x̂))²), which the U-Net's G loss reports as g_lat.
  _, _, default, _ = run_method('skip_ganomaly')
  _, _, ablation, _ = run_method('skip_ganomaly', ('loss.latent_in_d', False))
  assert default['g_lat'] > 0
  np.testing.assert_allclose(default['g_lat'], ablation['g_lat'], rtol=1e-6)
  np.testing.assert_allclose(
      default['d_loss'] - ablation['d_loss'], 1.0 * default['g_lat'], rtol=1e-4, atol=1e-7
  )


# ---- RIAD's structural terms and maps (docs/methods.md#riad): switches of every method. ----


@pytest.mark.slow  # two U-Net steps to compile
def test_structural_terms_add_to_the_generator_loss():
  # The weights do not change the forward pass, so the G loss differs by exactly the weighted terms.
  _, _, plain, _ = run_method('skip_ganomaly')
  _, _, riad, _ = run_method('skip_ganomaly', ('loss.w_msgms', 3.0), ('loss.w_ssim', 2.0))
  assert 'g_ssim' not in plain and 0 < riad['g_ssim'] < 2 and 0 < riad['g_msgms'] < 1
  np.testing.assert_allclose(
      riad['g_loss'] - plain['g_loss'], 2.0 * riad['g_ssim'] + 3.0 * riad['g_msgms'], rtol=1e-4
  )


@RIAD_SLOW
def test_riad_loss_is_l2_ssim_msgms_at_one_to_one_to_one():
  # configs/riad.py: 0.25 x mean (x - x̂)² on [-1, 1] images is RIAD's L2 on [0, 1] intensities,
  # plus 1 x (1 - SSIM) and 1 x the MSGMS loss; no adversarial and no latent term.
  _, _, metrics, _ = run_method('riad')
  assert set(metrics) >= {'g_con', 'g_ssim', 'g_msgms'} and 'g_adv' not in metrics
  np.testing.assert_allclose(
      metrics['g_loss'], 0.25 * metrics['g_con'] + metrics['g_ssim'] + metrics['g_msgms'], rtol=1e-5
  )


@pytest.mark.parametrize('method', ['grid_mask', pytest.param('riad', marks=RIAD_SLOW)])
def test_grid_eval_is_deterministic_and_scores_its_map(method, tiny_config, build_programs):
  config = tiny_config(method)
  progs = build_programs(config)
  state = state_lib.create_state(config, progs.components, jax.random.key(0))
  shape = state_lib.image_shape(config, config.train.batch_size)
  batch = {'image': np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)}
  evaluate = progs.eval_maps
  first, second = jax.device_get(evaluate(state, batch)), jax.device_get(evaluate(state, batch))
  np.testing.assert_array_equal(first['map'], second['map'])  # fixed partitions at evaluation
  assert first['map'].shape == shape[:3]
  if method == 'riad':
    # configs/riad.py: eval.score=map_max of the msgms map (smoothed with eval.smooth_sigma: 0).
    smoothed = pixel_metrics.smooth_maps(first['map'], config.eval.smooth_sigma)
    np.testing.assert_allclose(
        first['score'], smoothed.reshape(shape[0], -1).max(axis=1), rtol=1e-4
    )
  else:
    # configs/grid_mask.py: eq. 6.1 on the assembled reconstruction, |x - x̂| map.
    np.testing.assert_allclose(
        first['map'], np.abs(batch['image'] - first['recon']).mean(-1), atol=1e-6
    )
