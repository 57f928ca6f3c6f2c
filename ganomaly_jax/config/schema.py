"""The config schema: every key any method understands, and the keys that follow the dataset.

Every method config (`configs/<method>.py`) starts from `base_config()`, which holds *every* key any
method understands, then turns on the switches of its method. An ablation is therefore always a config
override (`--config.train.soft_labels=False`), never a code fork, and an unknown key fails loudly because
the returned ConfigDict is locked.

Keys whose right value depends on the dataset (image size, channels, network widths, run length) hold
`AUTO` (0) until `resolve(config)` fills them from `config.dataset.name`. The entry points resolve and
check a config once (`checks.finished`), after every override, so a dataset set in the argument string,
by `--config.dataset.name=...` or by a sweep override gives the same config, and a value the user or a
preset set explicitly always wins.
"""

from __future__ import annotations

import copy
from typing import Any, Mapping

import ml_collections

from ganomaly_jax.runtime import compile_cache

# The methods shipped in configs/ (tests and suites iterate over them): the study's six, then RIAD
# (the published form of the grid proposal, docs/methods.md#riad). A config file elsewhere may name
# its own method: the name only labels runs and results.
METHODS = (
    'ganomaly',
    'ganomaly_modified',
    'ganomaly_sn',
    'skip_ganomaly',
    'masked',
    'grid_mask',
    'riad',
)

# Sentinel of the dataset-dependent keys (see `resolve`); 0 is never a valid value for any of them.
AUTO = 0


def base_config() -> ml_collections.ConfigDict:
  """All keys shared by every method, with GANomaly (study method 1) defaults."""
  c = ml_collections.ConfigDict()
  c.method = 'ganomaly'
  c.mode = 'train'  # 'train' | 'eval' (evaluate the selected checkpoint of an existing workdir)
  c.seed = 0
  c.restart = False  # move old checkpoints aside and start fresh
  c.debug_nan_at_step = -1  # test hook: inject a NaN into the loss at this step (-1: never)

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = 'digits'  # digits | mnist | fashion_mnist | cifar10 | npz:PATH | folder:PATH
  c.dataset.abnormal = '0'  # class index or CIFAR-10 name; ignored for folder data
  c.dataset.pool_normals = False  # reference protocol: pool normals of both splits, split 80/20
  c.dataset.val_fraction = 0.1  # normals held out of training for checkpoint selection
  c.dataset.max_train = 0  # cap on training images (0: all), for quick runs
  c.dataset.max_test = 0  # cap on test images (0: all), for quick runs
  c.dataset.data_dir = ''  # tfds data_dir ('' = tfds default)
  c.dataset.flip = False  # train-time horizontal flip
  c.dataset.zoom = 0.0  # train-time random zoom: crop up to this fraction, resize back
  c.dataset.workers = 0  # grain worker processes (0: in-process)
  # How uint8 pixels become the networks' inputs: 'tanh' = [-1, 1], the range of the decoders'
  # tanh; 'mnist_reference' = the official GANomaly code's MNIST Normalize(0.1307, 0.3081), which a
  # tanh decoder cannot reach above 1 (data/normalization.py; for reproducing its figures only).
  c.dataset.normalization = 'tanh'

  c.model = ml_collections.ConfigDict()
  # AUTO (0): filled by resolve() from the dataset; any explicit value wins.
  c.model.isize = AUTO  # digits: 16; every other dataset: 32
  c.model.channels = (
      AUTO  # from the data: digits/mnist/fashion_mnist 1, cifar10 3, folder 3, npz: arrays
  )
  c.model.ngf = AUTO  # digits: 32; every other dataset: 64 (the study's)
  c.model.ndf = AUTO  # as ngf
  c.model.latent_dim = 100
  c.model.kernel_size = 4  # kernel of the stride-2 convs (study method 2: 5)
  c.model.max_channels = 0  # cap on conv channels (0: no cap; study method 2: 512)
  c.model.generator = 'ede'  # 'ede' (E-D-E) | 'unet' (SkipGANomaly) | 'riad_unet' (RIAD)
  c.model.discriminator = 'dcgan'  # 'dcgan' (features + logit) | 'latent' (SkipGANomaly) | 'none'
  c.model.classifier_kernel = 4  # latent discriminator's classifier conv (study 4, reference 3)
  c.model.spectral_norm = False
  c.model.residual_blocks = False
  c.model.self_attention = 0  # feature-map resolution of a SAGAN block in G (0: off)
  c.model.dropout = 0.0  # dropout in the generator's decoder path (MC-dropout needs > 0)

  # How a run executes, not what it learns: none of these changes a parameter's name or shape, so
  # a workdir resumes under other values (train.py compares parameter trees, not these keys).
  c.runtime = ml_collections.ConfigDict()
  c.runtime.cpu_kernels = 'auto'  # 'auto': exact CPU forms of conv/BN on the CPU platform | 'off'
  c.runtime.dtype = 'float32'  # compute dtype: float32 | bfloat16 (params stay float32)
  # JAX's persistent compilation cache: reruns and resumes load the compiled steps ('' = off;
  # default $JAX_COMPILATION_CACHE_DIR, else ~/.cache/ganomaly_jax/xla).
  c.runtime.compile_cache_dir = compile_cache.default_dir()
  c.runtime.distributed = False  # call jax.distributed.initialize() (multi-host)
  # XLA:CPU flags of cpu/xla_flags.py, set by the entry points (GANOMALY_JAX_XLA_DEFAULTS=0: off).
  c.runtime.xla_cpu_defaults = True

  c.optim = ml_collections.ConfigDict()
  c.optim.g_lr = 2e-4
  c.optim.d_lr = 2e-4
  c.optim.b1 = 0.5
  c.optim.b2 = 0.999

  c.loss = ml_collections.ConfigDict()
  c.loss.w_adv = 1.0
  c.loss.w_con = 50.0
  c.loss.w_enc = 1.0  # latent term (GANomaly) / feature term (SkipGANomaly)
  c.loss.adversarial = 'feature_matching'  # feature_matching | bce | wgan_gp | none (no GAN)
  c.loss.reconstruction = 'l1'  # the contextual term weighted by w_con: l1 (eq. 3.3) | l2 (RIAD)
  c.loss.adv_extra = False  # eq. 3.6 extra term (non-saturating form)
  c.loss.latent_in_d = False  # SkipGANomaly reference code: latent term also in D's loss
  c.loss.gp_weight = 10.0
  c.loss.n_critic = 1  # wgan_gp: critic updates per generator update (Gulrajani et al.: 5)
  c.loss.hole_weight = 1.0  # weight of masked-hole pixels in the reconstruction loss
  c.loss.w_ssim = 0.0  # + w_ssim (1 - mean SSIM) in G's loss (Wang et al. 2004; RIAD)
  c.loss.w_msgms = 0.0  # + w_msgms (1 - mean multi-scale GMS) in G's loss (Xue et al. 2014; RIAD)

  c.train = ml_collections.ConfigDict()
  c.train.batch_size = 64
  c.train.num_steps = AUTO  # digits: 1000; otherwise 3000 (left AUTO when train.epochs is set)
  # Budget in epochs instead (0: off): one epoch = one pass over this process's shard of the
  # training normals, len // local batch steps (the last partial batch is dropped, as the official
  # loader's drop_last=True does). With it, eval_every / checkpoint_every / image_every left AUTO
  # become one epoch (schedule.py).
  c.train.epochs = 0
  # Stop when the validation loss has not improved for this many evaluations (0: off); the best
  # checkpoint by validation loss is the one evaluated (RIAD trains to convergence this way).
  c.train.early_stop_patience = 0
  c.train.log_every = 50
  c.train.eval_every = AUTO  # digits: 250; otherwise 500
  c.train.checkpoint_every = AUTO  # digits: 250; otherwise 500
  c.train.image_every = AUTO  # TensorBoard image grids: digits 500, otherwise 1000 (-1: never)
  # TensorBoard events (clu's summary writer, which imports TensorFlow: seconds at start-up).
  # False: the same scalars go to the log; train_metrics.jsonl, results and pictures are unchanged.
  c.train.tensorboard = True
  c.train.keep_checkpoints = 2
  c.train.soft_labels = False
  c.train.label_flip_prob = 0.0
  c.train.d_input_noise_std = 0.0
  c.train.d_reinit_threshold = 0.0  # reference re-inits D when its loss < 1e-5 (0: off)
  c.train.on_nonfinite = 'stop'  # stop | rollback (to the last checkpoint, skipping the bad batch)
  c.train.loss_limit = 1e6  # |loss| above this counts as divergence, like NaN (0: only non-finite)
  c.train.max_rollbacks = 3

  c.mask = ml_collections.ConfigDict()
  c.mask.kind = 'none'  # none | square | grid | stain
  c.mask.size = 0.5  # square hole side as a fraction of the image side
  # Grid: cells per image side, one entry per cell size (side isize / n, at least 2 px); 4 = a 4x4
  # board at every resolution (the study's grid, docs/methods.md#grid_mask).
  c.mask.cells = (4,)
  c.mask.sets = 2  # grid: disjoint cell sets per size (2: complementary pair; RIAD: 3)
  c.mask.partition = (
      'alternating'  # grid: alternating (cell (i, j) in set (i + j) mod sets) | random
  )
  c.mask.draw = 'image'  # grid training: cell size (and random partition) drawn per image | batch
  c.mask.fill = 0.0  # value written into holes (images are in [-1, 1])

  c.eval = ml_collections.ConfigDict()
  c.eval.batch_size = 64
  # 'honest' (inference-mode BatchNorm, checkpoint and threshold from validation normals) or
  # 'reference': the honest results plus, after every epoch, the official code's read-out of the
  # test split (test-batch BatchNorm statistics, batches of 64 in its order, best epoch on the test
  # set) under results.json's `reference` (evaluation/reference.py). Test-selected by design.
  c.eval.protocol = 'honest'
  # latent | reconstruction | lambda | inpaint | map_mean | map_max | map_topk | knn_code |
  # knn_discriminator | complexity_corrected (scores.SCORES)
  c.eval.score = 'latent'
  c.eval.score_lambda = 0.9  # eq. 6.1
  c.eval.select = 'val_loss'  # checkpoint selection on validation normals: val_loss | last
  # Operating point: an image is anomalous when its raw score exceeds this quantile of the
  # validation normals' raw scores (no test label involved), so about 1 - q of normal images are
  # flagged. 0.95 (a 5 % false-alarm budget) rather than 0.99: the quantile must be estimable from
  # the validation split, and the digits default holds 130 validation normals (~6 above the 0.95
  # quantile; the 0.99 one would sit between the two largest), an MVTec AD category 6-39.
  c.eval.threshold_quantile = 0.95
  c.eval.smooth_sigma = 0.0  # Gaussian smoothing of pixel maps (and of the map_* scores' maps)
  c.eval.map = 'l1'  # pixel anomaly map: l1 | ssim | msgms | ssim_msgms (losses.MAPS)
  # Side of the MSGMS map's mean filter (msgms, ssim_msgms maps); 0: RIAD's 21 px at 256 px scaled
  # with the image (similarity.msgms_smoothing). The paper suites' RIAD row sets
  # masks.grid.riad_filter(isize), about its largest cell.
  c.eval.map_filter = 0
  c.eval.topk_fraction = 0.1  # eval.score=map_topk: mean of this fraction of the highest pixels
  # The knn_* scores: mean distance to the k nearest training normals' embeddings; 2 as in
  # Bergman, Cohen & Hoshen's deep nearest-neighbour detector. The bank keeps at most bank_size
  # training normals (a seeded random subset beyond; 65536 x 100 float32 dimensions is 26 MB).
  c.eval.knn_k = 2
  c.eval.bank_size = 65536
  # Which (score, map) the test split is read out with: 'published' = eval.score and eval.map as
  # set; 'auto' = the candidate with the best AUROC on validation normals plus synthetic anomalies
  # made from them (evaluation/readout.py), chosen without any test label.
  c.eval.readout = 'published'
  c.eval.mc_samples = 0
  c.eval.fid = False
  c.eval.fid_weights = ''
  c.eval.num_images = 16  # images per TensorBoard grid
  c.eval.pictures = (
      True  # the final pictures: PNGs (curves, ROC/PR, histogram, extremes), last grid
  )
  return c


def flatten(tree: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}: a config (`config.to_dict()`) as dotted keys.

  The one flattening of a config: TensorBoard hparams, sweep keys, the processes' config check.
  """
  flat: dict[str, Any] = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      flat.update(flatten(v, f'{prefix}{k}.'))
    else:
      flat[f'{prefix}{k}'] = v
  return flat


def _tuples(value: Any) -> Any:
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def from_saved(saved: dict[str, Any]) -> ml_collections.ConfigDict:
  """The ConfigDict of a run's config.json: JSON lists back to tuples, new keys at their defaults.

  Config values are never lists (`base_config` holds tuples, e.g. `mask.cells`), but JSON
  writes tuples as lists; without this a reloaded config would fail validation (`[] != ()`).
  Keys added since the run was saved take their `base_config` defaults: a new key's default is
  the behaviour from before it existed (`loss.reconstruction='l1'`, ...).
  """
  return ml_collections.ConfigDict(_merged(base_config().to_dict(), _tuples(saved)))


def _merged(defaults: dict[str, Any], saved: dict[str, Any]) -> dict[str, Any]:
  out = dict(defaults)
  for key, value in saved.items():
    out[key] = (
        _merged(defaults[key], value)
        if isinstance(value, dict) and isinstance(defaults.get(key), dict)
        else value
    )
  return out


# Values of the AUTO keys: the study's widths and run length, and the embedded digits' smaller ones.
# The digits carry no detail that 32x32 inputs or 64-wide first layers could use, so there the
# networks are halved and train 1000 steps: the default runs in minutes on a
# laptop CPU. Every other dataset gets the study's values.
_STUDY = {
    'model.isize': 32,
    'model.ngf': 64,
    'model.ndf': 64,
    'train.num_steps': 3000,
    'train.eval_every': 500,
    'train.checkpoint_every': 500,
    'train.image_every': 1000,
}
_DIGITS = {
    'model.isize': 16,
    'model.ngf': 32,
    'model.ndf': 32,
    'train.num_steps': 1000,
    'train.eval_every': 250,
    'train.checkpoint_every': 250,
    'train.image_every': 500,
}
# With train.epochs, these stay AUTO through `resolve`: their values follow from the epoch length.
EPOCH_KEYS = ('train.num_steps', 'train.eval_every', 'train.checkpoint_every', 'train.image_every')


def dataset_channels(name: str) -> int:
  """Channels the model should read for dataset `name` (the registered dataset's own)."""
  from ganomaly_jax.data import sources  # the registry; imported here, when a config is resolved

  dataset, arg = sources.get_dataset(name)
  return dataset.channels(arg)


def _small_dataset(name: str) -> bool:
  from ganomaly_jax.data import sources

  try:
    return sources.get_dataset(name)[0].small
  except sources.DataError:
    return False  # an unknown name: the checks name it (checks.py), with the valid ones


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` with every AUTO key filled from `config.dataset.name`.

  Pure (the argument is not modified) and idempotent (a resolved config has no AUTO key left, so
  resolving it again changes nothing); explicit values are kept. The entry points call it through
  `checks.finished`, after every override and before validation: then `:dataset=mnist`,
  `--config.dataset.name=mnist` and a sweep override of `dataset.name` give the same config.
  A method's channel cap (model.max_channels) is not scaled: at the digits' 16x16 no layer is
  wide enough to reach it.
  """
  config = copy.deepcopy(config)
  name = config.dataset.name
  values = _DIGITS if _small_dataset(name) else _STUDY
  for dotted, value in values.items():
    group, key = dotted.split('.')
    if config.train.epochs > 0 and dotted in EPOCH_KEYS:
      continue  # filled once the training split's size is known (schedule.with_epoch_steps)
    if config[group][key] == AUTO:
      config[group][key] = value
  if config.model.channels == AUTO:
    config.model.channels = dataset_channels(name)
  return config


def unresolved(config: ml_collections.ConfigDict) -> list[str]:
  """The dataset-dependent keys still AUTO (none once `resolve`d): a cheap check for a consumer
  that must be handed a finished config (`checks.finished`)."""
  keys = [*_STUDY, 'model.channels']
  if config.train.epochs > 0:  # filled once the data's length is known (schedule.with_epoch_steps)
    keys = [k for k in keys if k not in EPOCH_KEYS]
  return [k for k in keys if config[k.split('.')[0]][k.split('.')[1]] == AUTO]
