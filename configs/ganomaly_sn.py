"""GANomaly with a spectrally normalised discriminator (study method 3): method 2 + spectral norm.

  python -m ganomaly_jax.main --config=configs/ganomaly_sn.py --workdir=/tmp/sn

Switch: model.spectral_norm=True — flax nn.SpectralNorm on every discriminator conv; its power-
iteration state (u, sigma) lives in `batch_stats`, so it adds only non-trainable state, and it is
frozen in evaluation and inside the generator's loss.
"""

from ganomaly_jax.config import arguments, schema
from ganomaly_jax.config.arguments import load_sibling

modified = load_sibling(__file__, 'ganomaly_modified').modified


def get_config(arg=None):
  args = arguments.parse_arg(arg)
  config = schema.base_config()
  config.method = 'ganomaly_sn'
  modified(config)
  config.model.spectral_norm = True
  return arguments.finalize(config, args)
