"""Ranking arithmetic against hand-worked cases."""

import numpy as np
import pytest

from bertrec.server.ranking import closest_history, mmr, order_by_score, tie_break_keys


def test_order_is_by_score_then_fixed_random_key():
    ids = np.array([1, 2, 3, 4, 5], np.int64)
    scores = np.array([0.5, 0.9, 0.5, 0.1, 0.5], np.float32)
    order = order_by_score(scores, ids)
    assert ids[order][0] == 2 and ids[order][-1] == 4
    tied = ids[order][1:4]
    assert sorted(tied) == [1, 3, 5]
    # ties follow the fixed key, which is neither id order nor reverse id order in general
    keys = tie_break_keys(np.array([1, 3, 5], np.int64))
    assert list(tied) == list(np.array([1, 3, 5])[np.argsort(keys)])
    np.testing.assert_array_equal(order_by_score(scores, ids), order)  # deterministic


def test_mmr_without_diversity_is_relevance_order():
    rel = np.array([0.1, 0.9, 0.5])
    assert mmr(rel, np.eye(3, dtype=np.float32), 2, 0.0).tolist() == [1, 2]


def test_mmr_skips_near_duplicates():
    # items 0 and 1 are identical; 2 is orthogonal but slightly less relevant
    vectors = np.array([[1, 0], [1, 0], [0, 1]], np.float32)
    rel = np.array([0.9, 0.89, 0.8], np.float32)
    assert mmr(rel, vectors, 2, 0.0).tolist() == [0, 1]
    # with diversity 0.5: after 0, item 1 scores 0.5*0.89 - 0.5*1 < item 2's 0.5*0.8 - 0
    assert mmr(rel, vectors, 2, 0.5).tolist() == [0, 2]


def test_closest_history():
    items = np.array([[1, 0], [0, 1]], np.float32)
    hist_ids = np.array([10, 20], np.int64)
    hist = np.array([[0.6, 0.8], [1, 0]], np.float32)
    ids, sims = closest_history(items, hist_ids, hist)
    assert ids.tolist() == [20, 10]
    np.testing.assert_allclose(sims, [1.0, 0.8])
    ids, sims = closest_history(items, np.zeros(0, np.int64), np.zeros((0, 2), np.float32))
    assert ids.tolist() == [0, 0]


def test_search_hits_drop_padding_exclusions_and_repeats_in_index_order():
    from bertrec.server.recommend import _hits

    ids = np.array([7, 3, 9, 3, 5, -1, -1], np.int64)
    scores = np.array([0.9, 0.8, 0.7, 0.8, 0.6, -np.inf, -np.inf], np.float32)
    kept, kept_scores = _hits(ids, scores, np.array([9], np.int64))
    assert kept.tolist() == [7, 3, 5]
    assert kept_scores.tolist() == pytest.approx([0.9, 0.8, 0.6])
    assert kept.dtype == np.int64 and kept_scores.dtype == np.float32
    kept, _ = _hits(ids, scores, np.zeros(0, np.int64))
    assert kept.tolist() == [7, 3, 9, 5]
    # Exclusions below, between and above the hits, the largest id excluded too.
    kept, _ = _hits(ids, scores, np.array([1, 4, 7, 9, 100], np.int64))
    assert kept.tolist() == [3, 5]
    kept, _ = _hits(ids, scores, np.array([3, 5, 7, 9], np.int64))
    assert kept.tolist() == []
    kept, kept_scores = _hits(np.array([-1], np.int64), np.array([0.0], np.float32), np.array([2], np.int64))
    assert len(kept) == len(kept_scores) == 0


def test_exclusions_union_sorted_and_distinct():
    from bertrec.server.recommend import _sorted_union

    seen = np.array([2, 5, 9], np.int64)
    assert _sorted_union([np.zeros(0, np.int64), seen]) is seen  # the cached array, not a copy
    assert _sorted_union([np.array([9, 1, 1], np.int64)]).tolist() == [1, 9]  # a request's own ids
    assert _sorted_union([np.array([7, 2], np.int64), seen]).tolist() == [2, 5, 7, 9]
    assert _sorted_union([np.zeros(0, np.int64)] * 2).tolist() == []
