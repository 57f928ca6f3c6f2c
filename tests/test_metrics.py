"""metrics.normalise and the image AUROC / AP on hand-made scores, against hand counts and scikit-learn.

(The F1 / threshold keys are left to their own tests.)
"""

import itertools

import numpy as np
import pytest
from sklearn import metrics as sk_metrics

from ganomaly_jax.evaluation import metrics


def _pairwise_auroc(labels, scores) -> float:
  """AUROC by its definition: P(score of an abnormal > score of a normal), ties count one half."""
  pos = [s for s, y in zip(scores, labels) if y == 1]
  neg = [s for s, y in zip(scores, labels) if y == 0]
  wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
  return wins / (len(pos) * len(neg))


def test_normalise_maps_min_to_zero_max_to_one_and_keeps_order():
  scores = np.array([3.0, -1.0, 7.0, 3.0], np.float32)
  np.testing.assert_allclose(metrics.normalise(scores), [0.5, 0.0, 1.0, 0.5])
  assert metrics.normalise(scores).dtype == np.float64


def test_normalise_constant_scores_are_zero_not_nan():
  np.testing.assert_array_equal(metrics.normalise(np.full(5, 2.5)), np.zeros(5))


def test_normalise_is_over_the_whole_set_not_per_batch():
  # The reference pitfall: normalising each batch on its own maps every batch's max to 1.
  scores = np.array([0.0, 1.0, 2.0, 10.0])
  whole = metrics.normalise(scores)
  per_batch = np.concatenate([metrics.normalise(scores[:2]), metrics.normalise(scores[2:])])
  np.testing.assert_allclose(whole, [0.0, 0.1, 0.2, 1.0])
  assert not np.allclose(whole, per_batch)


def test_textbook_case():
  # scikit-learn's documented example: AUROC 0.75, AP (1 + 2/3) / 2.
  m = metrics.image_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
  assert m['image_auroc'] == pytest.approx(0.75)
  assert m['image_ap'] == pytest.approx((1.0 + 2.0 / 3.0) / 2.0)


@pytest.mark.parametrize('seed', range(4))
def test_auroc_and_ap_match_definitions_on_raw_scores(seed):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, 40)
  labels[:2] = [0, 1]
  # Raw scores on an arbitrary scale, with ties (rounded), abnormal ones shifted up a little.
  scores = np.round(rng.normal(size=40) + 0.8 * labels, 1) * 37.0 + 1000.0
  m = metrics.image_metrics(labels, scores)
  assert m['image_auroc'] == pytest.approx(_pairwise_auroc(labels, scores))
  # Normalisation must not change the ranking: the metrics of the raw scores are the same.
  assert m['image_auroc'] == pytest.approx(sk_metrics.roc_auc_score(labels, scores))
  assert m['image_ap'] == pytest.approx(sk_metrics.average_precision_score(labels, scores))


def test_perfect_reversed_and_constant_scores():
  labels = np.array([0, 0, 0, 1, 1])
  good = np.array([0.1, 0.2, 0.3, 0.8, 0.9])
  assert metrics.image_metrics(labels, good)['image_auroc'] == 1.0
  assert metrics.image_metrics(labels, good)['image_ap'] == 1.0
  assert metrics.image_metrics(labels, -good)['image_auroc'] == 0.0
  constant = metrics.image_metrics(labels, np.ones(5))
  assert constant['image_auroc'] == 0.5
  assert constant['image_ap'] == pytest.approx(2 / 5)  # the abnormal fraction


def test_single_class_is_an_error():
  with pytest.raises(ValueError, match='single class'):
    metrics.image_metrics(np.zeros(4), np.arange(4.0))
