"""The CPU switch: same parameters and losses on or off; steps lowered off CPU hold no CPU form.

`runtime.cpu_kernels='auto'` routes flax's conv/BN calls to the CPU forms with
`jax.lax.platform_dependent`, so a step exported for TPU or CUDA must be flax's computation alone.
The CPU forms run under the named scope `kernels.CPU_SCOPE`, which the lowered program's locations
carry; the export tests look for it (and a CPU export shows the detector finds it).
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from ganomaly_jax.config import schema
from ganomaly_jax.cpu import batch_norm, kernels
from ganomaly_jax.models import layers
from helpers import tiny

FAST_METHODS = ('ganomaly', 'skip_ganomaly')


def _config(method: str, cpu_kernels: str = 'auto') -> ml_collections.ConfigDict:
  """The tiny config of `method` with the CPU switch set. At 'auto' (the default) its train step
  is the program tests/test_step.py compiles: the session's compilation cache holds it once."""
  return tiny.tiny_config(method, **{'runtime.cpu_kernels': cpu_kernels})


def _methods():
  return [
      m if m in FAST_METHODS else pytest.param(m, marks=pytest.mark.slow) for m in schema.METHODS
  ]


def _architectures():
  """One method per distinct pair of networks (generator, discriminator and their layer settings):
  the CPU switch replaces layers, so methods with the same networks (masked and grid_mask train
  skip_ganomaly's U-Net and discriminator on masked copies) share one check."""
  seen, picked = set(), []
  for method in schema.METHODS:
    model = tiny.tiny_config(method).model.to_dict()
    key = repr(sorted(model.items()))
    if key not in seen:
      seen.add(key)
      picked.append(method)
  return [m if m in FAST_METHODS else pytest.param(m, marks=pytest.mark.slow) for m in picked]


def _abstract_args(config, progs):
  state = jax.eval_shape(progs.init, jax.random.key(0))
  images = jax.ShapeDtypeStruct(
      (config.train.batch_size, config.model.isize, config.model.isize, config.model.channels),
      jnp.float32,
  )
  rng = jax.eval_shape(lambda: jax.random.key(1))
  return state, {'image': images}, rng


@pytest.mark.slow  # trains every architecture twice
@pytest.mark.parametrize('method', _architectures())
def test_off_and_auto_train_alike(method, build_programs):
  # Two train steps from the same initial state: parameters and losses agree to float tolerance.
  images = jax.random.uniform(jax.random.key(3), (2, 8, 16, 16, 1), minval=-1.0, maxval=1.0)
  outcomes = {}
  for mode in ('off', 'auto'):
    progs = build_programs(_config(method, cpu_kernels=mode))
    state = progs.init(jax.random.key(0))
    losses = []
    for i in range(2):
      state, metrics = progs.train_step(state, {'image': images[i]}, jax.random.key(i + 10))
      losses.append(jax.device_get(metrics))
    outcomes[mode] = (jax.device_get(state), losses)
  (state_off, losses_off), (state_auto, losses_auto) = outcomes['off'], outcomes['auto']
  assert jax.tree.structure(state_off) == jax.tree.structure(state_auto)
  for field in ('g_params', 'd_params', 'g_stats', 'd_stats'):
    for a, b in zip(
        jax.tree.leaves(getattr(state_off, field)), jax.tree.leaves(getattr(state_auto, field))
    ):
      np.testing.assert_allclose(a, b, atol=2e-4, rtol=2e-3, err_msg=f'{method} {field}')
  for off, auto in zip(losses_off, losses_auto):
    for key in off:
      np.testing.assert_allclose(off[key], auto[key], atol=1e-4, rtol=1e-3, err_msg=key)


def _exported(fn, args, platforms) -> str:
  return jax.export.export(fn, platforms=platforms)(*args).mlir_module()


@pytest.mark.parametrize('method', _methods())
def test_steps_lower_for_tpu_and_cuda_without_cpu_forms(method, build_programs):
  config = _config(method)  # cpu_kernels='auto', the default
  progs = build_programs(config)
  state, batch, rng = _abstract_args(config, progs)
  for name, fn, args in (
      ('train_step', progs.train_step, (state, batch, rng)),
      ('eval_step', progs.eval_step, (state, batch)),
      ('eval_maps', progs.eval_maps, (state, batch)),
  ):
    text = _exported(fn, args, ('tpu', 'cuda'))
    assert kernels.CPU_SCOPE not in text, f'{method} {name}: a CPU-only form lowered for TPU/CUDA'
    assert 'stablehlo.convolution' in text  # flax's own convolutions are there instead


def test_the_export_check_would_see_a_cpu_form(build_programs):
  # The same detector on a CPU export finds the CPU forms: a leak off CPU would fail the test above.
  config = _config('ganomaly')
  progs = build_programs(config)
  state, batch, rng = _abstract_args(config, progs)
  assert kernels.CPU_SCOPE in _exported(progs.train_step, (state, batch, rng), ('cpu',))
  off = build_programs(_config('ganomaly', cpu_kernels='off'))
  assert kernels.CPU_SCOPE not in _exported(off.train_step, (state, batch, rng), ('cpu',))


# ---- BatchNorm statistics at a large mean ----


def _activations():
  rng = np.random.default_rng(0)
  x64 = 100.0 + rng.standard_normal((64, 8, 8, 16))
  rows = x64.reshape(-1, 16)
  return jnp.asarray(x64, jnp.float32), rows.mean(0), rows.var(0)


def _relative_error(got, want) -> float:
  return float(np.max(np.abs(np.asarray(got, np.float64) - want) / np.abs(want)))


def _matmul_stats_bf16_products(x):
  """The earlier BatchNorm form (E[x] and E[x^2] as `weights @ rows`) with its products rounded to
  bfloat16, as a TPU runs a float32 dot at default precision."""
  rows = x.reshape(-1, x.shape[-1]).astype(jnp.float32)
  weights = jnp.full((rows.shape[0],), 1.0 / rows.shape[0], jnp.float32)
  dot = lambda a, b: jnp.dot(
      a.astype(jnp.bfloat16), b.astype(jnp.bfloat16), preferred_element_type=jnp.float32
  )
  mean = dot(weights, rows)
  return mean, jnp.maximum(dot(weights, rows * rows) - mean * mean, 0.0)


def _bn_batch_stats(x, mode):
  """(mean, var) that the models' BatchNorm records for a batch (momentum 0: the batch's own)."""
  module = layers.batch_norm(True, jnp.float32).clone(momentum=0.0)
  variables = module.init(jax.random.key(0), x)
  fn = kernels.with_cpu_kernels(lambda v, x: module.apply(v, x, mutable=['batch_stats'])[1], mode)
  stats = jax.jit(fn)(variables, x)['batch_stats']
  return stats['mean'], stats['var']


def test_batch_norm_statistics_at_a_large_mean():
  x, mean64, var64 = _activations()
  # The earlier matmul form, with bfloat16 products as on TPU: the variance is lost.
  old_mean, old_var = _matmul_stats_bf16_products(x)
  assert _relative_error(old_var, var64) > 1e-3
  # The plain path (what every platform but CPU runs): float32 reductions, centred variance.
  for mean, var in (_bn_batch_stats(x, 'off'), jax.jit(kernels._exact_stats)(x)):
    assert _relative_error(mean, mean64) < 1e-3 and _relative_error(var, var64) < 1e-3
  # The CPU form (HIGHEST-precision products of shifted values) is within tolerance as well.
  for mean, var in (_bn_batch_stats(x, 'auto'), jax.jit(batch_norm.batch_stats)(x)):
    assert _relative_error(mean, mean64) < 1e-3 and _relative_error(var, var64) < 1e-3


def test_batch_norm_off_cpu_has_no_products():
  # Lowered for TPU/CUDA, the training BatchNorm is reductions only (nothing a bf16 pass could
  # round); lowered for CPU it is the matrix-vector form at HIGHEST precision.
  x = jax.ShapeDtypeStruct((8, 4, 4, 16), jnp.float32)
  module = layers.batch_norm(True, jnp.float32)
  variables = jax.eval_shape(module.init, jax.random.key(0), x)
  fn = jax.jit(kernels.with_cpu_kernels(lambda v, x: module.apply(v, x, mutable=['batch_stats'])))
  assert 'dot_general' not in _exported(fn, (variables, x), ('tpu', 'cuda'))
  cpu = _exported(fn, (variables, x), ('cpu',))
  assert 'dot_general' in cpu and 'HIGHEST' in cpu
