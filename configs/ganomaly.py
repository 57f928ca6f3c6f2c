"""GANomaly (study method 1; Akçay et al. 2018): E-D-E generator, DCGAN discriminator, latent score.

  python -m ganomaly_jax.main --config=configs/ganomaly.py --workdir=/tmp/ganomaly
  python -m ganomaly_jax.main --config=configs/ganomaly.py:quick --workdir=/tmp/q
  python -m ganomaly_jax.main --config=configs/ganomaly.py:dataset=mnist,abnormal=3 --workdir=/tmp/m3
  python -m ganomaly_jax.main --config=configs/ganomaly.py:cars256 --config.dataset.name=folder:/data/cars

Arguments: quick | cars256 | dataset=NAME | abnormal=K | steps=N | batch=N | isize=N | channels=N | seed=N
(and any dotted key, e.g. `train.soft_labels=True`).
"""

from ganomaly_jax.config import arguments, schema


def get_config(arg=None):
  args = arguments.parse_arg(arg)
  config = schema.base_config()
  config.method = 'ganomaly'
  config.eval.score = 'latent'
  return arguments.finalize(config, args)
