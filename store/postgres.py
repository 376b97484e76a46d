"""PostgresStore: the Store on a PostgreSQL server, for front ends on several hosts.

SQLite is one file on one host; front ends on other nodes of a cluster cannot share it. With
`store.url = "postgresql://..."` every front end reads and writes one PostgreSQL database: the
same items, interactions and one store version, wherever it runs. Same schema and semantics as
SQLiteStore (store/sqlite.py); a commit returns only once PostgreSQL has made it durable
(synchronous_commit, its default).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np

from bertrec.store.base import HistoryEntry, ItemRecord
from bertrec.store.sql_reads import SharedReads, item_rows, vector_rows
from bertrec.types import Interaction, Item

SCHEMA = """
CREATE TABLE IF NOT EXISTS items (
    id BIGINT PRIMARY KEY,
    text TEXT NOT NULL,
    metadata TEXT NOT NULL,
    text_hash TEXT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS item_vectors (
    model TEXT NOT NULL,
    item_id BIGINT NOT NULL,
    text_hash TEXT NOT NULL,
    vector BYTEA NOT NULL,
    PRIMARY KEY (model, item_id)
);
CREATE TABLE IF NOT EXISTS interactions (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id TEXT NOT NULL,
    item_id BIGINT NOT NULL,
    ts DOUBLE PRECISION NOT NULL,
    weight DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS interactions_by_user ON interactions (user_id, ts);
-- The history key (the user's latest seq) is read on every Recommend call: with this index one
-- lookup, without it a walk over all the user's rows (2 ms for a user with 20k interactions).
CREATE INDEX IF NOT EXISTS interactions_by_user_seq ON interactions (user_id, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value BIGINT NOT NULL);
INSERT INTO meta (key, value) VALUES ('version', 0) ON CONFLICT DO NOTHING;
"""
SCHEMA_LOCK = 0x62657274726563  # advisory lock: front ends starting together create the schema once

UPSERT_VECTOR = (
    "INSERT INTO item_vectors (model, item_id, text_hash, vector) VALUES (%s, %s, %s, %s) "
    "ON CONFLICT (model, item_id) DO UPDATE SET text_hash = EXCLUDED.text_hash, vector = EXCLUDED.vector"
)


class PostgresStore(SharedReads):
    """One connection per calling thread (the server calls the store from worker threads)."""

    P = "%s"

    def __init__(self, url: str):
        import psycopg

        self._psycopg = psycopg
        self.url = url
        self._local = threading.local()
        self._connections: list = []
        self._lock = threading.Lock()
        with self._transaction() as cur:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            cur.execute(SCHEMA)

    def _connection(self):
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self._psycopg.connect(self.url, autocommit=True)  # transactions are explicit
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    @contextmanager
    def _transaction(self) -> Iterator:
        """A cursor in one transaction: committed on exit, rolled back on an error."""
        conn = self._connection()
        with conn.transaction(), conn.cursor() as cur:
            yield cur

    def _read(self, sql: str, params: Sequence = ()) -> list[tuple]:
        with self._transaction() as cur:
            cur.execute(sql, params)
            return cur.fetchall()

    @staticmethod
    def _bump_version(cur) -> int:
        cur.execute("UPDATE meta SET value = value + 1 WHERE key = 'version' RETURNING value")
        return cur.fetchone()[0]

    # Items
    def get_item_records(self, ids: Sequence[int], model: str = "") -> dict[int, ItemRecord]:
        rows = self._read(
            "SELECT i.id, i.text, i.metadata, i.text_hash, v.text_hash = i.text_hash FROM items i "
            "LEFT JOIN item_vectors v ON v.item_id = i.id AND v.model = %s WHERE i.id = ANY(%s)",
            (model, [int(i) for i in ids]),
        )
        return {
            item_id: ItemRecord(Item(item_id, text, json.loads(metadata)), digest, bool(has_vector))
            for item_id, text, metadata, digest, has_vector in rows
        }

    def upsert_items(self, items: Sequence[Item], vectors: dict[int, np.ndarray], model: str) -> int:
        with self._transaction() as cur:
            cur.executemany(
                "INSERT INTO items (id, text, metadata, text_hash, updated_at) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT (id) DO UPDATE SET text = EXCLUDED.text, metadata = EXCLUDED.metadata, "
                "text_hash = EXCLUDED.text_hash, updated_at = EXCLUDED.updated_at",
                item_rows(items),
            )
            cur.executemany(UPSERT_VECTOR, vector_rows(vectors, {item.id: item.text for item in items}, model))
            return self._bump_version(cur)

    def put_vectors(self, vectors: dict[int, np.ndarray], texts: dict[int, str], model: str) -> None:
        with self._transaction() as cur:
            cur.executemany(UPSERT_VECTOR, vector_rows(vectors, texts, model))

    def drop_vectors_except(self, model: str) -> int:
        with self._transaction() as cur:
            cur.execute("DELETE FROM item_vectors WHERE model != %s", (model,))
            return cur.rowcount

    def delete_items(self, ids: Sequence[int]) -> tuple[list[int], int]:
        ids = [int(i) for i in ids]
        with self._transaction() as cur:
            cur.execute("DELETE FROM items WHERE id = ANY(%s) RETURNING id", (ids,))
            deleted = sorted(r[0] for r in cur.fetchall())
            cur.execute("DELETE FROM item_vectors WHERE item_id = ANY(%s)", (ids,))
            return deleted, self._bump_version(cur)

    def existing_ids(self, ids: Sequence[int]) -> set[int]:
        return {r[0] for r in self._read("SELECT id FROM items WHERE id = ANY(%s)", ([int(i) for i in ids],))}

    def get_vectors(self, ids: Sequence[int], model: str) -> dict[int, np.ndarray]:
        rows = self._read(
            "SELECT item_id, vector FROM item_vectors WHERE model = %s AND item_id = ANY(%s)",
            (model, [int(i) for i in ids]),
        )
        return {i: np.frombuffer(blob, dtype=np.float32) for i, blob in rows}

    # Interactions
    def record_interactions(self, interactions: Sequence[Interaction]) -> int:
        now = time.time()
        rows = [(x.user_id, int(x.item_id), x.timestamp or now, x.weight) for x in interactions]
        with self._transaction() as cur:
            cur.executemany("INSERT INTO interactions (user_id, item_id, ts, weight) VALUES (%s, %s, %s, %s)", rows)
        return len(rows)

    def history(self, user_id: str, limit: int, liked_only: bool = False) -> tuple[list[HistoryEntry], int]:
        liked = " AND weight > 0" if liked_only else ""
        with self._transaction() as cur:  # one snapshot for the rows and their key
            cur.execute(
                f"SELECT item_id, ts, weight FROM interactions WHERE user_id = %s{liked} "
                "ORDER BY ts DESC, seq DESC LIMIT %s",
                (user_id, limit),
            )
            rows = cur.fetchall()
            cur.execute("SELECT COALESCE(MAX(seq), 0) FROM interactions WHERE user_id = %s", (user_id,))
            key = cur.fetchone()[0]
        return [HistoryEntry(i, ts, w) for i, ts, w in reversed(rows)], key

    def forget_user(self, user_id: str) -> int:
        with self._transaction() as cur:
            cur.execute("DELETE FROM interactions WHERE user_id = %s", (user_id,))
            return cur.rowcount

    def counts(self) -> dict[str, int]:
        with self._transaction() as cur:
            cur.execute("SELECT COUNT(*) FROM items")
            items = cur.fetchone()[0]
            cur.execute("SELECT COUNT(DISTINCT user_id), COUNT(*) FROM interactions")
            users, interactions = cur.fetchone()
        return {"items": items, "users": users, "interactions": interactions}

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()
