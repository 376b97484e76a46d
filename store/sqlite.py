"""SQLiteStore: items, their vectors and interactions in one WAL-mode SQLite file."""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from bertrec.store.base import HistoryEntry, ItemRecord
from bertrec.store.sql_reads import SharedReads, item_rows, vector_rows
from bertrec.types import Interaction, Item

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL,
    text_hash TEXT NOT NULL,
    updated_at REAL NOT NULL
);
-- One vector per item and model: a model swap encodes the catalogue anew while the serving
-- model's vectors stay in place. text_hash says which text a vector was computed from.
CREATE TABLE IF NOT EXISTS item_vectors (
    model TEXT NOT NULL,
    item_id INTEGER NOT NULL,
    text_hash TEXT NOT NULL,
    vector BLOB NOT NULL,
    PRIMARY KEY (model, item_id)
);
CREATE TABLE IF NOT EXISTS interactions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    item_id INTEGER NOT NULL,
    ts REAL NOT NULL,
    weight REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS interactions_by_user ON interactions (user_id, ts);
-- The history key (the user's latest seq) is read on every Recommend call: with this index one
-- lookup, without it a walk over all the user's rows (2 ms for a user with 20k interactions).
CREATE INDEX IF NOT EXISTS interactions_by_user_seq ON interactions (user_id, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('version', 0);
"""

_CHUNK = 500  # SQLite caps bound parameters per statement


def _chunks(seq: Sequence, size: int = _CHUNK) -> Iterator[Sequence]:
    for i in range(0, len(seq), size):
        yield seq[i : i + size]


class SQLiteStore(SharedReads):
    """Writes go through one connection behind a lock (SQLite has one writer at a time); reads
    use one connection per calling thread, so concurrent requests read in parallel (WAL readers
    never wait for each other or for the writer).

    WAL with synchronous=FULL makes each commit durable before the call returns, so an
    acknowledged write survives a crash of the process or the machine.
    """

    P = "?"

    def __init__(self, data_dir: str | Path):
        self.path = Path(data_dir) / "bertrec.sqlite3"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.execute("PRAGMA busy_timeout=10000")
        self._conn.executescript(SCHEMA)
        self._lock = threading.Lock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            conn.execute("PRAGMA busy_timeout=10000")
            conn.execute("PRAGMA query_only=ON")
            self._local.conn = conn
            with self._lock:
                self._readers.append(conn)
        return conn

    def _write(self, fn):
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(self._conn)
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")
            return result

    def _read(self, sql: str, params: Sequence = ()) -> list[tuple]:
        return self._reader().execute(sql, params).fetchall()

    @staticmethod
    def _bump_version(conn: sqlite3.Connection) -> int:
        conn.execute("UPDATE meta SET value = value + 1 WHERE key = 'version'")
        return conn.execute("SELECT value FROM meta WHERE key = 'version'").fetchone()[0]

    # Items
    def get_item_records(self, ids: Sequence[int], model: str = "") -> dict[int, ItemRecord]:
        """Items by id; `has_vector` is true when `model` has a vector for the item's current text."""
        out: dict[int, ItemRecord] = {}
        for part in _chunks(list(ids)):
            marks = ",".join("?" * len(part))
            rows = self._read(
                "SELECT i.id, i.text, i.metadata, i.text_hash, v.text_hash = i.text_hash FROM items i "
                "LEFT JOIN item_vectors v ON v.item_id = i.id AND v.model = ? "
                f"WHERE i.id IN ({marks})",
                [model, *part],
            )
            for item_id, text, metadata, digest, has_vector in rows:
                out[item_id] = ItemRecord(Item(item_id, text, json.loads(metadata)), digest, bool(has_vector))
        return out

    def upsert_items(self, items: Sequence[Item], vectors: dict[int, np.ndarray], model: str) -> int:
        """Write items, and `model`'s vectors for those in `vectors`. Returns the new version."""
        rows = item_rows(items)
        vectors_rows = vector_rows(vectors, {item.id: item.text for item in items}, model)

        def write(conn: sqlite3.Connection) -> int:
            conn.executemany(
                "INSERT INTO items (id, text, metadata, text_hash, updated_at) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET text = excluded.text, metadata = excluded.metadata, "
                "text_hash = excluded.text_hash, updated_at = excluded.updated_at",
                rows,
            )
            conn.executemany("INSERT OR REPLACE INTO item_vectors VALUES (?, ?, ?, ?)", vectors_rows)
            return self._bump_version(conn)

        return self._write(write)

    def put_vectors(self, vectors: dict[int, np.ndarray], texts: dict[int, str], model: str) -> None:
        """Store `model`'s vectors for existing items (a model swap re-encoding the catalogue)."""
        rows = vector_rows(vectors, texts, model)
        self._write(lambda c: c.executemany("INSERT OR REPLACE INTO item_vectors VALUES (?, ?, ?, ?)", rows))

    def drop_vectors_except(self, model: str) -> int:
        """Free the vectors of models no longer served."""
        return self._write(lambda c: c.execute("DELETE FROM item_vectors WHERE model != ?", (model,)).rowcount)

    def delete_items(self, ids: Sequence[int]) -> tuple[list[int], int]:
        """Delete `ids` and their vectors; returns (the ids that existed, new version)."""

        def write(conn: sqlite3.Connection) -> tuple[list[int], int]:
            deleted: list[int] = []
            for part in _chunks(list(ids)):
                marks = ",".join("?" * len(part))
                deleted += [r[0] for r in conn.execute(f"SELECT id FROM items WHERE id IN ({marks})", part)]
                conn.execute(f"DELETE FROM items WHERE id IN ({marks})", part)
                conn.execute(f"DELETE FROM item_vectors WHERE item_id IN ({marks})", part)
            return deleted, self._bump_version(conn)

        return self._write(write)

    def existing_ids(self, ids: Sequence[int]) -> set[int]:
        out: set[int] = set()
        for part in _chunks(list(ids)):
            marks = ",".join("?" * len(part))
            out.update(r[0] for r in self._read(f"SELECT id FROM items WHERE id IN ({marks})", part))
        return out

    def get_vectors(self, ids: Sequence[int], model: str) -> dict[int, np.ndarray]:
        out: dict[int, np.ndarray] = {}
        for part in _chunks(list(ids)):
            marks = ",".join("?" * len(part))
            rows = self._read(
                f"SELECT item_id, vector FROM item_vectors WHERE model = ? AND item_id IN ({marks})", [model, *part]
            )
            out.update((i, np.frombuffer(blob, dtype=np.float32)) for i, blob in rows)
        return out

    # Interactions
    def record_interactions(self, interactions: Sequence[Interaction]) -> int:
        now = time.time()
        rows = [(x.user_id, x.item_id, x.timestamp or now, x.weight) for x in interactions]

        def write(conn: sqlite3.Connection) -> int:
            conn.executemany("INSERT INTO interactions (user_id, item_id, ts, weight) VALUES (?, ?, ?, ?)", rows)
            return len(rows)

        return self._write(write)

    def history(self, user_id: str, limit: int, liked_only: bool = False) -> tuple[list[HistoryEntry], int]:
        """The user's `limit` most recent interactions (only weight > 0 ones if `liked_only`), oldest
        first, and a key that changes whenever an interaction of the user is added or removed."""
        liked = " AND weight > 0" if liked_only else ""
        conn = self._reader()
        conn.execute("BEGIN")  # one snapshot: the rows and their key must describe the same history
        try:
            rows = conn.execute(
                f"SELECT item_id, ts, weight, seq FROM interactions WHERE user_id = ?{liked} "
                "ORDER BY ts DESC, seq DESC LIMIT ?",
                (user_id, limit),
            ).fetchall()
            key = conn.execute(
                "SELECT COALESCE(MAX(seq), 0) FROM interactions WHERE user_id = ?", (user_id,)
            ).fetchone()[0]
        finally:
            conn.execute("COMMIT")
        return [HistoryEntry(i, ts, w) for i, ts, w, _ in reversed(rows)], key

    def forget_user(self, user_id: str) -> int:
        return self._write(lambda c: c.execute("DELETE FROM interactions WHERE user_id = ?", (user_id,)).rowcount)

    def counts(self) -> dict[str, int]:
        items = self._read("SELECT COUNT(*) FROM items")[0][0]
        users, interactions = self._read("SELECT COUNT(DISTINCT user_id), COUNT(*) FROM interactions")[0]
        return {"items": items, "users": users, "interactions": interactions}

    def close(self) -> None:
        with self._lock:
            for conn in self._readers:
                conn.close()
            self._readers.clear()
            self._conn.close()
