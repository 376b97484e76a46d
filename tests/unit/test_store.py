"""Both store backends on real storage (a SQLite file; a PostgreSQL server): versions, vectors
kept across metadata-only updates, history, durability."""

import numpy as np
import pytest

from bertrec.store import SQLiteStore
from bertrec.types import Interaction, Item


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.integration)])
def open_store(request, tmp_path):
    """Opens the store under test; a second call opens the same data again (a restarted process)."""
    if request.param == "sqlite":
        return lambda: SQLiteStore(tmp_path)
    from bertrec.store.postgres import PostgresStore

    url = request.getfixturevalue("postgres_url")
    return lambda: PostgresStore(url)


def test_items_vectors_and_versions(open_store):
    store = open_store()
    v0 = store.version()
    v = np.arange(4, dtype=np.float32)
    v1 = store.upsert_items([Item(1, "one", {"g": "a"}), Item(2, "two")], {1: v, 2: v + 1}, "m1")
    assert v1 > v0
    assert store.get_items([1, 2, 3]) == {1: Item(1, "one", {"g": "a"}), 2: Item(2, "two")}
    # a metadata-only update keeps the stored vector
    store.upsert_items([Item(1, "one", {"g": "b"})], {}, "m1")
    np.testing.assert_array_equal(store.get_vectors([1], "m1")[1], v)
    assert store.get_items([1])[1].metadata == {"g": "b"}
    # vectors of another model do not count
    assert store.get_vectors([1, 2], "m2") == {}
    assert [i.id for i in store.items_without_vector("m2")] == [1, 2]
    deleted, v2 = store.delete_items([2, 99])
    assert deleted == [2] and v2 > v1
    assert store.existing_ids([1, 2]) == {1}
    ids, vectors = next(store.iter_vectors("m1"))
    assert ids.tolist() == [1] and vectors.shape == (1, 4)


def test_history_is_recent_last_and_keyed(open_store):
    store = open_store()
    store.upsert_items([Item(i, f"item {i}") for i in range(1, 6)], {}, "")
    store.record_interactions([Interaction("u", i, timestamp=100 + i, weight=1.0) for i in (3, 1, 2)])
    history, key = store.history("u", limit=2)
    assert [h.item_id for h in history] == [2, 3]  # the two most recent, oldest first
    store.record_interactions([Interaction("u", 5, timestamp=200)])
    _, key2 = store.history("u", limit=2)
    assert key2 != key
    assert store.history_key("u") == key2 and store.history_key("nobody") == 0
    assert store.seen_items("u") == {1, 2, 3, 5}
    assert store.counts() == {"items": 5, "users": 1, "interactions": 4}
    assert store.forget_user("u") == 4
    assert store.history("u", 10)[0] == []


def test_writes_survive_reopen(open_store):
    store = open_store()
    store.upsert_items([Item(7, "seven")], {7: np.ones(3, np.float32)}, "m")
    store.record_interactions([Interaction("u", 7)])
    version = store.version()
    # no close(): a crashed process never closes; each commit was durable when it returned
    reopened = open_store()
    assert reopened.get_items([7])[7].text == "seven"
    assert reopened.version() == version
    assert reopened.counts()["interactions"] == 1


def test_liked_history_skips_disliked(open_store):
    store = open_store()
    store.upsert_items([Item(i, f"item {i}") for i in range(1, 4)], {}, "")
    store.record_interactions(
        [Interaction("u", 1, 10, 1.0), Interaction("u", 2, 20, -1.0), Interaction("u", 3, 30, 0.0)]
    )
    liked, key = store.history("u", 10, liked_only=True)
    assert [h.item_id for h in liked] == [1]
    assert store.history("u", 10)[1] == key  # one key for both views


def test_history_key_is_one_index_lookup_however_long_the_history(tmp_path):
    """Recommend reads the key on every call: it must not walk a heavy user's rows."""
    import sqlite3

    store = SQLiteStore(tmp_path)
    store.record_interactions([Interaction("heavy", i % 50, timestamp=float(i)) for i in range(5000)])
    store.record_interactions([Interaction("light", 1, timestamp=1.0)])
    assert store.history_key("heavy") > 0
    query = "SELECT COALESCE(MAX(seq), 0) FROM interactions WHERE user_id = ?"

    def vm_steps(db: sqlite3.Connection, user: str) -> int:
        """SQLite virtual-machine instructions the key query runs for `user`."""
        steps = [0]
        db.set_progress_handler(lambda: steps.__setitem__(0, steps[0] + 1), 1)
        db.execute(query, (user,)).fetchall()
        db.set_progress_handler(None, 1)
        return steps[0]

    db = sqlite3.connect(store.path)
    vm_steps(db, "light")  # the first run also reads the schema
    # With the (user_id, seq) index the heavy user costs what the light one does; the (user_id, ts)
    # index alone walks all 5,000 of the heavy user's rows.
    assert vm_steps(db, "heavy") <= vm_steps(db, "light") + 5
    db.execute("DROP INDEX interactions_by_user_seq")  # the check itself can fail
    assert vm_steps(db, "heavy") > 1000
    db.close()
    store.close()
