"""Config validation before anything is compiled: one clear line naming the key."""

from __future__ import annotations

import ml_collections

from ganomaly_jax import config_lib, masks

SCORES = ('latent', 'reconstruction', 'lambda', 'inpaint')
ADVERSARIAL = ('feature_matching', 'bce', 'wgan_gp')


class ConfigError(ValueError):
  """An impossible or contradictory config value."""


def _require(ok: bool, message: str) -> None:
  if not ok:
    raise ConfigError(message)


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for values that cannot work, naming the key and what is allowed."""
  m, t, l, e = config.model, config.train, config.loss, config.eval
  _require(config.method in config_lib.METHODS,
           f'method={config.method!r} is not one of {config_lib.METHODS}.')
  _require(config.mode in ('train', 'eval'), f"mode={config.mode!r}: use 'train' or 'eval'.")
  _require(m.isize >= 16 and m.isize % 16 == 0,
           f'model.isize={m.isize} must be a multiple of 16 (16, 32, 64, ..., 256).')
  _require(m.channels in (1, 3), f'model.channels={m.channels} must be 1 or 3.')
  for key in ('ngf', 'ndf', 'latent_dim'):
    _require(m[key] > 0, f'model.{key}={m[key]} must be positive.')
  _require(m.kernel_size in (3, 4, 5, 6), f'model.kernel_size={m.kernel_size} must be 3..6.')
  _require(m.max_channels >= 0, f'model.max_channels={m.max_channels} must be >= 0 (0: no cap).')
  _require(m.generator in ('ede', 'unet'), f"model.generator={m.generator!r}: use 'ede' or 'unet'.")
  _require(m.discriminator in ('dcgan', 'latent'),
           f"model.discriminator={m.discriminator!r}: use 'dcgan' or 'latent'.")
  _require(m.classifier_kernel in (1, 3, 4), f'model.classifier_kernel={m.classifier_kernel} must be 1, 3 or 4.')
  _require(0.0 <= m.dropout < 1.0, f'model.dropout={m.dropout} must be in [0, 1).')
  _require(m.self_attention == 0 or (4 <= m.self_attention <= m.isize // 2
                                     and m.self_attention & (m.self_attention - 1) == 0),
           f'model.self_attention={m.self_attention} must be 0 or a power of two in [4, isize/2].')
  r = config.runtime
  _require(r.dtype in ('float32', 'bfloat16'), f"runtime.dtype={r.dtype!r}: use 'float32' or 'bfloat16'.")
  _require(r.cpu_kernels in ('auto', 'off'), f"runtime.cpu_kernels={r.cpu_kernels!r}: use 'auto' or 'off'.")

  _require(l.adversarial in ADVERSARIAL, f'loss.adversarial={l.adversarial!r} is not one of {ADVERSARIAL}.')
  _require(not (l.latent_in_d and m.discriminator != 'latent'),
           'loss.latent_in_d=True needs a latent discriminator (model.discriminator=latent).')
  _require(not (l.adversarial == 'wgan_gp' and (t.soft_labels or t.label_flip_prob > 0)),
           'train.soft_labels / train.label_flip_prob do not apply to loss.adversarial=wgan_gp.')
  _require(isinstance(l.n_critic, int) and l.n_critic >= 1,
           f'loss.n_critic={l.n_critic} must be an integer >= 1.')
  _require(l.n_critic == 1 or l.adversarial == 'wgan_gp',
           f'loss.n_critic={l.n_critic}: extra critic updates need loss.adversarial=wgan_gp.')
  for key in ('w_adv', 'w_con', 'w_enc', 'gp_weight', 'hole_weight'):
    _require(l[key] >= 0, f'loss.{key}={l[key]} must be >= 0.')

  for key in ('batch_size', 'num_steps', 'log_every', 'eval_every', 'checkpoint_every',
              'image_every', 'keep_checkpoints'):
    _require(t[key] > 0, f'train.{key}={t[key]} must be positive.')
  _require(0.0 <= t.label_flip_prob < 0.5, f'train.label_flip_prob={t.label_flip_prob} must be in [0, 0.5).')
  _require(t.d_input_noise_std >= 0, f'train.d_input_noise_std={t.d_input_noise_std} must be >= 0.')
  _require(t.on_nonfinite in ('stop', 'rollback'),
           f"train.on_nonfinite={t.on_nonfinite!r}: use 'stop' or 'rollback'.")

  _require(config.mask.kind in ('none', 'square', 'grid', 'stain'),
           f"mask.kind={config.mask.kind!r}: use none, square, grid or stain.")
  if config.mask.kind != 'none':
    try:
      masks.validate_mask_config(config.mask.kind, m.isize, config.mask.size, config.mask.cells)
    except ValueError as err:
      raise ConfigError(str(err)) from None
    _require(-1.0 <= config.mask.fill <= 1.0, f'mask.fill={config.mask.fill} must be in [-1, 1].')

  _require(e.score in SCORES, f'eval.score={e.score!r} is not one of {SCORES}.')
  _require(not (e.score == 'latent' and m.generator != 'ede'),
           "eval.score='latent' needs the encoder-decoder-encoder generator (model.generator=ede).")
  _require(not (e.score == 'latent' and config.mask.kind != 'none'),
           "eval.score='latent' does not apply to masked training; use 'lambda' or 'inpaint'.")
  _require(not (e.score == 'inpaint' and config.mask.kind == 'none'),
           "eval.score='inpaint' needs a mask (mask.kind=square|grid|stain).")
  _require(0.0 <= e.score_lambda <= 1.0, f'eval.score_lambda={e.score_lambda} must be in [0, 1].')
  _require(e.batch_size > 0, f'eval.batch_size={e.batch_size} must be positive.')
  _require(e.select in ('val_loss', 'last'), f"eval.select={e.select!r}: use 'val_loss' or 'last'.")
  _require(e.mc_samples >= 0, f'eval.mc_samples={e.mc_samples} must be >= 0.')
  _require(e.mc_samples != 1, 'eval.mc_samples=1 gives no variance; use 0 (off) or >= 2.')
  _require(not (e.mc_samples > 0 and m.dropout == 0),
           'eval.mc_samples > 0 needs a model with dropout (model.dropout > 0).')
  _require(0.0 <= config.dataset.val_fraction < 1.0,
           f'dataset.val_fraction={config.dataset.val_fraction} must be in [0, 1).')
  _require(0.0 <= config.dataset.zoom < 1.0, f'dataset.zoom={config.dataset.zoom} must be in [0, 1).')
