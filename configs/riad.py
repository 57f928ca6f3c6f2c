"""RIAD, reconstruction by inpainting (Zavrtanik, Kristan, Skočaj, Pattern Recognition 2021), as
published; docs/methods.md#riad gives each setting with its source and every deviation.

  python -m ganomaly_jax.main --config=configs/riad.py --workdir=/tmp/riad
  python -m ganomaly_jax.main --config=configs/riad.py:quick --workdir=/tmp/riad_quick
  python -m ganomaly_jax.main --config=configs/riad.py:cars256 --workdir=/tmp/riad_cars \
      --config.dataset.name=folder:/data/cars

A plain U-Net autoencoder (model.generator='riad_unet'), no GAN (model.discriminator='none',
loss.adversarial='none'). Masks: square cells of sides 2, 4, 8 and 16 px at 256x256, i.e. 128, 64,
32 and 16 cells per image side (mask.cells), the same fractions of the image at every size and never
below 2 px; one size per batch, its cells split at random into n = 3 disjoint sets
(mask.partition='random', mask.sets=3, mask.draw='batch'). The three inpaintings are assembled into
one reconstruction, on which the loss is L2 + SSIM + MSGMS at 1:1:1 on intensities in [0, 1]:
w_con = 0.25 on the L2 of our [-1, 1] images (4 times the [0, 1] one), w_ssim = w_msgms = 1.
Anomaly map: 1 - MSGMS with RIAD's mean filter (eval.map='msgms'), averaged over the cell sizes
(fixed partitions at evaluation); image score: the map's maximum (eval.score='map_max').
Adam, lr 1e-4, β = (0.9, 0.999).
"""

from ganomaly_jax.config import arguments, schema


def get_config(arg=None):
  args = arguments.parse_arg(arg)
  config = schema.base_config()
  config.method = 'riad'
  config.model.generator = 'riad_unet'
  config.model.discriminator = 'none'
  config.loss.adversarial = 'none'
  config.loss.reconstruction = 'l2'
  config.loss.w_con = 0.25  # RIAD's 1:1:1 on [0, 1] intensities: L2 on [-1, 1] is 4x that
  config.loss.w_ssim = 1.0
  config.loss.w_msgms = 1.0
  config.loss.w_enc = 0.0  # no latent code
  config.mask.kind = 'grid'
  config.mask.cells = (128, 64, 32, 16)  # 2, 4, 8, 16 px at 256 px; at least 2 px
  config.mask.sets = 3
  config.mask.partition = 'random'
  config.mask.draw = 'batch'
  config.mask.fill = 0.0
  config.optim.g_lr = 1e-4
  config.optim.b1 = 0.9
  config.eval.score = 'map_max'
  config.eval.map = 'msgms'
  return arguments.finalize(config, args)
