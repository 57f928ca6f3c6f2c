"""Grid-mask SkipGANomaly (the study's proposal, never built there).

  python -m ganomaly_jax.main --config=configs/grid_mask.py --workdir=/tmp/grid

Two complementary alternating grid masks (mask.cells per side) hide opposite cells of the same image;
the generator reconstructs both masked copies (one G call on the stacked pair); the hole regions of
the two outputs are combined into one full reconstruction, on which all three losses are computed.
Evaluation uses the same combination, so every pixel is predicted from context.
D's loss follows SkipGANomaly's eq. 3.8 including the latent term (loss.latent_in_d=True, from
`skip`); --config.loss.latent_in_d=False is the ablation.
"""

from ganomaly_jax import config_lib
from ganomaly_jax.config_lib import load_sibling

skip = load_sibling(__file__, 'skip_ganomaly').skip


def get_config(arg=None):
  args = config_lib.parse_arg(arg)
  config = config_lib.base_config()
  config.method = 'grid_mask'
  skip(config)
  config.mask.kind = 'grid'
  config.mask.cells = 4
  config.mask.fill = 0.0
  return config_lib.finalize(config, args)
