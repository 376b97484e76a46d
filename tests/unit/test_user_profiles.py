"""History pooling: recency-weighted mean of liked items only."""

import numpy as np

from bertrec.server.users import pool_history
from bertrec.store import HistoryEntry


def test_pool_weights_recent_liked_items():
    vectors = {1: np.array([1, 0], np.float32), 2: np.array([0, 1], np.float32), 3: np.array([1, 1], np.float32)}
    entries = [HistoryEntry(1, 1.0, 1.0), HistoryEntry(2, 2.0, 1.0), HistoryEntry(3, 3.0, -1.0)]
    profile = pool_history(entries, vectors, half_life=1.0, dim=2)
    # item 3 is disliked (ignored); item 2 is most recent (weight 1), item 1 one step older (0.5)
    expected = np.array([0.5, 1.0]) / np.linalg.norm([0.5, 1.0])
    np.testing.assert_allclose(profile.vector, expected, rtol=1e-6)
    assert sorted(profile.history_ids.tolist()) == [1, 2]


def test_no_liked_items_gives_no_vector():
    profile = pool_history([HistoryEntry(1, 1.0, 0.0)], {1: np.ones(2, np.float32)}, 20.0, 2)
    assert profile.vector is None and len(profile.history_ids) == 0
