"""The training normals' embeddings, for the scores that compare a test image with them.

A score with a `feature` (`scores.Score.feature`: knn_code, knn_discriminator) needs the embeddings
of the training normals under the selected checkpoint: its "bank". The bank is built once per
evaluation, streamed: the training split goes through the embedding program one global batch at a
time (each process decodes only its own slice, `passes.gathered_batches`), and only the embeddings
are kept, at most `eval.bank_size` of them (beyond that, a uniform random subset drawn by reservoir
sampling, seeded by `config.seed`). Memory is `bank_size` x D floats whatever the data's size: for
54,000 MNIST normals and GANomaly's 100-dimensional z, 21.6 MB; the discriminator's features are
wider (4,096 dimensions at 32 px, ndf 64: 45,000 normals are 744 MB, and the search costs as much
more), where a smaller `eval.bank_size` is the lever.

The bank is replicated on every device; `scores.knn_distance` searches it in blocks.
"""

from __future__ import annotations

from typing import Any, Iterable

from absl import logging
import jax
import ml_collections
import numpy as np

from ganomaly_jax import programs
from ganomaly_jax import scores as scores_lib
from ganomaly_jax.evaluation import passes
from ganomaly_jax.runtime import parallel


def features_of(scores: Iterable[str]) -> tuple[str, ...]:
  """The features (`scores.FEATURES` names) the given scores read, in order, without repeats."""
  found = (scores_lib.SCORES[s].feature for s in scores)
  return tuple(dict.fromkeys(f for f in found if f is not None))


class Reservoir:
  """At most `size` rows of a stream, each row of the stream equally likely to be kept (algorithm R,
  vectorised per batch); seeded, so a bank is the same on every host and every run."""

  def __init__(self, size: int, seed: int):
    self.size = int(size)
    self.rng = np.random.default_rng(seed)
    self.rows: np.ndarray | None = None
    self.seen = 0

  def add(self, batch: np.ndarray) -> None:
    batch = np.asarray(batch, np.float32)
    if self.rows is None:
      self.rows = np.empty((self.size, batch.shape[1]), np.float32)
    fill = min(len(batch), self.size - min(self.seen, self.size))
    if fill > 0:
      self.rows[self.seen : self.seen + fill] = batch[:fill]
    positions = self.seen + fill + np.arange(len(batch) - fill)  # stream positions of the rest
    if len(positions):
      slots = self.rng.integers(0, positions + 1)  # row i replaces slot j < size w.p. size/(i+1)
      keep = slots < self.size
      self.rows[slots[keep]] = batch[fill:][keep]
    self.seen += len(batch)

  def result(self) -> np.ndarray:
    if self.rows is None:
      return np.zeros((0, 0), np.float32)
    return self.rows[: min(self.seen, self.size)]


def build(
    config: ml_collections.ConfigDict,
    progs: programs.Programs,
    state: Any,
    source,
    mesh,
    features: Iterable[str],
) -> dict[str, jax.Array]:
  """{feature: [N, D] embeddings of `source`'s images} under `state`, N <= eval.bank_size.

  `source` is the training split (normals only). Raises ValueError for an empty source: a score
  that compares with the training normals has nothing to compare with.
  """
  return {f: _bank(config, progs, state, source, mesh, f) for f in features}


def _bank(config, progs, state, source, mesh, feature: str) -> jax.Array:
  embed = programs.embed_program(config, progs, feature)
  reservoir = Reservoir(config.eval.bank_size, config.seed)
  for out in passes.gathered_batches(
      lambda s, b: {'embedding': embed(s, b)},
      state,
      source,
      mesh,
      config.eval.batch_size,
      keys=('embedding',),
      host_keys=(),
  ):
    reservoir.add(out['embedding'])
  rows = reservoir.result()
  if not len(rows):
    raise ValueError(f'The {feature} bank is empty: the training split has no images.')
  logging.info(
      'Feature bank %s: %d of %d training normals, %d dimensions (%.1f MB).',
      feature,
      len(rows),
      reservoir.seen,
      rows.shape[1],
      rows.nbytes / 1e6,
  )
  sharding = parallel.replicated(mesh)  # every host holds the same rows (gathered above)
  return jax.make_array_from_callback(rows.shape, sharding, lambda index: rows[index])
