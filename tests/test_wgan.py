"""WGAN-GP training steps: the critic loss with gradient penalty, and `loss.n_critic` extra updates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ganomaly_jax import state as state_lib
from ganomaly_jax.config import checks
from helpers import tiny


def _config(**overrides):
  return tiny.tiny_config(**{'loss.adversarial': 'wgan_gp', **overrides})


def _one_step(config):
  """(state before, state after one training step of the run's program, metrics)."""
  progs = tiny.build_programs(config)
  state = state_lib.create_state(config, progs.components, jax.random.key(0))
  before = jax.tree.map(jnp.copy, state)  # the train step donates `state`
  shape = state_lib.image_shape(config, config.train.batch_size)
  images = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
  new_state, metrics = progs.train_step(state, {'image': images}, jax.random.key(1))
  return before, new_state, jax.device_get(metrics)


def _adam_count(opt_state) -> int:
  return int(opt_state[0].count)  # optax.adam: (ScaleByAdamState, EmptyState)


def _max_change(a, b) -> float:
  return max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


@pytest.fixture(scope='module')
def single_critic_step():
  return _one_step(_config())


@pytest.mark.slow
def test_wgan_gp_step_updates_critic_and_generator_once(single_critic_step):
  before, after, metrics = single_critic_step
  assert metrics['nonfinite'] == 0.0
  assert all(np.isfinite(v) for v in metrics.values())
  assert _adam_count(after.d_opt) == 1 and _adam_count(after.g_opt) == 1
  assert _max_change(before.d_params, after.d_params) > 0
  assert _max_change(before.g_params, after.g_params) > 0


@pytest.mark.slow
def test_n_critic_makes_extra_critic_updates_only(single_critic_step):
  _, one, _ = single_critic_step
  before, after, metrics = _one_step(_config(**{'loss.n_critic': 3}))
  assert metrics['nonfinite'] == 0.0
  assert _adam_count(after.d_opt) == 3  # two critic-only updates, then the joint one
  assert _adam_count(after.g_opt) == 1
  assert int(after.step) == 1
  # The generator's update saw a critic that had already moved, so both differ from n_critic=1.
  assert _max_change(one.d_params, after.d_params) > 1e-6
  assert _max_change(one.g_params, after.g_params) > 0


@pytest.mark.slow
def test_a_non_finite_step_also_discards_the_extra_critic_updates():
  before, after, metrics = _one_step(_config(**{'loss.n_critic': 3, 'debug_nan_at_step': 1}))
  assert metrics['nonfinite'] == 1.0
  assert int(after.step) == 1 and int(after.skipped_steps) == 1
  assert _adam_count(after.d_opt) == 0
  assert _max_change(before.d_params, after.d_params) == 0.0


@pytest.mark.parametrize(
    'overrides, message',
    [
        ({'loss.n_critic': 0}, 'loss.n_critic=0 must be an integer >= 1'),
        (
            {'loss.n_critic': 5, 'loss.adversarial': 'feature_matching'},
            'loss.n_critic=5: extra critic updates need loss.adversarial=wgan_gp',
        ),
    ],
)
def test_impossible_n_critic_is_refused(overrides, message):
  with pytest.raises(ValueError, match=message):
    checks.validate_config(_config(**overrides))
