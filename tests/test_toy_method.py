"""A new method from this file alone: a toy adversarial objective and a toy score, registered here.

This is the path docs/extending.md#adding-a-method walks: register the entries, name them in the config,
and validation, the train step and the eval step pick them up without an edit to the package.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ganomaly_jax import config_lib, losses, state as state_lib, step as step_lib, sweep, validate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


TRACED = []  # names of the toy functions the jitted steps traced (Python runs once per trace)


def hinge_discriminator(d: losses.AdversarialInputs, hp) -> jax.Array:
  """Hinge loss (Lim & Ye 2017): mean(relu(1 - D(x))) + mean(relu(1 + D(x̂)))."""
  TRACED.append('hinge_discriminator')
  return jnp.mean(jax.nn.relu(1.0 - d.real_logits)) + jnp.mean(jax.nn.relu(1.0 + d.fake_logits))


TOY_ADVERSARIAL = losses.Adversarial(
    generator_loss=lambda d, hp: -jnp.mean(d.fake_logits),
    discriminator_loss=hinge_discriminator, uses_labels=False, d_loss_bounded=True)


def mean_abs_score(s: losses.ScoreInputs, hp) -> jax.Array:
  """Mean absolute reconstruction error per image."""
  TRACED.append('mean_abs_score')
  return jnp.mean(jnp.abs(s.x - s.outputs['recon']).reshape(s.x.shape[0], -1), axis=1)


TOY_SCORE = losses.Score(mean_abs_score)


@pytest.fixture
def toy_method(monkeypatch):
  """Registers the two entries for one test (monkeypatch removes them afterwards)."""
  monkeypatch.setitem(losses.ADVERSARIAL, 'toy_hinge', TOY_ADVERSARIAL)
  monkeypatch.setitem(losses.SCORES, 'toy_l1', TOY_SCORE)


def test_unregistered_names_are_refused():
  config = config_lib.load_config(os.path.join(REPO, 'configs/ganomaly.py:quick'))
  config = sweep.apply_overrides(config, {'loss.adversarial': 'toy_hinge'})
  with pytest.raises(validate.ConfigError, match="loss.adversarial='toy_hinge' is not one of"):
    validate.validate_config(config)


def test_toy_adversarial_and_score_train_two_steps_and_evaluate(toy_method):
  config = config_lib.load_config(os.path.join(REPO, 'configs/ganomaly.py:quick,model.ngf=4,'
                                                     'model.ndf=4,batch=8'))
  config = sweep.apply_overrides(config, {'loss.adversarial': 'toy_hinge', 'eval.score': 'toy_l1'})
  validate.validate_config(config)
  TRACED.clear()
  # The entry's facts reach validation: it declared no labels, so soft labels are refused.
  with pytest.raises(validate.ConfigError, match='do not apply to loss.adversarial=toy_hinge'):
    validate.validate_config(sweep.apply_overrides(config.copy_and_resolve_references(),
                                                   {'train.soft_labels': True}))

  components = state_lib.build_components(config)
  hp = step_lib.StepConfig.from_config(config)
  state = state_lib.create_state(config, components, jax.random.key(0))
  shape = state_lib.image_shape(config, config.train.batch_size)
  images = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
  train = jax.jit(functools.partial(step_lib.train_step, components=components, hp=hp))
  metrics = []
  for i in range(2):
    state, m = train(state, {'image': images}, jax.random.key(i))
    metrics.append(jax.device_get(m))
  assert int(state.step) == 2 and int(state.skipped_steps) == 0
  assert TRACED == ['hinge_discriminator']  # the step called the registered D loss
  for m in metrics:
    assert all(np.isfinite(v) for v in m.values())
    assert m['d_loss'] >= 0  # a hinge loss
  out = jax.jit(functools.partial(step_lib.eval_step, components=components, hp=hp,
                                  with_maps=True))(state, {'image': images})
  assert TRACED == ['hinge_discriminator', 'mean_abs_score']
  # The toy score is exactly the per-image mean |x - x̂| of the eval reconstruction.
  want = np.mean(np.abs(images - np.asarray(out['recon'])).reshape(len(images), -1), axis=1)
  np.testing.assert_allclose(out['score'], want, rtol=1e-6)
  np.testing.assert_allclose(out['score'], out['l1'], rtol=1e-6)
