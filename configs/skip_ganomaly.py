"""SkipGANomaly (study method 4; Akçay et al. 2019): U-Net generator, latent-feature discriminator.

  python -m ganomaly_jax.main --config=configs/skip_ganomaly.py --workdir=/tmp/skip

G loss: w_adv·BCE(D(x̂), 1) + 50·|x − x̂| + 1·mean((f(x) − f(x̂))²), f = D's latent features.
Score: eq. 6.1, λ·mean((x − x̂)²) + (1 − λ)·mean((f(x) − f(x̂))²) with eval.score_lambda=0.9.
Switches: model.classifier_kernel (4 as in the study, 3 as in the reference code);
loss.latent_in_d (False as in the study; True adds the latent term to D's loss as the reference code).
"""

from ganomaly_jax import config_lib


def skip(config):
  """Turns a base config into SkipGANomaly (shared with the masked and grid-mask methods)."""
  config.model.generator = 'unet'
  config.model.discriminator = 'latent'
  config.model.classifier_kernel = 4
  config.loss.adversarial = 'bce'
  config.loss.latent_in_d = False
  config.eval.score = 'lambda'
  config.eval.score_lambda = 0.9


def get_config(arg=None):
  args = config_lib.parse_arg(arg)
  config = config_lib.base_config()
  config.method = 'skip_ganomaly'
  skip(config)
  return config_lib.finalize(config, args)
