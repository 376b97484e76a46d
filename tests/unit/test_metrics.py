"""Metric functions against hand-computed cases."""

import numpy as np
import pytest

from bertrec.evaluation.metrics import (
    coverage_at,
    hit_rate_at,
    ndcg_at,
    paired_difference,
    per_user_metrics,
    recall_at,
    top_k,
)


def test_recall_ndcg_hitrate_by_hand():
    # user 0: relevant {a, c}; ranked a, b, c  -> hits 1, 0, 1
    # user 1: relevant {d};    ranked a, b, c  -> no hits
    hits = np.array([[1, 0, 1], [0, 0, 0]], dtype=float)
    n_rel = np.array([2, 1], dtype=float)
    np.testing.assert_allclose(recall_at(hits, n_rel, 1), [0.5, 0.0])
    np.testing.assert_allclose(recall_at(hits, n_rel, 3), [1.0, 0.0])
    # DCG@3 = 1/log2(2) + 1/log2(4) = 1.5; IDCG@3 (2 relevant) = 1 + 1/log2(3)
    np.testing.assert_allclose(ndcg_at(hits, n_rel, 3), [1.5 / (1 + 1 / np.log2(3)), 0.0])
    # NDCG@1: first is a hit, ideal with 1 slot = 1
    np.testing.assert_allclose(ndcg_at(hits, n_rel, 1), [1.0, 0.0])
    np.testing.assert_allclose(hit_rate_at(hits, 2), [1.0, 0.0])


def test_per_user_metrics_from_rankings():
    candidate_ids = np.array([10, 20, 30, 40])
    top = np.array([[0, 1, 2], [3, 2, 1]])  # user 0 ranks 10, 20, 30; user 1 ranks 40, 30, 20
    relevant = [{30}, {40, 10}]
    m = per_user_metrics(top, relevant, candidate_ids, ks=(2,))
    np.testing.assert_allclose(m["recall@2"], [0.0, 0.5])
    np.testing.assert_allclose(m["ndcg@2"], [0.0, 1.0 / (1 + 1 / np.log2(3))])


def test_coverage():
    assert coverage_at(np.array([[0, 1], [1, 2]]), 2, 10) == pytest.approx(0.3)
    assert coverage_at(np.array([[0, 1], [1, 2]]), 1, 10) == pytest.approx(0.2)


def test_top_k_breaks_ties_by_key_not_by_position():
    scores = np.array([[1.0, 5.0, 5.0, 5.0, 0.0]])
    keys = np.array([0.9, 0.1, 0.8, 0.5, 0.0])
    assert top_k(scores, 3, keys).tolist() == [[2, 3, 1]]
    assert top_k(np.array([[-np.inf, 2.0, 1.0]]), 2, np.zeros(3)).tolist() == [[1, 2]]


def test_paired_difference():
    mean, se = paired_difference(np.array([0.2, 0.4, 0.6]), np.array([0.1, 0.1, 0.1]))
    assert mean == pytest.approx(0.3)
    assert se == pytest.approx(np.std([0.1, 0.3, 0.5], ddof=1) / np.sqrt(3))
