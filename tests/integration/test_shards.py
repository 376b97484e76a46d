"""ShardedIndex (Ray shard actors) against one in-process FaissIndex on the same data."""

import time
import uuid

import numpy as np
import pytest

from bertrec.config import IndexConfig
from bertrec.errors import WorkerLost
from bertrec.workers.index import FaissIndex
from bertrec.workers.shards import ShardedIndex, load_index, make_index, shard_of, snapshot_meta

pytestmark = pytest.mark.integration

DIM = 32
SHARDS = 3


def _clustered(rng, n, centers, spread=0.15):
    """Unit vectors around a few directions: the near-neighbour structure real item vectors have."""
    picks = rng.integers(len(centers), size=n)
    v = centers[picks] + spread * rng.normal(size=(n, DIM))
    v = v.astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(11)
    centers = rng.normal(size=(12, DIM))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    vectors = _clustered(rng, 3000, centers)
    ids = rng.choice(2**62, size=3000, replace=False).astype(np.int64)  # arbitrary 64-bit ids
    queries = _clustered(rng, 40, centers)
    return vectors, ids, queries, centers


@pytest.fixture(scope="module")
def config():
    return IndexConfig(
        factory="Flat",
        use_gpu="no",
        shards=SHARDS,
        shard_prefix=f"test-{uuid.uuid4().hex[:8]}",
        cpus_per_shard=0,  # the test Ray has 2 CPUs, shared with the encoder replicas of other tests
        detached_shards=True,
    )


@pytest.fixture(scope="module")
def shards(ray_cluster, config):
    index = ShardedIndex(DIM, config, table="first")
    yield index
    index.shutdown()


def _reference(ids, vectors):
    index = FaissIndex(DIM, "Flat", use_gpu="no")
    index.add(ids, vectors)
    return index


def assert_same_results(got, want, tol=1e-5):
    """Same scores, and the same ids wherever a score is not tied (within `tol`) with a neighbour."""
    (got_scores, got_ids), (want_scores, want_ids) = got, want
    assert got_ids.shape == want_ids.shape
    np.testing.assert_allclose(got_scores, want_scores, rtol=tol, atol=tol)
    gaps = np.abs(np.diff(want_scores, axis=1)) > tol
    separated = np.ones_like(want_scores, dtype=bool)
    separated[:, 1:] &= gaps
    separated[:, :-1] &= gaps
    np.testing.assert_array_equal(got_ids[separated], want_ids[separated])
    assert separated.mean() > 0.95  # ties are rare: the comparison is of ids, not only of scores


def _routed_counts(ids):
    return np.bincount(shard_of(ids, SHARDS), minlength=SHARDS).tolist()


def test_routing_is_stable_and_spread():
    ids = np.arange(0, 30_000, SHARDS, dtype=np.int64)  # a stride that `id mod N` would put on one shard
    route = shard_of(ids, SHARDS)
    np.testing.assert_array_equal(route, shard_of(ids.copy(), SHARDS))
    counts = np.bincount(route, minlength=SHARDS)
    assert counts.min() > 0.9 * len(ids) / SHARDS
    assert (shard_of(np.array([-1, -(2**63), 2**63 - 1]), SHARDS) >= 0).all()


def test_single_and_batch_queries_match_one_flat_index(shards, data):
    vectors, ids, queries, _ = data
    shards.add(ids, vectors)
    reference = _reference(ids, vectors)
    assert len(shards) == len(reference) == len(ids)
    assert shards.sizes == _routed_counts(ids) and min(shards.sizes) > 0
    for k in (1, 10, 50):
        assert_same_results(shards.search(queries[0], k), reference.search(queries[0], k))  # one query
        assert_same_results(shards.search(queries, k), reference.search(queries, k))  # a batch
    # k larger than the whole index: every item once, then empty slots, as FaissIndex does.
    small = ShardedIndex(DIM, shards.config, table="small")
    small.add(ids[:5], vectors[:5])
    scores, found = small.search(queries[:2], 8)
    assert sorted(found[0][:5].tolist()) == sorted(ids[:5].tolist())
    assert (found[:, 5:] == -1).all() and np.isneginf(scores[:, 5:]).all()


def test_upserts_and_deletes_reach_their_shard(shards, data):
    vectors, ids, queries, centers = data
    index = ShardedIndex(DIM, shards.config, table="writes")
    index.add(ids, vectors)
    reference = _reference(ids, vectors)
    before = index.sizes

    removed = ids[:300]
    assert index.remove(removed) == reference.remove(removed) == 300
    assert index.remove(removed) == 0  # unknown ids are ignored
    assert index.sizes == (np.array(before) - _routed_counts(removed)).tolist()

    # Move 100 items to another cluster: each must be found at its new place, on its own shard.
    moved = ids[300:400]
    rng = np.random.default_rng(3)
    new_vectors = _clustered(rng, 100, centers[::-1])
    index.add(moved, new_vectors)
    reference.add(moved, new_vectors)
    assert index.sizes == (np.array(before) - _routed_counts(removed)).tolist()  # replaced, not duplicated
    scores, found = index.search(new_vectors, 1)
    np.testing.assert_array_equal(found[:, 0], moved)
    np.testing.assert_allclose(scores[:, 0], 1.0, atol=1e-5)
    assert all(int(i) in index for i in moved[:5]) and int(removed[0]) not in index

    # A deleted id never comes back, even for a query that is exactly its old vector.
    _, found = index.search(vectors[:300], 20)
    assert not set(found.ravel().tolist()) & set(removed.tolist())
    assert_same_results(index.search(queries, 20), reference.search(queries, 20))
    assert sorted(index.ids().tolist()) == sorted(reference.ids().tolist())


def test_snapshot_roundtrip_and_layout_check(shards, data, tmp_path):
    vectors, ids, queries, _ = data
    index = ShardedIndex(DIM, shards.config, table="snap")
    index.add(ids, vectors)
    index.remove(ids[:10])
    index.save(tmp_path, version=42, extra_meta={"model": "m"})
    assert all((tmp_path / f"shard-{i}" / "meta.json").exists() for i in range(SHARDS))

    meta = snapshot_meta(tmp_path, shards.config)
    assert meta["version"] == 42 and meta["model"] == "m" and meta["shards"] == SHARDS
    # Another shard count routes ids elsewhere: the snapshot does not fit and must be rebuilt.
    for other in (1, SHARDS + 1):
        assert snapshot_meta(tmp_path, IndexConfig(shards=other)) is None
    with pytest.raises(ValueError, match="shards"):
        ShardedIndex.load(tmp_path, IndexConfig(**{**shards.config.__dict__, "shards": SHARDS - 1}))

    loaded = ShardedIndex.load(tmp_path, shards.config, table="snap-loaded")  # read from disk, not copied
    assert loaded.sizes == index.sizes and len(loaded) == len(ids) - 10
    assert_same_results(loaded.search(queries, 10), index.search(queries, 10))

    # A one-index snapshot does not fit a sharded config either.
    single = _reference(ids, vectors)
    single.save(tmp_path / "single", version=1, extra_meta={"model": "m"})
    assert snapshot_meta(tmp_path / "single", shards.config) is None
    assert snapshot_meta(tmp_path / "single", IndexConfig())["version"] == 1


def test_second_front_end_shares_the_named_actors(shards, data, ray_cluster):
    vectors, ids, queries, _ = data
    first = ShardedIndex(DIM, shards.config, table="shared")
    first.add(ids[:1000], vectors[:1000])
    first.publish()
    # Another front end with the same prefix attaches: same actors, same data, no reset.
    second = ShardedIndex(DIM, shards.config, table="shared", fresh=False)
    assert [a._actor_id for a in second.shards] == [a._actor_id for a in first.shards]
    assert second.names == [f"{shards.config.shard_prefix}-shard-{i}" for i in range(SHARDS)]
    assert ray_cluster.get_actor(second.names[0])._actor_id == first.shards[0]._actor_id
    assert len(second) == 1000
    assert_same_results(second.search(queries, 10), first.search(queries, 10))
    # A write through one front end is visible through the other.
    second.add(ids[1000:1010], vectors[1000:1010])
    _, found = first.search(vectors[1000:1010], 1)
    np.testing.assert_array_equal(found[:, 0], ids[1000:1010])
    assert len(first) == 1010
    # Actors made for another index are refused rather than mixed.
    with pytest.raises(ValueError, match="shard_prefix"):
        ShardedIndex(DIM * 2, shards.config, table="shared", fresh=False)


def test_a_rebuild_replaces_the_shared_table_only_when_published(shards, data):
    vectors, ids, _, _ = data
    serving = ShardedIndex(DIM, shards.config, table="rebuilt")
    serving.add(ids[:500], vectors[:500])
    serving.publish()
    abandoned = ShardedIndex(DIM, shards.config, table="rebuilt")  # a swap that failed half-way
    abandoned.add(ids[800:900], vectors[800:900])
    rebuild = ShardedIndex(DIM, shards.config, table="rebuilt")  # a restart or same-model swap rebuilding
    rebuild.add(ids[500:800], vectors[500:800])
    _, found = serving.search(vectors[:5], 1)
    np.testing.assert_array_equal(found[:, 0], ids[:5])
    assert len(serving) == 500  # untouched while the rebuild runs
    rebuild.publish()
    _, found = serving.search(vectors[500:505], 1)  # the old handle now reads the new table
    np.testing.assert_array_equal(found[:, 0], ids[500:505])
    assert len(serving) == len(rebuild) == 300
    assert not [b for info in rebuild.info() for b in info["builds"] if b.startswith("rebuilt~")]  # no leak


def test_one_shard_is_the_in_process_index(data, tmp_path):
    vectors, ids, queries, _ = data
    config = IndexConfig(use_gpu="no")
    index = make_index(DIM, config)
    assert isinstance(index, FaissIndex) and index.factory == "Flat"
    index.add(ids, vectors)
    index.save(tmp_path, version=3, extra_meta={"model": "m"})
    loaded = load_index(tmp_path, config)
    assert isinstance(loaded, FaissIndex) and len(loaded) == len(ids)
    np.testing.assert_array_equal(loaded.search(queries, 5)[1], index.search(queries, 5)[1])


def test_each_shard_sizes_its_search_breadth_by_its_own_items(ray_cluster, config):
    from dataclasses import replace

    from bertrec.workers.index import auto_nprobe

    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(36_000, DIM)).astype(np.float32)
    ivf = replace(config, factory="IVF16,Flat", shard_prefix=f"test-{uuid.uuid4().hex[:8]}")
    auto, fixed = ShardedIndex(DIM, ivf), ShardedIndex(DIM, replace(ivf, nprobe=5, shard_prefix=ivf.shard_prefix + "x"))
    try:
        for index in (auto, fixed):
            index.add(np.arange(len(vectors)), vectors)
        # ~12,000 items per shard: every list; the 36,000 in total would have given fewer.
        assert max(auto.sizes) <= 16_384 and auto_nprobe(16, len(auto)) == 13
        assert [i["search_breadth"] for i in auto.info()] == [{"nprobe": 16}] * SHARDS
        assert auto.describe_search() == "nprobe 16 (auto)"
        assert fixed.search_breadth() == {"nprobe": 5} and fixed.describe_search() == "nprobe 5"
    finally:
        auto.shutdown()
        fixed.shutdown()


def test_shards_train_on_a_shared_sample_before_any_add(ray_cluster, config):
    from dataclasses import replace

    rng = np.random.default_rng(4)
    vectors = rng.normal(size=(3000, DIM)).astype(np.float32)
    ivf = replace(config, factory="IVF16,Flat", shard_prefix=f"test-{uuid.uuid4().hex[:8]}")
    index = ShardedIndex(DIM, ivf)
    try:
        with pytest.raises(Exception, match="at least 16 vectors"):  # untrained: a tiny first batch cannot train
            index.add(np.arange(10), vectors[:10])
        index.train(vectors)
        index.add(np.arange(10), vectors[:10])  # trained: any batch size goes in
        index.add(np.arange(10, 3000), vectors[10:])
        assert len(index) == 3000
        _, found = index.search(vectors[:20], 1)
        assert (found[:, 0] == np.arange(20)).mean() >= 0.9
    finally:
        index.shutdown()


def test_a_lost_shard_is_reported_not_hidden(ray_cluster, data):
    vectors, ids, queries, _ = data
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    config = IndexConfig(use_gpu="no", shards=2, shard_prefix=prefix, cpus_per_shard=0, detached_shards=False)
    index = ShardedIndex(DIM, config)
    index.add(ids[:100], vectors[:100])
    ray_cluster.kill(index.shards[1], no_restart=True)
    deadline = time.time() + 30
    with pytest.raises(WorkerLost):  # UNAVAILABLE to callers; half an index would answer wrongly
        while time.time() < deadline:  # the kill lands asynchronously; until then all shards answer
            index.search(queries, 5)
            time.sleep(0.05)
    assert "lost" in index.check()
    index.shutdown()


def test_a_restarted_shard_comes_back_empty_and_says_so(ray_cluster, data):
    vectors, ids, queries, _ = data
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    config = IndexConfig(use_gpu="no", shards=2, shard_prefix=prefix, cpus_per_shard=0, detached_shards=False)
    index = ShardedIndex(DIM, config)
    index.add(ids[:100], vectors[:100])
    index.publish()
    assert index.check() == ""
    ray_cluster.kill(index.shards[0], no_restart=False)  # Ray restarts it without its tables
    deadline = time.time() + 60
    with pytest.raises(WorkerLost, match="restarted|lost"):
        while time.time() < deadline:
            index.search(queries, 5)
            time.sleep(0.05)
    while "restarted" not in index.check() and time.time() < deadline:  # back up, but empty
        time.sleep(0.2)
    assert "lack table" in index.check()
    index.shutdown()
