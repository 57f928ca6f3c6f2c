"""Config validation before anything is compiled: one clear line naming the key.

Allowed method names and the rules between them come from the registries that implement them
(`models.GENERATORS` / `DISCRIMINATORS`, `losses.ADVERSARIAL` / `SCORES`, `masks.KINDS`,
`sources.DATASETS`), so a registered method or dataset is validated without an edit here. A key that the chosen method does not read is
refused when it is set away from its `schema.base_config()` default, so no setting is silently
ignored.
"""

from __future__ import annotations

import copy
import math
import re

import ml_collections

from ganomaly_jax import losses, masks, models
from ganomaly_jax import scores as scores_lib
from ganomaly_jax import state as state_lib
from ganomaly_jax.config import schema
from ganomaly_jax.data import sources

_METHOD_NAME = re.compile(r'[A-Za-z0-9][A-Za-z0-9_-]*')


# Keys that only a discriminator reads: refused away from their defaults without one.
_DISCRIMINATOR_KEYS = (
    'loss.w_adv',
    'loss.latent_in_d',
    'train.soft_labels',
    'train.label_flip_prob',
    'train.d_input_noise_std',
    'train.d_reinit_threshold',
    'optim.d_lr',
    'model.spectral_norm',
)


class ConfigError(ValueError):
  """An impossible or contradictory config value."""


def _require(ok: bool, message: str) -> None:
  if not ok:
    raise ConfigError(message)


def _names(names) -> str:
  return ', '.join(names)


# eval.readout: 'published' reads the test split out with eval.score / eval.map as set; 'auto' picks
# the candidate best on validation normals + synthetic anomalies (evaluation/readout.py).
READOUTS = ('published', 'auto')
# eval.protocol: 'honest' alone, or with the official code's per-epoch, test-selected read-out
# beside it (evaluation/reference.py).
PROTOCOLS = ('honest', 'reference')
# dataset.normalization (data/normalization.py).
NORMALIZATIONS = ('tanh', 'mnist_reference')


def score_problem(config: ml_collections.ConfigDict, name: str) -> str | None:
  """Why score `name` (a key of scores.SCORES) cannot read out this config's model, or None.

  The facts come from the registries: the generator outputs the score needs, whether it reads the
  discriminator's features, and whether it needs (or refuses) masked training. Validation and the read-out candidates (evaluation/readout.py) both
  ask here.
  """
  score = scores_lib.SCORES[name]
  generator = models.GENERATORS[config.model.generator]
  masked = masks.KINDS[config.mask.kind].eval_holes is not None  # 'none' has no holes
  missing = [o for o in score.needs_outputs if o not in generator.outputs]
  if missing:
    fitting = (
        k for k, g in models.GENERATORS.items() if set(score.needs_outputs) <= set(g.outputs)
    )
    return (
        f'eval.score={name} needs the generator outputs {missing}, which model.generator='
        f'{config.model.generator} does not produce (use one of {_names(fitting)}).'
    )
  discriminator = models.DISCRIMINATORS[config.model.discriminator]
  if score.needs_discriminator and not discriminator.present:
    return (
        f'eval.score={name} reads discriminator features, and model.discriminator='
        f'{config.model.discriminator} has none; use '
        f'{_names(k for k, s in scores_lib.SCORES.items() if not s.needs_discriminator)}.'
    )
  if score.mask == 'forbidden' and masked:
    return (
        f'eval.score={name} does not apply to masked training; use '
        f"{_names(k for k, s in scores_lib.SCORES.items() if s.mask != 'forbidden')}."
    )
  if score.mask == 'required' and not masked:
    return (
        f'eval.score={name} needs a mask (mask.kind='
        f"{'|'.join(k for k, v in masks.KINDS.items() if v.eval_holes is not None)})."
    )
  return None


def finished(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config a run uses: a locked copy with every AUTO key filled from the dataset
  (`schema.resolve`), validated (`validate_config`, ConfigError naming the key).

  The entry points call it once, after every override (--config flags, a sweep's or a suite's);
  everything below them (`train.train_and_evaluate`, ...) receives the finished config as is.
  """
  config = schema.resolve(config)
  validate_config(config)
  config.lock()
  return config


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError for values that cannot work, naming the key and what is allowed."""
  m, t, l, e = config.model, config.train, config.loss, config.eval
  # A NaN or inf anywhere compiles and trains, then surfaces steps later as a "divergence".
  for key, value in schema.flatten(config.to_dict()).items():
    for v in (value if isinstance(value, (tuple, list)) else (value,)):
      _require(
          not isinstance(v, float) or math.isfinite(v), f'{key}={value} is not a finite number.'
      )
  _require(
      bool(_METHOD_NAME.fullmatch(config.method)),
      f'method={config.method!r} must be a name of letters, digits, "_" and "-" (it names '
      'run folders and table rows).',
  )
  try:
    sources.get_dataset(config.dataset.name)
  except sources.DataError as e:
    _require(False, str(e))
  _require(config.mode in ('train', 'eval'), f"mode={config.mode!r}: use 'train' or 'eval'.")
  _require(m.isize >= 16, f'model.isize={m.isize} must be >= 16.')  # the rest: check_architecture
  _require(m.channels in (1, 3), f'model.channels={m.channels} must be 1 or 3.')
  for key in ('ngf', 'ndf', 'latent_dim'):
    _require(m[key] > 0, f'model.{key}={m[key]} must be positive.')
  _require(m.kernel_size in (3, 4, 5, 6), f'model.kernel_size={m.kernel_size} must be 3..6.')
  _require(m.max_channels >= 0, f'model.max_channels={m.max_channels} must be >= 0 (0: no cap).')
  _require(
      m.generator in models.GENERATORS,
      f'model.generator={m.generator!r} is not one of {_names(models.GENERATORS)}.',
  )
  _require(
      m.discriminator in models.DISCRIMINATORS,
      f'model.discriminator={m.discriminator!r} is not one of {_names(models.DISCRIMINATORS)}.',
  )
  _require(
      m.classifier_kernel in (1, 3, 4),
      f'model.classifier_kernel={m.classifier_kernel} must be 1, 3 or 4.',
  )
  _require(0.0 <= m.dropout < 1.0, f'model.dropout={m.dropout} must be in [0, 1).')
  _require(
      m.self_attention == 0
      or (4 <= m.self_attention <= m.isize // 2 and m.self_attention & (m.self_attention - 1) == 0),
      f'model.self_attention={m.self_attention} must be 0 or a power of two in [4, isize/2].',
  )
  r = config.runtime
  _require(
      r.dtype in ('float32', 'bfloat16'), f"runtime.dtype={r.dtype!r}: use 'float32' or 'bfloat16'."
  )
  _require(
      r.cpu_kernels in ('auto', 'off'),
      f"runtime.cpu_kernels={r.cpu_kernels!r}: use 'auto' or 'off'.",
  )

  _require(
      l.adversarial in losses.ADVERSARIAL,
      f'loss.adversarial={l.adversarial!r} is not one of {_names(losses.ADVERSARIAL)}.',
  )
  generator = models.GENERATORS[m.generator]
  discriminator = models.DISCRIMINATORS[m.discriminator]
  adversarial = losses.ADVERSARIAL[l.adversarial]
  defaults = schema.base_config()
  for entry, kind in (
      (generator, f'model.generator={m.generator}'),
      (discriminator, f'model.discriminator={m.discriminator}'),
  ):
    for key, why in entry.ignores.items():
      _require(
          m[key] == defaults.model[key],
          f'model.{key}={m[key]} is not used by {kind} ({why}); leave it at {defaults.model[key]}.',
      )
  _require(
      not (l.latent_in_d and not discriminator.latent_features),
      f'loss.latent_in_d=True needs a discriminator with latent features '
      f'(model.discriminator={_names(k for k, d in models.DISCRIMINATORS.items() if d.latent_features)}).',
  )
  _require(
      not (m.residual_blocks and adversarial.d_norm != models.RESIDUAL_BLOCK_NORM),
      f"model.residual_blocks: the discriminator's residual blocks use BatchNorm, but "
      f'loss.adversarial={l.adversarial} needs {adversarial.d_norm} normalisation in D.',
  )
  _require(
      adversarial.uses_labels or not (t.soft_labels or t.label_flip_prob > 0),
      f'train.soft_labels / train.label_flip_prob do not apply to loss.adversarial={l.adversarial}.',
  )
  _require(
      isinstance(l.n_critic, int) and l.n_critic >= 1,
      f'loss.n_critic={l.n_critic} must be an integer >= 1.',
  )
  _require(
      l.n_critic == 1 or adversarial.multi_critic,
      f'loss.n_critic={l.n_critic}: extra critic updates need loss.adversarial='
      f'{_names(k for k, a in losses.ADVERSARIAL.items() if a.multi_critic)}.',
  )
  _require(
      not l.adv_extra or adversarial.allows_extra,
      f'loss.adv_extra=True (eq. 3.6) adds nothing new to loss.adversarial={l.adversarial}; use '
      f'it with {_names(k for k, a in losses.ADVERSARIAL.items() if a.allows_extra)}.',
  )
  _require(
      t.d_reinit_threshold <= 0 or adversarial.d_loss_bounded,
      f'train.d_reinit_threshold={t.d_reinit_threshold}: the loss.adversarial={l.adversarial} '
      f'discriminator loss is not bounded below by 0, so D would be re-initialised every step.',
  )
  _require(
      adversarial.needs_discriminator == discriminator.present,
      f'loss.adversarial={l.adversarial} and model.discriminator={m.discriminator} do not fit: '
      f'a plain autoencoder is loss.adversarial=none with model.discriminator=none, a GAN '
      f'neither.',
  )
  if not discriminator.present:
    for dotted in _DISCRIMINATOR_KEYS:
      section, key = dotted.split('.')
      value, default = config[section][key], defaults[section][key]
      _require(
          value == default,
          f'{dotted}={value} is not used without a discriminator '
          f'(model.discriminator={m.discriminator}); leave it at {default}.',
      )
    _require(
        not (generator.latent_from_discriminator and l.w_enc > 0),
        f'loss.w_enc={l.w_enc}: the latent term of model.generator={m.generator} compares '
        f'discriminator features, and model.discriminator={m.discriminator} has none; set '
        f'loss.w_enc=0.',
    )
  _require(
      l.reconstruction in losses.RECONSTRUCTION,
      f'loss.reconstruction={l.reconstruction!r} is not one of '
      f'{_names(losses.RECONSTRUCTION)}.',
  )

  o = config.optim
  for key in ('g_lr', 'd_lr'):
    _require(o[key] > 0, f'optim.{key}={o[key]} must be positive.')
  for key in ('b1', 'b2'):
    _require(0.0 <= o[key] < 1.0, f'optim.{key}={o[key]} must be in [0, 1).')
  for key in ('w_adv', 'w_con', 'w_enc', 'gp_weight', 'hole_weight', 'w_ssim', 'w_msgms'):
    _require(l[key] >= 0, f'loss.{key}={l[key]} must be >= 0.')

  _check_budget(config)
  # With train.epochs these may still be AUTO: one epoch each, filled by schedule.with_epoch_steps.
  per_epoch = {k.split('.')[1] for k in schema.EPOCH_KEYS} if t.epochs > 0 else set()
  for key in (
      'batch_size',
      'num_steps',
      'log_every',
      'eval_every',
      'checkpoint_every',
      'keep_checkpoints',
  ):
    _require(
        t[key] > 0 or (key in per_epoch and t[key] == schema.AUTO),
        f'train.{key}={t[key]} must be positive.',
    )
  _require(
      t.image_every > 0
      or t.image_every == -1
      or ('image_every' in per_epoch and t.image_every == schema.AUTO),
      f'train.image_every={t.image_every} must be positive, or -1 for no image grids.',
  )
  _require(
      0.0 <= t.label_flip_prob < 0.5,
      f'train.label_flip_prob={t.label_flip_prob} must be in [0, 0.5).',
  )
  _require(t.d_input_noise_std >= 0, f'train.d_input_noise_std={t.d_input_noise_std} must be >= 0.')
  _require(
      t.on_nonfinite in ('stop', 'rollback'),
      f"train.on_nonfinite={t.on_nonfinite!r}: use 'stop' or 'rollback'.",
  )

  _require(
      config.mask.kind in masks.KINDS,
      f'mask.kind={config.mask.kind!r} is not one of {_names(masks.KINDS)}.',
  )
  mask_kind = masks.KINDS[config.mask.kind]
  try:
    masks.validate_mask_config(config.mask.kind, m.isize, config.mask)
  except ValueError as err:
    raise ConfigError(str(err)) from None
  for dotted in masks.MASK_KEYS:
    section, key = dotted.split('.')
    value, default = config[section][key], defaults[section][key]
    _require(
        dotted in mask_kind.reads or value == default,
        f'{dotted}={value} is not used by mask.kind={config.mask.kind}; leave it at {default}.',
    )
  _require(-1.0 <= config.mask.fill <= 1.0, f'mask.fill={config.mask.fill} must be in [-1, 1].')

  _require(
      e.score in scores_lib.SCORES,
      f'eval.score={e.score!r} is not one of {_names(scores_lib.SCORES)}.',
  )
  problem = score_problem(config, e.score)
  _require(problem is None, problem)
  _require(
      isinstance(e.knn_k, int) and e.knn_k >= 1, f'eval.knn_k={e.knn_k} must be an integer >= 1.'
  )
  _require(
      isinstance(e.bank_size, int) and e.bank_size >= 1,
      f'eval.bank_size={e.bank_size} must be an integer >= 1.',
  )
  score = scores_lib.SCORES[e.score]
  for dotted in sorted(set().union(*(s.reads for s in scores_lib.SCORES.values()))):
    section, key = dotted.split('.')
    value, default = config[section][key], defaults[section][key]
    _require(
        dotted in score.reads or value == default,
        f'{dotted}={value} is not used by eval.score={e.score}; leave it at {default}.',
    )
  _require(e.map in losses.MAPS, f'eval.map={e.map!r} is not one of {_names(losses.MAPS)}.')
  filtered = [k for k, v in losses.MAPS.items() if v.filtered]
  _require(
      isinstance(e.map_filter, int) and (e.map_filter == 0 or e.map_filter % 2 == 1),
      f'eval.map_filter={e.map_filter} must be 0 (the scaled rule) or an odd side in pixels.',
  )
  _require(
      0 <= e.map_filter <= m.isize,
      f'eval.map_filter={e.map_filter} must be in [0, model.isize={m.isize}].',
  )
  _require(
      e.map_filter == 0 or e.map in filtered or e.readout == 'auto',
      f'eval.map_filter={e.map_filter} is not used by eval.map={e.map}; use it with '
      f'{_names(filtered)}, or leave it at 0.',
  )
  _require(
      e.readout in READOUTS, f'eval.readout={e.readout!r}: use {" or ".join(map(repr, READOUTS))}.'
  )
  _require(
      e.readout != 'auto' or config.dataset.val_fraction > 0,
      'eval.readout=auto chooses on validation normals: it needs dataset.val_fraction > 0.',
  )
  _require(0.0 < e.topk_fraction <= 1.0, f'eval.topk_fraction={e.topk_fraction} must be in (0, 1].')
  _require(e.smooth_sigma >= 0, f'eval.smooth_sigma={e.smooth_sigma} must be >= 0.')
  _require(0.0 <= e.score_lambda <= 1.0, f'eval.score_lambda={e.score_lambda} must be in [0, 1].')
  _require(
      0.0 < e.threshold_quantile < 1.0,
      f'eval.threshold_quantile={e.threshold_quantile} must be in (0, 1).',
  )
  _require(e.batch_size > 0, f'eval.batch_size={e.batch_size} must be positive.')
  _require(e.select in ('val_loss', 'last'), f"eval.select={e.select!r}: use 'val_loss' or 'last'.")
  _require(e.mc_samples >= 0, f'eval.mc_samples={e.mc_samples} must be >= 0.')
  _require(e.mc_samples != 1, 'eval.mc_samples=1 gives no variance; use 0 (off) or >= 2.')
  _require(
      not (e.mc_samples > 0 and m.dropout == 0),
      'eval.mc_samples > 0 needs a model with dropout (model.dropout > 0).',
  )
  _require(
      0.0 <= config.dataset.val_fraction < 1.0,
      f'dataset.val_fraction={config.dataset.val_fraction} must be in [0, 1).',
  )
  _require(
      0.0 <= config.dataset.zoom < 1.0, f'dataset.zoom={config.dataset.zoom} must be in [0, 1).'
  )
  _check_protocol(config)
  check_architecture(config)


def _check_budget(config: ml_collections.ConfigDict) -> None:
  """train.epochs xor train.num_steps; train.early_stop_patience needs validation normals."""
  t = config.train
  _require(
      isinstance(t.epochs, int) and t.epochs >= 0,
      f'train.epochs={t.epochs} must be an integer >= 0 (0: the budget is train.num_steps).',
  )
  _require(
      not (t.epochs > 0 and t.num_steps != schema.AUTO),
      f'train.epochs={t.epochs} and train.num_steps={t.num_steps} are both set: a budget is '
      'one or the other (set train.num_steps=0 to count in epochs, or train.epochs=0).',
  )
  _require(
      isinstance(t.early_stop_patience, int) and t.early_stop_patience >= 0,
      f'train.early_stop_patience={t.early_stop_patience} must be an integer >= 0 (0: off).',
  )
  _require(
      t.early_stop_patience == 0 or config.dataset.val_fraction > 0,
      'train.early_stop_patience stops on the validation loss: it needs '
      'dataset.val_fraction > 0.',
  )


def _check_protocol(config: ml_collections.ConfigDict) -> None:
  """eval.protocol and dataset.normalization."""
  e, d = config.eval, config.dataset
  _require(
      e.protocol in PROTOCOLS,
      f'eval.protocol={e.protocol!r}: use {" or ".join(map(repr, PROTOCOLS))}.',
  )
  if e.protocol == 'reference':
    # The official read-out is GANomaly's / Skip-GANomaly's: one forward pass per image with
    # test-batch statistics; masked inpainting and MC-dropout have no official counterpart.
    _require(
        config.mask.kind == 'none',
        f'eval.protocol=reference reproduces the official GANomaly / Skip-GANomaly test '
        f'read-out, which has no masks: it needs mask.kind=none, not {config.mask.kind}.',
    )
    _require(
        config.model.dropout == 0,
        'eval.protocol=reference: the official read-out has no dropout (model.dropout=0).',
    )
    _require(
        scores_lib.SCORES[e.score].feature is None,
        f'eval.protocol=reference: the official read-out scores without a bank of training '
        f'normals; eval.score={e.score} needs one (use it with eval.protocol=honest).',
    )
  _require(
      d.normalization in NORMALIZATIONS,
      f'dataset.normalization={d.normalization!r}: use '
      f'{" or ".join(map(repr, NORMALIZATIONS))}.',
  )
  _require(
      d.normalization == 'tanh'
      or (
          config.mask.kind == 'none'
          and config.loss.w_ssim == 0
          and config.loss.w_msgms == 0
          and e.map == 'l1'
      ),
      f'dataset.normalization={d.normalization} reproduces the official GANomaly MNIST input; '
      'SSIM / GMS terms and masks assume images in [-1, 1] (use it with ganomaly or '
      'skip_ganomaly).',
  )
  _require(
      d.normalization == 'tanh' or config.model.channels == 1,
      f"dataset.normalization={d.normalization} is MNIST's (one channel); model.channels="
      f'{config.model.channels}.',
  )


# Input sizes offered when model.isize cannot be built (each one checked the same way).
_CANDIDATE_SIZES = (16, 32, 64, 128, 256)


def check_architecture(config: ml_collections.ConfigDict) -> None:
  """Refuses a model the config cannot build, found by tracing it (`state.trace`: `jax.eval_shape`,
  no compute; the programs reuse the same trace).

  The generator must give back an image of the input's shape (and, with a latent code, a code of
  `model.latent_dim` values: the encoder reduced the image to 1x1), and the discriminator one logit
  per image. An image size the stride-2 encoder cannot halve down to 1x1 (48, 80, ...) fails here
  with one line instead of deep inside the first compiled step.
  """
  m = config.model
  problem = _architecture_problem(config)
  if problem is None:
    return
  works = [
      s
      for s in _CANDIDATE_SIZES
      if s != m.isize and _architecture_problem(_with_isize(config, s)) is None
  ]
  raise ConfigError(
      f'model.isize={m.isize}: model.generator={m.generator} / model.discriminator='
      f'{m.discriminator} cannot be built for {m.isize}x{m.isize} images ({problem}); '
      f'sizes it builds: {", ".join(map(str, works)) or "none of " + str(_CANDIDATE_SIZES)}.'
  )


def _with_isize(config: ml_collections.ConfigDict, isize: int) -> ml_collections.ConfigDict:
  candidate = copy.deepcopy(config)
  candidate.model.isize = isize
  return candidate


def _architecture_problem(config: ml_collections.ConfigDict) -> str | None:
  """None when the config's model builds with the right shapes, else what is wrong."""
  traced = state_lib.trace(config)
  if traced.error is not None:
    return traced.error
  m, batch = config.model, state_lib.FORWARD_BATCH
  g_out, (logit, _) = traced.outputs
  image_shape = state_lib.image_shape(config, batch)
  if 'z' in g_out and g_out['z'].shape != (batch, m.latent_dim):
    return (
        f'the encoder does not reduce the image to 1x1: its code has {g_out["z"].shape[1]} '
        f'values, not model.latent_dim={m.latent_dim}'
    )
  if g_out['recon'].shape != image_shape:
    return f'the reconstruction is {g_out["recon"].shape[1:3]}, not the input\'s {image_shape[1:3]}'
  if logit.shape != (batch,):
    return f'the discriminator gives {logit.shape[1:]} logits per image, not one'
  return None
