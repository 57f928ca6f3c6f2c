"""The generator's optional extensions: residual blocks, self-attention and dropout (MC-dropout)."""

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ganomaly_jax.models import layers
from ganomaly_jax.models.dcgan import EDEGenerator
from ganomaly_jax.models.unet import UNetGenerator

X = jax.random.uniform(jax.random.key(0), (2, 16, 16, 1), minval=-1.0, maxval=1.0)


def _init(model):
  return model.init({'params': jax.random.key(1), 'dropout': jax.random.key(2)}, X, train=False)


def _paths(variables) -> set[str]:
  return {'/'.join(k) for k in flax.traverse_util.flatten_dict(variables['params'])}


def test_residual_blocks_add_shape_preserving_blocks_at_every_normalised_level():
  plain = _paths(_init(EDEGenerator(16, 1, latent_dim=8, base=4)))
  variables = _init(EDEGenerator(16, 1, latent_dim=8, base=4, residual_blocks=True))
  added = _paths(variables) - plain
  # 16x16 input: encoder levels 0 (no norm, no block) and 1; decoder levels 0 and 1.
  assert {p.split('/')[1] for p in added} == {'res_1', 'res_0'}
  assert {p.split('/')[0] for p in added} == {'encoder1', 'decoder', 'encoder2'}
  out = EDEGenerator(16, 1, latent_dim=8, base=4, residual_blocks=True).apply(
      variables, X, train=False
  )
  assert out['recon'].shape == X.shape and out['z'].shape == (2, 8)


def test_residual_block_is_identity_plus_a_learned_branch():
  block = layers.ResidualBlock(lambda h: h)  # linear activation exposes x + branch(x)
  x = jnp.ones((1, 4, 4, 3))
  variables = block.init(jax.random.key(0), x, train=False)
  zeroed = jax.tree.map(jnp.zeros_like, variables['params'])
  # With the last BatchNorm's scale and bias at 0 the branch vanishes: the output is x itself.
  params = dict(variables['params'])
  params['BatchNorm_1'] = zeroed['BatchNorm_1']
  y = block.apply({**variables, 'params': params}, x, train=False)
  np.testing.assert_allclose(y, x, atol=1e-6)


def test_self_attention_starts_as_identity_and_then_mixes_positions():
  attention = layers.SelfAttention()
  x = jax.random.normal(jax.random.key(3), (2, 4, 4, 16))
  variables = attention.init(jax.random.key(4), x)
  assert float(variables['params']['gamma']) == 0.0
  np.testing.assert_allclose(attention.apply(variables, x), x)
  params = {**variables['params'], 'gamma': jnp.asarray(1.0)}
  y = attention.apply({'params': params}, x)
  assert not np.allclose(y, x)
  # Non-local: changing one position changes the output at another.
  x2 = x.at[:, 0, 0].add(5.0)
  y2 = attention.apply({'params': params}, x2)
  assert not np.allclose(y2[:, 3, 3], y[:, 3, 3])


def test_self_attention_sits_at_the_requested_decoder_resolution():
  variables = _init(EDEGenerator(16, 1, latent_dim=8, base=4, self_attention=8))
  decoder = variables['params']['decoder']
  assert 'attention' in decoder and decoder['attention']['value']['kernel'].shape[-1] == 4
  assert 'attention' not in _init(EDEGenerator(16, 1, latent_dim=8, base=4))['params']['decoder']


@pytest.mark.slow
def test_dropout_is_off_in_eval_and_random_when_stochastic():
  for model in (
      EDEGenerator(16, 1, latent_dim=8, base=4, dropout=0.5),
      UNetGenerator(16, 1, base=4, dropout=0.5),
  ):
    variables = _init(model)
    run = lambda rng, stochastic, model=model, variables=variables: model.apply(
        variables, X, train=False, stochastic=stochastic, rngs={'dropout': rng}
    )['recon']
    np.testing.assert_array_equal(run(jax.random.key(5), False), run(jax.random.key(6), False))
    a, b = run(jax.random.key(5), True), run(jax.random.key(6), True)
    assert not np.allclose(a, b)  # MC-dropout samples differ
    np.testing.assert_array_equal(a, run(jax.random.key(5), True))  # and are reproducible
