"""SkipGANomaly (study method 4; Akçay et al. 2019): U-Net generator, latent-feature discriminator.

  python -m ganomaly_jax.main --config=configs/skip_ganomaly.py --workdir=/tmp/skip

G loss: w_adv·BCE(D(x̂), 1) + 50·|x − x̂| + 1·mean((f(x) − f(x̂))²), f = D's latent features.
Score: eq. 6.1, λ·mean((x − x̂)²) + (1 − λ)·mean((f(x) − f(x̂))²) with eval.score_lambda=0.9.
D loss: eq. 3.8, BCE(D(x), 1) + BCE(D(x̂), 0) plus the latent term mean((f(x) − f(x̂))²)
(loss.latent_in_d=True, as the study writes it and as the reference code does).
Switches: model.classifier_kernel (4 as in the study, 3 as in the reference code);
loss.latent_in_d (True: eq. 3.8; --config.loss.latent_in_d=False drops the latent term from D's
loss for the ablation). The masked and grid-mask methods load this function, so they follow eq. 3.8
too. See docs/methods.md#skip_ganomaly.
"""

from ganomaly_jax.config import arguments, schema


def skip(config):
  """Turns a base config into SkipGANomaly (shared with the masked and grid-mask methods)."""
  config.model.generator = 'unet'
  config.model.discriminator = 'latent'
  config.model.classifier_kernel = 4
  config.loss.adversarial = 'bce'
  config.loss.latent_in_d = True  # eq. 3.8: D's loss includes the latent term (ablation: False)
  config.eval.score = 'lambda'
  config.eval.score_lambda = 0.9


def get_config(arg=None):
  args = arguments.parse_arg(arg)
  config = schema.base_config()
  config.method = 'skip_ganomaly'
  skip(config)
  return arguments.finalize(config, args)
