"""Config validation: impossible combinations and keys a method ignores stop with one line.

Every config goes through the real path (`arguments.load_config` of a method file, then overrides as
`--config.x=v` applies them); the names and rules come from the registries, so they are checked here
against the registries too.
"""

import os
import subprocess
import sys

import pytest

from ganomaly_jax import losses, masks, models
from ganomaly_jax import scores as scores_lib
from ganomaly_jax.config import arguments, checks, schema
from ganomaly_jax.experiments import sweep
from helpers import REPO, split_import_times


def _config(method: str = 'ganomaly', **overrides):
  config = arguments.load_config(os.path.join(REPO, f'configs/{method}.py:quick'))
  return sweep.apply_overrides(config, overrides)


def _refused(method: str, overrides: dict, message: str) -> None:
  with pytest.raises(checks.ConfigError, match=message) as info:
    checks.validate_config(_config(method, **overrides))
  assert '\n' not in str(info.value)  # one line


@pytest.mark.parametrize('method', schema.METHODS)
def test_every_method_config_is_valid(method):
  checks.validate_config(_config(method))


# ---- Impossible combinations. ----


def test_residual_blocks_with_wgan_gp_are_refused():
  # The critic normalises per sample (LayerNorm) but the residual blocks' BatchNorm would mix the
  # batch, which breaks the gradient penalty.
  _refused(
      'ganomaly',
      {'model.residual_blocks': True, 'loss.adversarial': 'wgan_gp'},
      r'model.residual_blocks: .*BatchNorm.*loss.adversarial=wgan_gp needs layer',
  )
  checks.validate_config(_config('ganomaly', **{'model.residual_blocks': True}))


def test_d_reinit_threshold_with_wgan_gp_is_refused():
  _refused(
      'ganomaly',
      {'train.d_reinit_threshold': 1e-5, 'loss.adversarial': 'wgan_gp'},
      r'train.d_reinit_threshold=1e-05: .*wgan_gp.*re-initialised every step',
  )
  checks.validate_config(_config('ganomaly', **{'train.d_reinit_threshold': 1e-5}))


@pytest.mark.parametrize('method, adversarial', [('ganomaly', 'wgan_gp'), ('skip_ganomaly', 'bce')])
def test_adv_extra_outside_feature_matching_is_refused(method, adversarial):
  _refused(
      method,
      {'loss.adv_extra': True, 'loss.adversarial': adversarial},
      rf'loss.adv_extra=True .*loss.adversarial={adversarial}; use it with feature_matching',
  )


# ---- Keys the chosen method does not read. ----


def test_kernel_size_with_the_unet_is_refused():
  _refused(
      'skip_ganomaly',
      {'model.kernel_size': 5},
      r'model.kernel_size=5 is not used by model.generator=unet',
  )
  checks.validate_config(_config('ganomaly', **{'model.kernel_size': 5}))


def test_classifier_kernel_with_the_dcgan_discriminator_is_refused():
  _refused(
      'ganomaly',
      {'model.classifier_kernel': 3},
      r'model.classifier_kernel=3 is not used by model.discriminator=dcgan',
  )
  checks.validate_config(_config('skip_ganomaly', **{'model.classifier_kernel': 3}))


@pytest.mark.parametrize('key, value', [('mask.size', 0.25), ('loss.hole_weight', 5.0)])
def test_grid_methods_refuse_square_hole_keys(key, value):
  _refused('grid_mask', {key: value}, rf'{key}={value} is not used by mask.kind=grid')
  checks.validate_config(_config('masked', **{key: value}))  # the square mask reads both


def test_mask_fill_without_a_mask_is_refused():
  _refused('skip_ganomaly', {'mask.fill': -1.0}, r'mask.fill=-1.0 is not used by mask.kind=none')
  checks.validate_config(_config('masked', **{'mask.fill': -1.0}))


@pytest.mark.parametrize(
    'key, value',
    [('mask.cells', (8,)), ('mask.sets', 3), ('mask.partition', 'random'), ('mask.draw', 'batch')],
)
def test_grid_keys_with_the_square_mask_are_refused(key, value):
  _refused('masked', {key: value}, rf'{key}=.* is not used by mask.kind=square')
  checks.validate_config(_config('grid_mask', **{key: value}))  # the grid reads them


def test_bad_grid_settings_are_refused():
  _refused('grid_mask', {'mask.cells': (5,)}, r'mask.cells=\(5,\): a cell side of 3 px')
  _refused('grid_mask', {'mask.sets': 1}, r'mask.sets=1')
  _refused('grid_mask', {'mask.partition': 'checkers'}, r"mask.partition='checkers'")
  _refused('grid_mask', {'mask.cells': (2,), 'mask.sets': 4}, r'alternating 2x2 board')


# ---- RIAD: no discriminator (a plain autoencoder). ----


def test_riad_has_no_discriminator():
  config = _config('riad')
  assert (config.model.discriminator, config.loss.adversarial) == ('none', 'none')


@pytest.mark.parametrize(
    'key, value',
    [
        ('loss.w_adv', 0.0),
        ('train.d_input_noise_std', 0.1),
        ('train.d_reinit_threshold', 1e-5),
        ('optim.d_lr', 8e-4),
        ('model.spectral_norm', True),
    ],
)
def test_discriminator_keys_without_a_discriminator_are_refused(key, value):
  _refused('riad', {key: value}, rf'{key}=.* is not used without a discriminator')


def test_gan_objective_and_discriminator_must_agree():
  _refused(
      'riad', {'loss.adversarial': 'bce'}, r'loss.adversarial=bce and model.discriminator=none'
  )
  _refused(
      'skip_ganomaly',
      {'loss.adversarial': 'none'},
      r'loss.adversarial=none and model.discriminator=latent',
  )


def test_no_discriminator_refuses_what_reads_its_features():
  _refused(
      'riad',
      {'eval.score': 'lambda'},
      r'eval.score=lambda reads discriminator features.*model.discriminator=none',
  )
  _refused(
      'skip_ganomaly',
      {'model.discriminator': 'none', 'loss.adversarial': 'none', 'loss.latent_in_d': False},
      r'loss.w_enc=1.0: the latent term of model.generator=unet compares discriminator',
  )
  checks.validate_config(
      _config(
          'skip_ganomaly',
          **{
              'model.discriminator': 'none',
              'loss.adversarial': 'none',
              'loss.latent_in_d': False,
              'loss.w_enc': 0.0,
              'eval.score': 'reconstruction',
          },
      )
  )


def test_riad_unet_refuses_what_it_does_not_have():
  _refused(
      'riad', {'model.dropout': 0.1}, r'model.dropout=0.1 is not used by model.generator=riad_unet'
  )


def test_reconstruction_term_comes_from_the_registry():
  _refused(
      'riad',
      {'loss.reconstruction': 'l3'},
      'loss.reconstruction=.* is not one of ' + ', '.join(losses.RECONSTRUCTION),
  )
  checks.validate_config(_config('skip_ganomaly', **{'loss.reconstruction': 'l2'}))


# ---- Structural losses and maps are switches of every reconstruction method. ----


@pytest.mark.parametrize('method', schema.METHODS)
def test_structural_losses_and_maps_fit_every_method(method):
  checks.validate_config(
      _config(
          method,
          **{'loss.w_ssim': 1.0, 'loss.w_msgms': 1.0, 'eval.map': 'msgms', 'eval.score': 'map_max'},
      )
  )


def test_map_options_come_from_the_registries():
  _refused(
      'skip_ganomaly', {'eval.map': 'l2'}, 'eval.map=.* is not one of ' + ', '.join(losses.MAPS)
  )
  _refused('skip_ganomaly', {'loss.w_ssim': -1.0}, r'loss.w_ssim=-1.0 must be >= 0')


def test_topk_fraction_only_with_the_topk_score():
  _refused(
      'riad',
      {'eval.topk_fraction': 0.2},
      r'eval.topk_fraction=0.2 is not used by eval.score=map_max',
  )
  checks.validate_config(_config('riad', **{'eval.score': 'map_topk', 'eval.topk_fraction': 0.2}))
  _refused(
      'riad',
      {'eval.score': 'map_topk', 'eval.topk_fraction': 0.0},
      r'eval.topk_fraction=0.0 must be in \(0, 1\]',
  )


# ---- Allowed values come from the registries. ----


def test_error_messages_list_the_registered_names():
  _refused(
      'ganomaly', {'loss.adversarial': 'hinge'}, 'is not one of ' + ', '.join(losses.ADVERSARIAL)
  )
  _refused('ganomaly', {'eval.score': 'ssim'}, 'is not one of ' + ', '.join(scores_lib.SCORES))
  _refused('ganomaly', {'model.generator': 'vae'}, 'is not one of ' + ', '.join(models.GENERATORS))
  _refused('ganomaly', {'mask.kind': 'circle'}, 'is not one of ' + ', '.join(masks.KINDS))


def test_score_needs_come_from_the_score_and_generator_entries():
  _refused(
      'skip_ganomaly',
      {'eval.score': 'latent'},
      r"eval.score=latent needs the generator outputs \['z', 'z_hat'\].*use one of ede",
  )
  _refused('skip_ganomaly', {'eval.score': 'inpaint'}, r'eval.score=inpaint needs a mask')
  _refused(
      'masked',
      {'model.generator': 'ede', 'eval.score': 'latent'},
      r'eval.score=latent does not apply to masked training',
  )


@pytest.mark.slow  # starts a process
def test_main_refuses_before_compiling_with_one_error_line(tmp_path):
  workdir = tmp_path / 'run'
  result = subprocess.run(
      [
          sys.executable,
          '-m',
          'ganomaly_jax.main',
          '--config=configs/ganomaly.py:quick',
          f'--workdir={workdir}',
          '--config.loss.adversarial=wgan_gp',
          '--config.train.d_reinit_threshold=1e-5',
      ],
      cwd=REPO,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='3', PYTHONPROFILEIMPORTTIME='1'),
      capture_output=True,
      text=True,
      timeout=240,
  )
  imported, stderr = split_import_times(result.stderr)
  assert result.returncode == 1, stderr[-1500:]
  errors = [l for l in stderr.splitlines() if l.startswith('error:')]
  assert len(errors) == 1 and 'train.d_reinit_threshold' in errors[0], stderr[-1500:]
  assert not (workdir / 'checkpoints').exists()  # stopped before training started
  # Nor did it pay for TensorFlow (seconds of import), which only clu's summary writer needs.
  assert 'jax' in imported and 'tensorflow' not in imported


@pytest.mark.parametrize('quantile', [0.0, 1.0, 1.5])
def test_threshold_quantile_outside_the_open_unit_interval_is_refused(quantile):
  # Checked with every other key (so a sweep refuses it before its first run), not after training.
  _refused(
      'ganomaly',
      {'eval.threshold_quantile': quantile},
      rf'eval.threshold_quantile={quantile} must be in \(0, 1\)',
  )
