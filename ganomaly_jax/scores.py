"""Anomaly scores: per-image scores as small pure functions, and the registries of scores
(`eval.score`) and of the embeddings that the k-NN scores compare (`FEATURES`).

A method picks its score by name from `SCORES`; the eval step calls the registered function on
`ScoreInputs` and `checks.py` reads each entry's facts (what it needs from the model, whether it fits
masked training, which eval keys only it reads). A new score is one `register_score` call
(docs/extending.md#adding-a-method). Normalisation over the whole test set happens in evaluation.
The scores that remember the normals (k-NN on an embedding, the complexity-corrected code length)
are described in docs/methods.md#scores-that-remember-the-normals.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from ganomaly_jax import losses, similarity
from ganomaly_jax.evaluation import complexity


def _per_example_mean(x: jax.Array) -> jax.Array:
  return jnp.mean(x.reshape(x.shape[0], -1), axis=1)


def latent_score(z: jax.Array, z_hat: jax.Array) -> jax.Array:
  """GANomaly's score: per-image mean((z - ẑ)²)."""
  return _per_example_mean(jnp.square(z - z_hat))


def reconstruction_score(x: jax.Array, recon: jax.Array) -> jax.Array:
  """Per-image mean((x - x̂)²)."""
  return _per_example_mean(jnp.square(x - recon))


def lambda_score(
    x: jax.Array, recon: jax.Array, features_real: jax.Array, features_fake: jax.Array, lam: float
) -> jax.Array:
  """Eq. 6.1: λ mean((x - x̂)²) + (1 - λ) mean((f(x) - f(x̂))²), per image."""
  return lam * reconstruction_score(x, recon) + (1 - lam) * _per_example_mean(
      jnp.square(features_real - features_fake)
  )


class ScoreInputs(NamedTuple):
  """What a score sees at evaluation (eval mode throughout)."""

  x: jax.Array  # images [B, H, W, C]
  outputs: dict  # the generator's outputs: 'recon' and, for the E-D-E generator, 'z', 'z_hat'
  discriminator: Callable[[jax.Array], tuple[jax.Array, jax.Array]]  # images -> (logits, features)
  # The generator's outputs for the whole, unmasked images (for the masked methods `outputs` are
  # the inpaintings' assembly): where an embedding of x is read (`FEATURES`).
  plain_outputs: Callable[[], dict] | None = None
  banks: dict | None = None  # feature name -> [N, D] embeddings of the training normals


@dataclasses.dataclass(frozen=True)
class Feature:
  """An embedding of the images, `fn(inputs) -> [B, D]`, for the scores that compare a test image
  with the training normals (`Score.feature`), and what it needs from the model."""

  fn: Callable[[ScoreInputs], jax.Array]
  needs_outputs: tuple[str, ...] = ()
  needs_discriminator: bool = False


FEATURES: dict[str, Feature] = {}


def register_feature(name: str, entry: Feature) -> Feature:
  """Makes embedding `name` available to the scores (and `feature_bank`)."""
  FEATURES[name] = entry
  return entry


def _flat(x: jax.Array) -> jax.Array:
  return x.reshape(x.shape[0], -1).astype(jnp.float32)


# The generator's innermost code of the unmasked image: GANomaly's z, the U-Nets' bottleneck.
register_feature(
    'code', Feature(lambda s: _flat(s.plain_outputs()['code']), needs_outputs=('code',))
)
# The discriminator's penultimate features of the image (what eq. 3.2 compares).
register_feature(
    'discriminator', Feature(lambda s: _flat(s.discriminator(s.x)[1]), needs_discriminator=True)
)


@dataclasses.dataclass(frozen=True)
class Score:
  """A per-image anomaly score `fn(inputs, step_config) -> [B]` and what it needs."""

  fn: Callable[[ScoreInputs, Any], jax.Array]
  needs_outputs: tuple[str, ...] = ()  # generator outputs beyond 'recon' (models.GENERATORS)
  needs_discriminator: bool = False  # reads D's features (not with model.discriminator=none)
  mask: str = 'any'  # 'required' | 'forbidden' | 'any': whether training with mask.kind fits it
  reads: frozenset[str] = frozenset()  # eval keys only this score uses (validation refuses them
  # away from their defaults with any other score)
  uses_map: bool = False  # reduces the `eval.map` pixel map, so (score, map) is one read-out
  # A FEATURES name: the score compares that embedding of a test image with the training normals'
  # (`inputs.banks[feature]`, built once per evaluation by evaluation/feature_bank.py).
  feature: str | None = None


SCORES: dict[str, Score] = {}


def register_score(name: str, entry: Score) -> Score:
  """Makes `eval.score=<name>` available to the eval step and validation."""
  SCORES[name] = entry
  return entry


def _lambda(s: ScoreInputs, step_config: Any) -> jax.Array:
  _, real_features = s.discriminator(s.x)
  _, fake_features = s.discriminator(s.outputs['recon'])
  return lambda_score(
      s.x, s.outputs['recon'], real_features, fake_features, step_config.eval.score_lambda
  )


# GANomaly's latent score needs the second encoder; with masked training z of a masked input is
# not comparable, so it is refused there.
register_score(
    'latent',
    Score(
        lambda s, _: latent_score(s.outputs['z'], s.outputs['z_hat']),
        needs_outputs=('z', 'z_hat'),
        mask='forbidden',
    ),
)
register_score('reconstruction', Score(lambda s, _: reconstruction_score(s.x, s.outputs['recon'])))
register_score('lambda', Score(_lambda, needs_discriminator=True))  # eq. 6.1
# The masked methods' score: reconstruction error of the full-coverage inpainting.
register_score(
    'inpaint', Score(lambda s, _: reconstruction_score(s.x, s.outputs['recon']), mask='required')
)


# Scores from the pixel map (`eval.map`), Gaussian-smoothed with eval.smooth_sigma first -- the same
# map the pixel metrics see -- so image and pixel results describe one map. RIAD scores an image by
# the maximum of its smoothed map.


def _smoothed_map(s: ScoreInputs, step_config: Any) -> jax.Array:
  amap = losses.anomaly_map(s.x, s.outputs, step_config.eval.map, step_config.eval.map_filter)
  return similarity.gaussian_smooth(amap, step_config.eval.smooth_sigma).reshape(amap.shape[0], -1)


def _map_topk(s: ScoreInputs, step_config: Any) -> jax.Array:
  flat = _smoothed_map(s, step_config)
  k = similarity.topk_count(flat.shape[1], step_config.eval.topk_fraction)
  return jnp.mean(jax.lax.top_k(flat, k)[0], axis=1)


register_score(
    'map_mean',
    Score(lambda s, step_config: jnp.mean(_smoothed_map(s, step_config), axis=1), uses_map=True),
)
register_score(
    'map_max',
    Score(lambda s, step_config: jnp.max(_smoothed_map(s, step_config), axis=1), uses_map=True),
)
register_score('map_topk', Score(_map_topk, reads=frozenset({'eval.topk_fraction'}), uses_map=True))


# Scores that remember the normals (docs/methods.md#scores-that-remember-the-normals): where a test
# image lies among the training normals' embeddings, and the reconstruction's code length corrected
# for the image's own complexity. Both fit every method.

KNN_BLOCK = 4096  # bank rows compared at once: memory is [B, KNN_BLOCK], never [B, N]


def knn_distance(query: jax.Array, bank: jax.Array, k: int, block: int = KNN_BLOCK) -> jax.Array:
  """Mean Euclidean distance of each query [B, D] to its k nearest rows of `bank` [N, D].

  Deep nearest-neighbour anomaly detection (Bergman, Cohen, Hoshen 2020). The bank is searched in
  blocks with a running top-k, so no [B, N] matrix is formed; k is capped at N.
  """
  n = bank.shape[0]
  k = max(1, min(int(k), n))
  block = min(block, n)
  pad = -n % block
  rows = jnp.pad(bank, ((0, pad), (0, 0))).reshape(-1, block, bank.shape[1])
  valid = (jnp.arange(n + pad) < n).reshape(-1, block)
  q_sq = jnp.sum(jnp.square(query), axis=1, keepdims=True)

  def scan_block(nearest, inputs):
    rows_b, valid_b = inputs
    dots = jnp.dot(query, rows_b.T, precision=jax.lax.Precision.HIGHEST)
    d2 = jnp.maximum(q_sq - 2.0 * dots + jnp.sum(jnp.square(rows_b), axis=1)[None], 0.0)
    d2 = jnp.where(valid_b[None], d2, jnp.inf)
    both = jnp.concatenate([nearest, d2], axis=1)
    return -jax.lax.top_k(-both, k)[0], None

  start = jnp.full((query.shape[0], k), jnp.inf, query.dtype)
  nearest, _ = jax.lax.scan(scan_block, start, (rows, valid))
  return jnp.mean(jnp.sqrt(nearest), axis=1)


def _knn_score(feature: str) -> Score:
  entry = FEATURES[feature]

  def fn(s: ScoreInputs, step_config: Any) -> jax.Array:
    if not s.banks or feature not in s.banks:
      raise ValueError(f"score knn_{feature} needs the training normals' {feature} bank.")
    return knn_distance(entry.fn(s), s.banks[feature], step_config.eval.knn_k)

  return Score(
      fn,
      needs_outputs=entry.needs_outputs,
      needs_discriminator=entry.needs_discriminator,
      reads=frozenset({'eval.knn_k'}),
      feature=feature,
  )


register_score('knn_code', _knn_score('code'))
register_score('knn_discriminator', _knn_score('discriminator'))
register_score(
    'complexity_corrected', Score(lambda s, _: complexity.corrected_score(s.x, s.outputs['recon']))
)
