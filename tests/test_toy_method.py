"""A new method from this file alone: a toy adversarial objective and a toy score, registered here.

This is the path docs/extending.md#adding-a-method walks: register the entries, name them in the config,
and validation, the train step and the eval step pick them up without an edit to the package.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ganomaly_jax import losses
from ganomaly_jax import scores as scores_lib
from ganomaly_jax import state as state_lib
from ganomaly_jax.config import arguments, checks
from ganomaly_jax.data import sources
from ganomaly_jax.experiments import sweep
from helpers import tiny

TRACED = []  # names of the toy functions the jitted steps traced (Python runs once per trace)


def hinge_discriminator(d: losses.AdversarialInputs, step_config) -> jax.Array:
  """Hinge loss (Lim & Ye 2017): mean(relu(1 - D(x))) + mean(relu(1 + D(x̂)))."""
  TRACED.append('hinge_discriminator')
  return jnp.mean(jax.nn.relu(1.0 - d.real_logits)) + jnp.mean(jax.nn.relu(1.0 + d.fake_logits))


TOY_ADVERSARIAL = losses.Adversarial(
    generator_loss=lambda d, _: -jnp.mean(d.fake_logits),
    discriminator_loss=hinge_discriminator,
    uses_labels=False,
    d_loss_bounded=True,
)


def mean_abs_score(s: scores_lib.ScoreInputs, step_config) -> jax.Array:
  """Mean absolute reconstruction error per image."""
  TRACED.append('mean_abs_score')
  return jnp.mean(jnp.abs(s.x - s.outputs['recon']).reshape(s.x.shape[0], -1), axis=1)


TOY_SCORE = scores_lib.Score(mean_abs_score)


@pytest.fixture
def toy_method(monkeypatch):
  """Registers the two entries for one test (monkeypatch removes them afterwards)."""
  monkeypatch.setitem(losses.ADVERSARIAL, 'toy_hinge', TOY_ADVERSARIAL)
  monkeypatch.setitem(scores_lib.SCORES, 'toy_l1', TOY_SCORE)


def test_unregistered_names_are_refused(repo_root):
  config = arguments.load_config(os.path.join(repo_root, 'configs/ganomaly.py:quick'))
  config = sweep.apply_overrides(config, {'loss.adversarial': 'toy_hinge'})
  with pytest.raises(checks.ConfigError, match="loss.adversarial='toy_hinge' is not one of"):
    checks.validate_config(config)


def test_toy_adversarial_and_score_train_two_steps_and_evaluate(
    toy_method, tiny_config, build_programs
):
  config = tiny_config(**{'loss.adversarial': 'toy_hinge', 'eval.score': 'toy_l1'})
  checks.validate_config(config)
  TRACED.clear()
  # The entry's facts reach validation: it declared no labels, so soft labels are refused.
  with pytest.raises(checks.ConfigError, match='do not apply to loss.adversarial=toy_hinge'):
    checks.validate_config(
        sweep.apply_overrides(config.copy_and_resolve_references(), {'train.soft_labels': True})
    )

  progs = build_programs(config)
  # The state as train.py makes it: its step outputs then trace like it, and the step traces once.
  state = progs.init(jax.random.key(0))
  shape = state_lib.image_shape(config, config.train.batch_size)
  images = np.random.default_rng(0).uniform(-1, 1, shape).astype(np.float32)
  metrics = []
  for i in range(2):
    state, m = progs.train_step(state, {'image': images}, jax.random.key(i))
    metrics.append(jax.device_get(m))
  assert int(state.step) == 2 and int(state.skipped_steps) == 0
  assert TRACED == ['hinge_discriminator']  # the step called the registered D loss
  for m in metrics:
    assert all(np.isfinite(v) for v in m.values())
    assert m['d_loss'] >= 0  # a hinge loss
  out = progs.eval_maps(state, {'image': images})
  assert TRACED == ['hinge_discriminator', 'mean_abs_score']
  # The toy score is exactly the per-image mean |x - x̂| of the eval reconstruction.
  want = np.mean(np.abs(images - np.asarray(out['recon'])).reshape(len(images), -1), axis=1)
  np.testing.assert_allclose(out['score'], want, rtol=1e-6)
  np.testing.assert_allclose(out['score'], out['l1'], rtol=1e-6)


# ---- A dataset and a method config from outside the package. ----

OUTSIDE_CONFIG = """
from ganomaly_jax.config import arguments, schema


def get_config(arg=None):
  args = arguments.parse_arg(arg)
  config = schema.base_config()
  config.method = 'stripes_gan'  # a name of its own: not one of the shipped configs
  config.dataset.name = 'stripes'
  config.dataset.abnormal = '1'  # the class index, as a --config.dataset.abnormal string
  return arguments.finalize(config, args)
"""


def _stripes(config, arg):
  """Horizontal stripes are normal, vertical ones abnormal (class 1); 16x16, one channel."""
  del arg
  rng = np.random.default_rng(config.seed)
  n, size = 96, config.model.isize
  labels = np.arange(n) % 2
  phase = rng.integers(0, 4, n)
  rows = (np.arange(size)[None, :] + phase[:, None]) % 4 < 2  # [n, size]
  stripes = np.where(rows[:, :, None], 220, 30).astype(np.uint8).repeat(size, axis=2)
  images = np.where(labels[:, None, None] == 1, stripes.transpose(0, 2, 1), stripes)[..., None]
  half = n // 2
  return sources.one_class_splits(
      'stripes',
      images[:half],
      labels[:half],
      images[half:],
      labels[half:],
      abnormal=1,
      seed=config.seed,
      pool_normals=False,
      val_fraction=0.2,
  )


@pytest.mark.slow
def test_a_dataset_and_a_method_config_from_outside_the_package_train(tmp_path, monkeypatch):
  from ganomaly_jax import train

  monkeypatch.setitem(
      sources.DATASETS,
      'stripes',
      sources.Dataset(load=_stripes, channels=lambda arg: 1, small=True),
  )
  config_file = tmp_path / 'stripes_gan.py'
  config_file.write_text(OUTSIDE_CONFIG)
  config = arguments.load_config(f'{config_file}:{tiny.TINY_ARG}')
  # image_every=0 is AUTO again: finishing the config (as an entry point does) fills it in.
  config = checks.finished(
      sweep.apply_overrides(config, {'train.num_steps': 2, 'train.image_every': 0})
  )
  assert (config.method, config.model.channels, config.model.isize) == ('stripes_gan', 1, 16)
  results = train.train_and_evaluate(config, str(tmp_path / 'run'))
  assert results['steps'] == 2 and results['method'] == 'stripes_gan'
  assert results['dataset'] == 'stripes' and 0.0 <= results['image_auroc'] <= 1.0


def test_an_unregistered_dataset_is_one_line_naming_the_registered_ones(repo_root):
  config = arguments.load_config(os.path.join(repo_root, 'configs/ganomaly.py:quick,channels=1'))
  config = sweep.apply_overrides(config, {'dataset.name': 'stripes'})
  with pytest.raises(
      checks.ConfigError,
      match="dataset.name='stripes' is not a dataset: "
      'use digits, mnist, fashion_mnist, cifar10, npz:PATH, folder:PATH',
  ):
    checks.validate_config(config)
