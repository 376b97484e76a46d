"""FaissIndex against numpy brute force."""

import numpy as np
import pytest

from bertrec.workers.index import FaissIndex


def _unit(rng, n, dim=32):
    v = rng.normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _brute(vectors, ids, queries, k):
    scores = queries @ vectors.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), ids[order]


@pytest.fixture
def data():
    rng = np.random.default_rng(7)
    vectors = _unit(rng, 2000)
    ids = rng.choice(2**62, size=2000, replace=False).astype(np.int64)  # arbitrary 64-bit ids
    queries = _unit(rng, 20)
    return vectors, ids, queries


def test_exact_index_equals_brute_force(data):
    vectors, ids, queries = data
    index = FaissIndex(32, "Flat", use_gpu="no")
    index.add(ids, vectors)
    scores, found = index.search(queries, 10)
    want_scores, want_ids = _brute(vectors, ids, queries, 10)
    np.testing.assert_allclose(scores, want_scores, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(found, want_ids)
    assert len(index) == 2000


@pytest.mark.parametrize("factory", ["Flat", "HNSW32", "IVF16,Flat"])
def test_remove_and_update_match_brute_force(data, factory):
    vectors, ids, queries = data
    index = FaissIndex(32, factory, nprobe=16, use_gpu="no")
    index.add(ids, vectors)
    removed = ids[:300]
    assert index.remove(removed) == 300
    assert index.remove(removed) == 0  # unknown ids are ignored
    # update: ids 300..400 get new vectors
    new_vectors = _unit(np.random.default_rng(1), 100)
    index.add(ids[300:400], new_vectors)
    current = vectors.copy()
    current[300:400] = new_vectors
    live_vectors, live_ids = current[300:], ids[300:]
    scores, found = index.search(queries, 10)
    _, want_ids = _brute(live_vectors, live_ids, queries, 10)
    assert not set(found.ravel()) & set(removed.tolist())
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, want_ids)])
    assert recall >= (1.0 if factory == "Flat" else 0.9)
    assert len(index) == 1700


def test_repeated_id_keeps_last_vector(data):
    vectors, ids, _ = data
    index = FaissIndex(32, "Flat", use_gpu="no")
    index.add(np.array([5, 5]), vectors[:2])
    _, found = index.search(vectors[1:2], 1)
    assert found[0, 0] == 5 and len(index) == 1
    scores, _ = index.search(vectors[0:1], 1)
    assert scores[0, 0] < 0.99  # the first vector was replaced


def test_snapshot_roundtrip(tmp_path, data):
    vectors, ids, queries = data
    index = FaissIndex(32, "HNSW32", use_gpu="no")
    index.add(ids, vectors)
    index.remove(ids[:10])
    index.save(tmp_path, version=42, extra_meta={"model": "m"})
    meta = FaissIndex.snapshot_meta(tmp_path)
    assert meta["version"] == 42 and meta["model"] == "m"
    loaded = FaissIndex.load(tmp_path, use_gpu="no")
    assert len(loaded) == len(index)
    assert loaded.search_breadth() == index.search_breadth() == {"ef_search": 128}
    np.testing.assert_array_equal(loaded.search(queries, 5)[1], index.search(queries, 5)[1])


def test_search_on_empty_and_short_index():
    index = FaissIndex(8, "Flat", use_gpu="no")
    scores, found = index.search(np.ones((1, 8), np.float32), 3)
    assert (found == -1).all() and np.isneginf(scores).all()
    index.add(np.array([1]), np.ones((1, 8), np.float32) / np.sqrt(8))
    _, found = index.search(np.ones((1, 8), np.float32), 3)
    assert found[0].tolist() == [1, -1, -1]


def test_ivf_needs_enough_training_vectors():
    index = FaissIndex(8, "IVF64,Flat", use_gpu="no")
    with pytest.raises(ValueError, match="at least 64"):
        index.add(np.arange(1, 10), np.ones((9, 8), np.float32))


@pytest.mark.parametrize(
    "factory, exact",
    [("Flat", True), ("HNSW32", True), ("IVF1024,Flat", True), ("IVF1024,PQ32", False),
     ("HNSW32_PQ16", False), ("IVF256,SQ8", False), ("PQ48np", False), ("LSH", False)],
)  # fmt: skip
def test_which_indexes_score_exactly(factory, exact):
    from bertrec.workers.index import scores_are_exact

    assert scores_are_exact(factory) is exact


# Search breadth: nprobe / ef_search from the index size unless configured (IndexConfig 0 = auto).


@pytest.mark.parametrize(
    "nlist, size, nprobe",
    [(16, 0, 16), (512, 10_000, 512), (4096, 16_384, 4096),  # small: every list (exact)
     (512, 20_000, 256), (1024, 100_000, 204), (4096, 1_000_000, 512), (16, 1_000_000, 13)],
)  # fmt: skip
def test_auto_nprobe_values(nlist, size, nprobe):
    from bertrec.workers.index import auto_nprobe

    assert auto_nprobe(nlist, size) == nprobe


@pytest.mark.parametrize(
    "size, ef_search",
    [(0, 128), (10_000, 128), (16_384, 128), (20_000, 128), (100_000, 256), (1_000_000, 725), (2_000_000, 1024)],
)
def test_auto_ef_search_values(size, ef_search):
    from bertrec.workers.index import auto_ef_search

    assert auto_ef_search(size) == ef_search


def test_auto_breadth_follows_the_size_and_a_setting_wins():
    rng = np.random.default_rng(5)
    vectors = _unit(rng, 20_000, dim=8)
    auto = FaissIndex(8, "IVF16,Flat", use_gpu="no")
    fixed = FaissIndex(8, "IVF16,Flat", nprobe=3, use_gpu="no")
    for index in (auto, fixed):
        index.add(np.arange(2000), vectors[:2000])
    assert auto.search_breadth() == {"nprobe": 16} and auto.describe_search() == "nprobe 16 (auto)"
    assert fixed.search_breadth() == {"nprobe": 3} and fixed.describe_search() == "nprobe 3"
    for index in (auto, fixed):
        index.add(np.arange(2000, 20_000), vectors[2000:])
    assert auto.search_breadth() == {"nprobe": 13}  # past 16,384 items: 2 * 16^(2/3) lists
    assert fixed.search_breadth() == {"nprobe": 3}
    auto.remove(np.arange(5000, 20_000))
    assert auto.search_breadth() == {"nprobe": 16}  # shrunk back: every list again
    assert FaissIndex(8, "IVF16,Flat", nprobe=99, use_gpu="no").search_breadth() == {"nprobe": 16}  # <= nlist
    assert FaissIndex(8, "HNSW32", ef_search=40, use_gpu="no").search_breadth() == {"ef_search": 40}
    assert FaissIndex(8, "Flat", use_gpu="no").describe_search() == "exhaustive search"


@pytest.fixture(scope="module")
def text_like():
    """20k unit vectors in 2,000 clusters with a decaying noise spectrum (text embeddings are
    neither uniform nor isotropic), plus 300 queries that are not members; and the exact top 10."""
    import faiss

    rng = np.random.default_rng(0)
    dim = 96
    centres = _unit(rng, 2000, dim)
    spectrum = np.arange(1, dim + 1) ** -0.2
    spectrum *= 1.2 / np.linalg.norm(spectrum)

    def draw(n):
        v = centres[rng.integers(len(centres), size=n)] + rng.normal(size=(n, dim)) * spectrum
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)

    vectors, queries = draw(20_000), draw(300)
    exact = faiss.IndexFlatIP(dim)
    exact.add(vectors)
    return vectors, queries, exact.search(queries, 10)[1]


@pytest.mark.parametrize("factory, narrow", [("IVF512,Flat", {"nprobe": 16}), ("HNSW32", {"ef_search": 32})])
def test_auto_breadth_reaches_recall_on_text_like_vectors(text_like, factory, narrow):
    vectors, queries, truth = text_like
    index = FaissIndex(vectors.shape[1], factory, use_gpu="no")
    index.add(np.arange(len(vectors)), vectors)

    def recall():
        found = index.search(queries, 10)[1]
        return np.mean([len(np.intersect1d(f, t)) / 10 for f, t in zip(found, truth)])

    assert index.search_breadth() == ({"nprobe": 256} if factory.startswith("IVF") else {"ef_search": 128})
    assert recall() >= 0.95, recall()
    index.configure_search(**narrow)  # the data is not too easy: a narrow search misses
    assert recall() < 0.95, recall()
