"""The re-ranker's pieces against hand-computed cases: signals, features, training, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from bertrec.rerank.features import SCALAR_FEATURES, UserContext, pair_features
from bertrec.rerank.model import FusionReranker
from bertrec.rerank.signals import DAY, Interactions, ItemSignals, TextNeighbours, fit_ease
from bertrec.rerank.training import CandidateLists, RerankTraining, train_reranker


def _interactions() -> Interactions:
    # users 0..2; items 0..4; item 4 never liked
    rows = np.array([0, 0, 1, 1, 1, 2, 2])
    cols = np.array([0, 1, 0, 1, 2, 1, 3])
    times = np.array([0, 1, 2, 3, 4, 5, 40]) * DAY
    return Interactions(rows, cols, times.astype(float), 3, 5)


def _vectors(n=5, dim=8, seed=0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_sparse_ease_keeping_everything_equals_the_closed_form():
    x = sp.csr_matrix(np.random.default_rng(1).random((30, 6)) < 0.4, dtype=np.float32)
    l2 = 5.0
    g = (x.T @ x).toarray().astype(np.float64) + l2 * np.eye(6)
    p = np.linalg.inv(g)
    expected = p / -np.diag(p)
    np.fill_diagonal(expected, 0.0)
    got = fit_ease(x, l2, keep=6).toarray()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    kept = fit_ease(x, l2, keep=2).toarray()
    assert ((kept != 0).sum(0) <= 2).all()


def test_ease_over_the_most_liked_items_only_when_capped():
    rng = np.random.default_rng(2)
    x = sp.csr_matrix(rng.random((40, 8)) < np.linspace(0.9, 0.1, 8), dtype=np.float32)
    likes = np.asarray(x.sum(0)).ravel()
    top = np.sort(np.argsort(-likes, kind="stable")[:5])
    capped = fit_ease(x, 3.0, keep=8, max_items=5).toarray()
    rest = np.setdiff1d(np.arange(8), top)
    assert not capped[rest].any() and not capped[:, rest].any()
    # Among the kept items it is EASE fitted on their columns alone.
    expected = fit_ease(sp.csr_matrix(x[:, top]), 3.0, keep=8).toarray()
    np.testing.assert_allclose(capped[np.ix_(top, top)], expected, atol=1e-6)


def test_item_signals_counts_recency_and_text_prior():
    inter = _interactions()
    v = _vectors()
    s = ItemSignals.fit(inter, v, l2=1.0, keep=5)
    assert s.counts.tolist() == [2, 3, 1, 1, 0]
    assert s.first_seen[1] == 1 * DAY and np.isinf(s.first_seen[4])
    # item 1 liked on days 1, 3, 5: two of them in the 3 days up to day 5
    np.testing.assert_array_equal(s.recent_likes(np.array([1, 3, -1]), 5 * DAY, 3), [2, 0, 0])
    cols = np.array([0, 4, -1])
    prior = s.prior(cols, v[[0, 4, 4]])
    assert prior[0] == np.float32(np.log1p(2))
    # an unliked item and an unknown one with the same vector get the same text-predicted prior
    assert prior[1] == prior[2] and np.isfinite(prior[1])


def test_pair_features_leave_collaborative_features_zero_for_unknown_items():
    inter = _interactions()
    v = _vectors()
    s = ItemSignals.fit(inter, v, l2=1.0, keep=5)
    user = UserContext(np.array([0, 1]), v[[0, 1]], v[0], now=10 * DAY)
    cols = np.array([2, 3, -1])
    f = pair_features(user, cols, v[[2, 3, 4]], s)
    assert f.shape == (3, len(SCALAR_FEATURES))
    named = dict(zip(SCALAR_FEATURES, f.T))
    assert named["known"].tolist() == [1, 1, 0]
    assert named["ease"][2] == 0 and named["item_knn"][2] == 0
    np.testing.assert_allclose(named["text_cosine"], v[[2, 3, 4]] @ v[0], rtol=1e-6)
    # item 3 was first liked on day 40, after this user's "now": no age yet
    assert named["item_age_days"][1] == 0 and named["item_age_days"][0] > 0


def _synthetic_lists(n_lists=120, width=20, dim=8, seed=0) -> tuple[CandidateLists, np.ndarray]:
    """The positive is the candidate with the largest `ease` feature; other features are noise."""
    rng = np.random.default_rng(seed)
    scalars = rng.normal(size=(n_lists, width, len(SCALAR_FEATURES))).astype(np.float32)
    labels = np.zeros((n_lists, width), np.float32)
    best = scalars[:, :, SCALAR_FEATURES.index("ease")].argmax(1)
    labels[np.arange(n_lists), best] = 1.0
    cols = rng.integers(0, 50, size=(n_lists, width))
    users = _vectors(n_lists, dim, seed + 1)
    mask = np.ones((n_lists, width), bool)
    return CandidateLists(scalars, cols, users, labels, mask, ["warm"] * n_lists), _vectors(50, dim, seed + 2)


@pytest.mark.parametrize("interaction_dims", [16, 0])
def test_training_learns_the_planted_signal_and_survives_save_and_load(tmp_path, interaction_dims):
    lists, vectors = _synthetic_lists()
    config = RerankTraining(members=2, epochs=30, lr=3e-3, interaction_dims=interaction_dims)
    model, summary = train_reranker(lists, vectors, config)
    assert summary["holdout_ndcg@10"] > 0.8  # random order would give about 0.3 here
    scores = model.score(lists.scalars[:5], lists.users[:5], vectors[lists.cols[:5]])
    model.save(tmp_path / "rr", {"encoder": "test"})
    loaded, card = FusionReranker.load(tmp_path / "rr")
    assert card["encoder"] == "test" and card["shape"]["members"] == 2
    assert card["shape"]["interaction_dims"] == interaction_dims
    np.testing.assert_allclose(loaded.score(lists.scalars[:5], lists.users[:5], vectors[lists.cols[:5]]), scores)


def test_text_neighbours_are_liked_items_never_the_item_itself():
    inter = _interactions()
    v = _vectors()
    s = ItemSignals.fit(inter, v, l2=1.0, keep=5)
    nb = s.neighbours
    assert nb.k == 4  # items 0..3 have likes; item 4 does not
    for col in range(5):
        cols = nb.cols[col][nb.cols[col] >= 0]
        assert col not in cols and set(cols.tolist()) <= {0, 1, 2, 3}
        expected = sorted(({0, 1, 2, 3} - {col}), key=lambda j: -float(v[col] @ v[j]))
        assert cols.tolist() == expected
    # an item the signals have no column for is searched, and may meet every liked item
    cols, sims = nb.of(np.array([-1]), v[[4]])
    np.testing.assert_array_equal(cols[0], nb.cols[4])
    np.testing.assert_allclose(sims[0], nb.sims[4], rtol=1e-5)
    assert (sims >= 0).all()


def test_text_neighbours_beyond_the_exact_limit_come_from_hnsw_and_agree():
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(40, 32))
    v = (centres[rng.integers(0, 40, 3000)] + 0.3 * rng.normal(size=(3000, 32))).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    known = rng.random(3000) < 0.7
    exact = TextNeighbours(v, known, k=10)
    approx = TextNeighbours(v, known, k=10, exact_up_to=1000)
    assert type(exact.index).__name__ == "IndexFlatIP" and type(approx.index).__name__ == "IndexHNSWFlat"
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact.cols, approx.cols)])
    assert overlap > 0.95
    assert not (approx.cols == np.arange(3000)[:, None]).any()  # never its own neighbour


def test_neighbour_scores_are_the_similarity_weighted_mean_of_the_neighbours():
    cols = np.array([[1, 2, -1]])
    sims = np.array([[0.5, 0.25, 0.0]], np.float32)
    scores = np.array([10.0, 4.0, 8.0])
    got = TextNeighbours.borrow(scores, cols, sims)
    np.testing.assert_allclose(got, [(0.5 * 4 + 0.25 * 8) / 0.75], rtol=1e-6)
    # a cold item borrows its neighbours' collaborative scores in pair features
    inter = _interactions()
    v = _vectors()
    s = ItemSignals.fit(inter, v, l2=1.0, keep=5)
    user = UserContext(np.array([0, 1]), v[[0, 1]], v[0], now=10 * DAY)
    f = dict(zip(SCALAR_FEATURES, pair_features(user, np.array([4]), v[[4]], s).T))
    collaborative = s.collaborative_scores(np.array([0, 1]))
    expected = TextNeighbours.borrow(collaborative, s.neighbours.cols[[4]], s.neighbours.sims[[4]])
    np.testing.assert_allclose(f["neighbour_ease"], expected, rtol=1e-5)
    assert f["ease"][0] == 0 and f["neighbour_ease"][0] != 0
