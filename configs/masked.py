"""Masked SkipGANomaly (study method 5): SkipGANomaly trained to inpaint a random square hole.

  python -m ganomaly_jax.main --config=configs/masked.py
  python -m ganomaly_jax.main --config=configs/masked.py:cars256 --config.dataset.name=folder:/data/cars

Training: each clean image gets one square hole (side mask.size × isize: 0.5 → 128 px at 256, position
uniform) filled with mask.fill; the generator completes it; loss.hole_weight > 1 emphasises the hole.
Evaluation: every region is reconstructed from its context (holes that tile the image, each hole's
inpainting pasted into one full image), so damage outside one hole is not copied through (the study's
stated limitation). Score (eq. 6.1) and pixel maps come from that full reconstruction.
Alternative hole shape: --config.mask.kind=stain (random blurred blobs, 1–12% of the image).
D's loss follows SkipGANomaly's eq. 3.8 including the latent term (loss.latent_in_d=True, from
`skip`); --config.loss.latent_in_d=False is the ablation.
"""

from ganomaly_jax.config import arguments, schema
from ganomaly_jax.config.arguments import load_sibling

skip = load_sibling(__file__, 'skip_ganomaly').skip


def get_config(arg=None):
  args = arguments.parse_arg(arg)
  config = schema.base_config()
  config.method = 'masked'
  skip(config)
  config.mask.kind = 'square'
  config.mask.size = 0.5
  config.mask.fill = 0.0
  return arguments.finalize(config, args)
