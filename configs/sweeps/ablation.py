"""Ablation of modified GANomaly (study method 2): each modification turned off on its own.

  python -m ganomaly_jax.experiments.sweep --config=configs/ganomaly_modified.py \
      --sweep=configs/sweeps/ablation.py --workdir=runs/ablation
  python -m ganomaly_jax.experiments.sweep --config=configs/ganomaly_modified.py:quick \
      --sweep=configs/sweeps/ablation.py --workdir=/tmp/ablation     # smoke test

The baseline is method 2 with every switch on; each further run reverts one switch to GANomaly's
(method 1's) value, as configs/ganomaly_modified.py lists them:

  model.kernel_size=4   model.latent_dim=100   model.max_channels=0   train.soft_labels=False
  train.label_flip_prob=0.0   train.d_input_noise_std=0.0   optim.d_lr=2e-4 (no TTUR)
  loss.adv_extra=False

The latent width is the one switch a preset also touches: `quick` caps every latent at 16, so there
methods 1 and 2 have the same latent width, and reverting to GANomaly's *unscaled* 100 would widen
the latent instead of narrowing it. That run is therefore only part of the sweep when the base
config's latent is wider than 100 (any non-quick preset); `quick` has 8 runs, the rest 9.

`model.max_channels` only matters where a layer would be wider than the cap: at cars256 (ngf 64,
256x256: up to 1024 channels, capped at 512). At 16x16 (quick, and the digits default) no layer
reaches the cap, so that run has the baseline's networks and reproduces the baseline's numbers
exactly (a free determinism check).
"""

GANOMALY_LATENT_DIM = 100

# One override per modification: the key and GANomaly's value.
REVERSALS = (
    ('model.kernel_size', 4),
    ('model.latent_dim', GANOMALY_LATENT_DIM),
    ('model.max_channels', 0),
    ('train.soft_labels', False),
    ('train.label_flip_prob', 0.0),
    ('train.d_input_noise_std', 0.0),
    ('optim.d_lr', 2e-4),
    ('loss.adv_extra', False),
)


def get_sweep(config=None):
  """Baseline first, then one run per reverted modification (see the module docstring)."""
  runs = [{}]
  for key, value in REVERSALS:
    if key == 'model.latent_dim' and config is not None and config.model.latent_dim <= value:
      continue  # a preset shrank the latent below GANomaly's: nothing to revert
    runs.append({key: value})
  return runs
