"""The user towers' training examples and history pooling, as the service pools."""

import numpy as np

from bertrec.evaluation.data import Dataset
from bertrec.server.users import pool_history
from bertrec.store import HistoryEntry
from bertrec.training.pairs import log_q
from bertrec.training.user_tower import NONE, history_examples, pooling_matrix
from bertrec.types import Item


def test_examples_are_the_latest_liked_items_before_each_like():
    users = np.array(["a"] * 5 + ["b"] * 2)
    items = np.array([1, 2, 9, 3, 2, 4, 5], np.int64)
    ratings = np.array([5, 5, 1, 5, 5, 5, 5], np.float32)  # item 9 is not liked
    ds = Dataset([Item(i, f"t{i}") for i in range(1, 10)], users, items, np.arange(7.0), ratings, 4.0)
    rows = sorted(map(tuple, history_examples(ds, history_items=2).tolist()))
    # a liked 1, 2, 3, 2: the second like of 2 has it in its history and is left out
    assert rows == [(NONE, 1, 2), (NONE, 4, 5), (1, 2, 3)]
    assert set(log_q(np.array(rows))) == {2, 3, 5}  # the last column is the positive


def test_pooling_matrix_weights_as_the_service_pools():
    rng = np.random.default_rng(0)
    vectors = {i: v for i, v in enumerate(rng.standard_normal((6, 4)).astype(np.float32), 1)}
    histories = np.array([[NONE, NONE, 3, 1], [2, 5, 5, 6]])
    ids, matrix = pooling_matrix(histories, half_life=2.0)
    pooled = matrix @ np.stack([vectors[int(i)] for i in ids])
    for row, history in zip(pooled, histories):
        entries = [HistoryEntry(int(i), float(n), 1.0) for n, i in enumerate(history) if i != NONE]
        expected = pool_history(entries, vectors, 2.0, 4).vector
        np.testing.assert_allclose(row / np.linalg.norm(row), expected, rtol=1e-5)
