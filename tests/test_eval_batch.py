"""A score depends only on its own image: not on its batch-mates, nor on a last batch's padding.

Evaluation runs BatchNorm with its running statistics (eval mode); train-mode BatchNorm (the reference
code's pitfall), or a masking step that mixed images across the batch, would make the score of an
image change with the other images evaluated beside it.
"""

import jax
import numpy as np
import pytest

from ganomaly_jax import state as state_lib
from ganomaly_jax.runtime import parallel
from ganomaly_jax.evaluation import passes
from ganomaly_jax.data import pipeline, sources
from helpers import tiny

BATCH = 4


def _setup(method: str):
  """Eval step and a state whose BatchNorm running statistics are far from the identity."""
  config = tiny.tiny_config(method)
  progs = tiny.build_programs(config)
  state = state_lib.create_state(config, progs.components, jax.random.key(0))
  rng = np.random.default_rng(1)

  def perturb(path, leaf):
    name = str(path[-1])
    noise = rng.uniform(0.5, 2.0, np.shape(leaf)).astype(np.float32)
    return leaf * noise if 'var' in name else leaf + noise - 1.25

  state = state.replace(
      g_stats=jax.tree_util.tree_map_with_path(perturb, state.g_stats),
      d_stats=jax.tree_util.tree_map_with_path(perturb, state.d_stats),
  )
  return config, state, progs.eval_step


def _images(config, n: int, seed: int) -> np.ndarray:
  shape = (n, config.model.isize, config.model.isize, config.model.channels)
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.mark.parametrize('method', ['ganomaly', 'masked'])
def test_eval_step_score_ignores_batch_mates_and_padding(method):
  config, state, eval_fn = _setup(method)
  x = _images(config, 1, 0)
  batches = {
      'mates_a': np.concatenate([x, _images(config, BATCH - 1, 1)]),
      # x first again, beside other images:
      'mates_b': np.concatenate([_images(config, BATCH - 1, 2), x])[::-1],
      'padding': np.concatenate([x, np.zeros((BATCH - 1,) + x.shape[1:], np.uint8)]),
  }
  scores = {
      k: np.asarray(eval_fn(state, {'image': pipeline.to_float(b)})['score'])
      for k, b in batches.items()
  }
  for key in ('mates_b', 'padding'):
    np.testing.assert_allclose(scores[key][0], scores['mates_a'][0], rtol=1e-5, err_msg=key)
  # The batch-mates themselves do score differently: the comparison above is not vacuous.
  assert not np.allclose(scores['mates_a'][1:], scores['padding'][1:], rtol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize('method', ['ganomaly', 'masked'])
def test_run_eval_scores_do_not_depend_on_batch_size(method):
  config, state, eval_fn = _setup(method)
  n = 2 * BATCH + 1  # the last batch of BATCH is padded with BATCH - 1 fillers
  source = sources.ArraySource('t', _images(config, n, 3), np.arange(n) % 2)
  mesh = parallel.make_mesh()
  state = parallel.replicate(state, mesh)
  by_size = {b: passes.run_eval(eval_fn, state, source, mesh, b) for b in (1, BATCH, n)}
  for b in (BATCH, n):
    assert len(by_size[b]['score']) == n
    np.testing.assert_allclose(by_size[b]['score'], by_size[1]['score'], rtol=1e-5, err_msg=str(b))
    np.testing.assert_array_equal(by_size[b]['label'], source.labels)
