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


def test_cached_profile_costs_one_key_lookup_and_follows_new_interactions(tmp_path):
    import asyncio

    from bertrec.server.users import UserProfiles
    from bertrec.store import SQLiteStore
    from bertrec.types import Interaction, Item

    store = SQLiteStore(tmp_path)
    rng = np.random.default_rng(0)
    vectors = {i: v / np.linalg.norm(v) for i, v in enumerate(rng.standard_normal((4, 3)).astype(np.float32), 1)}
    store.upsert_items([Item(i, f"item {i}") for i in vectors], vectors, "m")
    store.record_interactions([Interaction("u", 1, 10.0), Interaction("u", 2, 20.0, -1.0)])
    reads: list[str] = []
    for name in ("history", "seen_items", "get_vectors"):
        real = getattr(store, name)
        setattr(store, name, lambda *a, _real=real, _name=name, **k: reads.append(_name) or _real(*a, **k))
    profiles = UserProfiles(store, "m", 3, max_history=50, half_life=20.0, size=10)

    async def scenario():
        first = await profiles.for_user("u")
        assert (await profiles.seen("u")).tolist() == [1, 2]  # disliked items count as seen
        reads.clear()
        again = await profiles.for_user("u")
        assert again is first and reads == []  # a hit: only the key was read
        assert (await profiles.seen("u")).tolist() == [1, 2]
        store.record_interactions([Interaction("u", 3, 30.0)])
        changed = await profiles.for_user("u")
        assert sorted(changed.history_ids.tolist()) == [1, 3]
        assert (await profiles.seen("u")).tolist() == [1, 2, 3]
        # A caller that checks the key itself (Recommend's search thread) confirms afterwards;
        # a cache cleared meanwhile (a model swap) makes the profile it holds unusable.
        held = profiles.unconfirmed("u")
        assert held.key == store.history_key("u") and held.profile is changed
        assert profiles.confirmed("u", held)
        profiles.clear()
        assert not profiles.confirmed("u", held) and profiles.unconfirmed("u") is None

    asyncio.run(scenario())
    assert (profiles.hits, profiles.misses) == (2, 2)


def _tower_store(tmp_path, n=4):
    from bertrec.store import SQLiteStore
    from bertrec.types import Item

    store = SQLiteStore(tmp_path)
    rng = np.random.default_rng(1)
    vectors = {i: v / np.linalg.norm(v) for i, v in enumerate(rng.standard_normal((n, 3)).astype(np.float32), 1)}
    store.upsert_items([Item(i, f"Film {i} (2000)") for i in vectors], vectors, "m")
    return store, vectors


def test_pooled_tower_pools_the_latest_items_then_applies_its_layer(tmp_path):
    import asyncio

    from bertrec.server.users import UserProfiles, UserTower

    store, vectors = _tower_store(tmp_path)
    weight = np.arange(9, dtype=np.float32).reshape(3, 3) / 10
    tower = UserTower("pooled", history_items=2, weight=weight)
    profiles = UserProfiles(store, "m", 3, max_history=50, half_life=20.0, size=10, tower=tower)
    profile = asyncio.run(profiles.for_history((1, 2, 3)))
    entries = [HistoryEntry(i, float(n), 1.0) for n, i in enumerate((2, 3))]
    v = pool_history(entries, vectors, 20.0, 3).vector  # the tower reads the latest two only
    expected = (v + weight @ v) / np.linalg.norm(v + weight @ v)
    np.testing.assert_allclose(profile.vector, expected, rtol=1e-5)
    assert sorted(profile.history_ids.tolist()) == [1, 2, 3]  # every item still explains results
    # W = 0 is plain pooling over the same items
    zero = UserTower("pooled", history_items=2, weight=np.zeros((3, 3), np.float32))
    np.testing.assert_allclose(zero.pooled(entries, vectors, 20.0, 3), v, rtol=1e-6)


def test_history_text_tower_encodes_the_latest_titles_most_recent_first(tmp_path):
    import asyncio

    from bertrec.server.users import UserProfiles, UserTower

    store, _ = _tower_store(tmp_path)
    asked: list[list[str]] = []

    async def encode(texts):
        asked.append(texts)
        return np.array([[0.0, 1.0, 0.0]], np.float32)

    tower = UserTower("history-text", history_items=2)
    profiles = UserProfiles(store, "m", 3, max_history=50, half_life=20.0, size=10, tower=tower, encode=encode)
    profile = asyncio.run(profiles.for_history((1, 2, 3)))
    assert asked == [["Film 3 (2000) ; Film 2 (2000)"]]
    np.testing.assert_array_equal(profile.vector, [0.0, 1.0, 0.0])


def test_tower_of_a_checkpoint(tmp_path):
    import json

    from bertrec.server.users import USER_TOWER_FILE, UserTower

    assert UserTower.load("").kind == "items" and UserTower.load(str(tmp_path)).kind == "items"
    config = {"user_tower": "pooled", "history_items": 7, "user_max_length": 64}
    (tmp_path / "bertrec_training.json").write_text(json.dumps({"config": config}))
    np.save(tmp_path / USER_TOWER_FILE, np.eye(3, dtype=np.float32))
    tower = UserTower.load(str(tmp_path))
    assert (tower.kind, tower.history_items, tower.max_length) == ("pooled", 7, 64)
    np.testing.assert_array_equal(tower.weight, np.eye(3))
