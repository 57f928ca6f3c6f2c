"""The train state: its creation, the two optimizers (TTUR rates) and what one step advances."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ganomaly_jax import state as state_lib


def _adam_count(opt_state) -> int:
  is_adam = lambda x: isinstance(x, optax.ScaleByAdamState)  # noqa: E731
  counts = [s.count for s in jax.tree.leaves(opt_state, is_leaf=is_adam) if is_adam(s)]
  assert counts, 'no Adam state found'
  return int(counts[0])


def test_ttur_rates_reach_each_optimizer(tiny_config):
  # Adam's first update is lr * sign(gradient) (the bias-corrected moments cancel): its size is
  # the rate.
  components = state_lib.build_components(tiny_config(**{'optim.g_lr': 1e-3, 'optim.d_lr': 4e-3}))
  params = {'w': jnp.ones((3,))}
  grads = {'w': jnp.asarray([1.0, -2.0, 0.5])}
  for tx, lr in ((components.g_tx, 1e-3), (components.d_tx, 4e-3)):
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(np.abs(updates['w']), lr, rtol=1e-3)


def test_new_state_starts_at_zero_and_matches_its_abstract_shape(tiny_config):
  config = tiny_config()
  components = state_lib.build_components(config)
  state = state_lib.create_state(config, components, jax.random.key(0))
  assert int(state.step) == int(state.d_reinits) == int(state.skipped_steps) == 0
  assert _adam_count(state.g_opt) == _adam_count(state.d_opt) == 0
  abstract = state_lib.abstract_state(config, components)
  assert jax.tree.structure(abstract) == jax.tree.structure(state)
  assert [(a.shape, a.dtype) for a in jax.tree.leaves(abstract)] == [
      (x.shape, x.dtype) for x in jax.tree.leaves(state)
  ]
  # Both networks are initialised (not left at zero).
  assert optax.tree_utils.tree_norm(state.g_params) > 0
  assert optax.tree_utils.tree_norm(state.d_params) > 0


def test_one_step_advances_the_step_and_both_optimizer_counts(tiny_config, build_programs):
  config = tiny_config()
  progs = build_programs(config)
  state = state_lib.create_state(config, progs.components, jax.random.key(0))
  shape = state_lib.image_shape(config, config.train.batch_size)
  batch = {'image': np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)}
  new, _ = progs.train_step(state, batch, jax.random.key(1))
  assert int(new.step) == 1
  assert _adam_count(new.g_opt) == 1 and _adam_count(new.d_opt) == 1
