"""Scores that remember the normals (issue 33): feature k-NN against the training normals' bank, and
the reconstruction's code length corrected for the image's own complexity."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ganomaly_jax import scores as scores_lib
from ganomaly_jax import state as state_lib
from ganomaly_jax.evaluation import complexity
from ganomaly_jax.config import checks
from ganomaly_jax.evaluation import feature_bank, readout
from ganomaly_jax.runtime import parallel


def test_knn_distance_in_blocks_equals_the_dense_answer():
  rng = np.random.default_rng(0)
  bank = rng.normal(size=(37, 5)).astype(np.float32)
  query = rng.normal(size=(6, 5)).astype(np.float32)
  dense = np.sqrt(((query[:, None] - bank[None]) ** 2).sum(-1))
  want = np.sort(dense, axis=1)[:, :3].mean(1)
  got = jax.jit(scores_lib.knn_distance, static_argnums=(2, 3))(
      query, bank, 3, 8
  )  # 5 blocks, padded
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  # k larger than the bank: the mean over all of it.
  np.testing.assert_allclose(
      scores_lib.knn_distance(query, bank[:2], 5), dense[:, :2].mean(1), rtol=1e-5
  )


def test_reservoir_keeps_all_below_its_size_and_a_seeded_uniform_subset_above():
  stream = np.arange(1000, dtype=np.float32)[:, None]
  small = feature_bank.Reservoir(2000, seed=0)
  for start in range(0, 1000, 64):
    small.add(stream[start : start + 64])
  np.testing.assert_array_equal(small.result(), stream)

  def kept(seed):
    r = feature_bank.Reservoir(100, seed=seed)
    for start in range(0, 1000, 64):
      r.add(stream[start : start + 64])
    return r.result()[:, 0]

  rows = kept(0)
  assert len(rows) == 100 and len(set(rows)) == 100 and set(rows) <= set(range(1000))
  np.testing.assert_array_equal(rows, kept(0))  # seeded
  assert 25 <= np.sum(rows >= 500) <= 75  # late rows are as likely as early ones


def test_a_training_normal_scores_zero_under_feature_knn_with_k_one(tiny_config, build_programs):
  # The bank is the training split's embeddings, so a test image copied from it is at distance 0
  # from its nearest neighbour -- under any state, trained or not.
  config = tiny_config('ganomaly', **{'eval.score': 'knn_code', 'eval.knn_k': 1})
  progs = build_programs(config)
  state = state_lib.create_state(config, progs.components, jax.random.key(0))
  rng = np.random.default_rng(0)
  shape = (config.model.isize, config.model.isize, config.model.channels)
  train = [{'image': rng.integers(0, 256, shape, np.uint8), 'label': 0} for _ in range(20)]
  mesh = parallel.make_mesh(jax.devices()[:1])
  banks = feature_bank.build(config, progs, state, train, mesh, ['code'])
  assert banks['code'].shape == (20, config.model.latent_dim)
  batch = {'image': np.stack([r['image'] for r in train[:8]]).astype(np.float32) / 127.5 - 1.0}
  out = jax.device_get(progs.eval_step(state, batch, banks))
  np.testing.assert_allclose(out['score'], 0.0, atol=1e-3)
  other = {'image': -batch['image']}  # not in the bank
  assert np.all(jax.device_get(progs.eval_step(state, other, banks))['score'] > 1e-3)
  # Without a bank (validation during training) the step leaves the score out.
  assert 'score' not in progs.eval_step(state, batch)


def test_paeth_code_length_is_zero_for_flat_images_and_high_for_noise():
  flat = jnp.full((1, 16, 16, 1), 0.2)
  noise = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (1, 16, 16, 1)), jnp.float32)
  assert float(complexity.generic_bits(flat)[0]) < 0.1  # only the first pixel costs anything
  assert float(complexity.generic_bits(noise)[0]) > 6.0
  # A perfect reconstruction codes an image in zero bits.
  assert float(complexity.model_bits(noise, noise)[0]) == 0.0


def test_a_simple_abnormal_image_is_not_ranked_normal_by_the_corrected_score():
  # Normal images are textured; the abnormal one is flat and rebuilt *better* than every normal one,
  # so the plain reconstruction score ranks it the most normal of all. The corrected score does not.
  rng = np.random.default_rng(1)
  normals = rng.uniform(-1, 1, (8, 16, 16, 1)).astype(np.float32)
  flat = np.full((1, 16, 16, 1), 0.3, np.float32)
  x = jnp.asarray(np.concatenate([normals, flat]))
  error = (
      rng.normal(0, 1, x.shape).astype(np.float32)
      * np.array([0.1] * 8 + [0.05])[:, None, None, None]
  )
  recon = jnp.clip(x + error, -1, 1)
  plain = np.asarray(scores_lib.reconstruction_score(x, recon))
  corrected = np.asarray(complexity.corrected_score(x, recon))
  assert plain[8] < plain[:8].min()  # inverted: the abnormal image looks the most normal
  assert corrected[8] > corrected[:8].max()


@pytest.mark.parametrize(
    'method, scores',
    [
        ('ganomaly', {'knn_code', 'knn_discriminator', 'complexity_corrected'}),
        ('riad', {'knn_code', 'complexity_corrected'}),  # no discriminator
    ],
)
def test_every_method_reads_out_with_the_new_scores(method, scores, tiny_config):
  config = tiny_config(method)
  found = {r.score for r in readout.candidates(config)}
  assert scores <= found  # eval.readout=auto sees them without a line of its own
  for score in scores:
    assert checks.score_problem(config, score) is None
  if method == 'riad':
    assert 'knn_discriminator' not in found


def test_a_bank_score_refuses_the_reference_protocol(tiny_config):
  with pytest.raises(checks.ConfigError, match='bank of training normals'):
    tiny_config('ganomaly', **{'eval.score': 'knn_code', 'eval.protocol': 'reference'})


def test_tables_mark_a_class_below_chance_as_an_inversion():
  from ganomaly_jax.experiments import tables

  rows = [
      {'suite': 's', 'class': c, 'seed': 0, 'method': 'gan', 'status': 'done', 'image_auroc': a}
      for c, a in (('0', 0.9), ('1', 0.3))
  ]
  md = tables.markdown(rows, 'T').splitlines()
  by_class = md.index('## image_auroc per class (mean over seeds)') + 2
  assert md[by_class + 2] == '| gan | **0.900** | **0.300†** | **0.600** |'
  one = md.index('## 1') + 2
  assert md[one + 2].startswith('| gan | 1 | **0.3000 ± 0.0000†** |')
