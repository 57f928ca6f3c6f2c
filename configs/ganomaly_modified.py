"""Modified GANomaly (study method 2): every change of the study is its own switch.

  python -m ganomaly_jax.main --config=configs/ganomaly_modified.py --workdir=/tmp/mod
  python -m ganomaly_jax.main --config=configs/ganomaly_modified.py:quick --workdir=/tmp/q
  # ablation: the same method without soft labels
  python -m ganomaly_jax.main --config=configs/ganomaly_modified.py --config.train.soft_labels=False

Switches turned on here (GANomaly's values in brackets):
  model.kernel_size=5 [4]        5x5 kernels in the stride-2 convs
  model.latent_dim=512 [100]     latent width
  model.max_channels=512 [none]  channels capped, the map goes down to 4x4x512
  train.soft_labels=True         D targets real ~ U[0.9, 1], fake ~ U[0, 0.1] (D loss only)
  train.label_flip_prob=0.05     5% of D's labels flipped
  train.d_input_noise_std=0.1    Gaussian noise on D's inputs (training only)
  optim.d_lr=8e-4, optim.g_lr=2e-4   TTUR [2e-4 both]
  loss.adv_extra=True            eq. 3.6 extra adversarial term, in the stable non-saturating form
                                 -E[log D(x̂)] (same fixed point as E[log(1 - D(x̂))])
"""

from ganomaly_jax.config import arguments, schema


def modified(config):
  """Applies the study's method-2 switches to a GANomaly config (shared with ganomaly_sn)."""
  config.model.kernel_size = 5
  config.model.latent_dim = 512
  config.model.max_channels = 512
  config.train.soft_labels = True
  config.train.label_flip_prob = 0.05
  config.train.d_input_noise_std = 0.1
  config.optim.d_lr = 8e-4
  config.optim.g_lr = 2e-4
  config.loss.adv_extra = True
  config.eval.score = 'latent'


def get_config(arg=None):
  args = arguments.parse_arg(arg)
  config = schema.base_config()
  config.method = 'ganomaly_modified'
  modified(config)
  return arguments.finalize(config, args)
