"""What both SQL stores do the same way: the rows they write, and the reads whose SQL differs only
in the parameter mark ("?" for SQLite, "%s" for PostgreSQL). Each store supplies `_read(sql,
params)` and its mark `P`."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator, Sequence

import numpy as np

from bertrec.store.base import ItemRecord
from bertrec.types import Item


def text_hash(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def item_rows(items: Sequence[Item]) -> list[tuple]:
    """(id, text, metadata JSON, text hash, updated_at) per item, for the items table."""
    now = time.time()
    return [
        (item.id, item.text, json.dumps(item.metadata, sort_keys=True, ensure_ascii=False), text_hash(item.text), now)
        for item in items
    ]


def vector_rows(vectors: dict[int, np.ndarray], texts: dict[int, str], model: str) -> list[tuple]:
    """(model, item id, hash of the text it was made from, float32 bytes) per vector."""
    return [(model, int(i), text_hash(texts[i]), np.asarray(v, dtype=np.float32).tobytes()) for i, v in vectors.items()]


class SharedReads:
    P = "?"

    def _read(self, sql: str, params: Sequence = ()) -> list[tuple]:
        raise NotImplementedError

    def get_item_records(self, ids: Sequence[int], model: str = "") -> dict[int, ItemRecord]:
        raise NotImplementedError

    def version(self) -> int:
        return self._read("SELECT value FROM meta WHERE key = 'version'")[0][0]

    def get_items(self, ids: Sequence[int]) -> dict[int, Item]:
        return {i: r.item for i, r in self.get_item_records(ids).items()}

    def iter_vectors(self, model: str, batch: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """`model`'s vectors in id order, `batch` at a time: (ids, matrix)."""
        p, last = self.P, -(2**63)
        while True:
            rows = self._read(
                f"SELECT item_id, vector FROM item_vectors WHERE model = {p} AND item_id > {p} "
                f"ORDER BY item_id LIMIT {p}",
                (model, last, batch),
            )
            if not rows:
                return
            yield (
                np.array([r[0] for r in rows], dtype=np.int64),
                np.stack([np.frombuffer(r[1], dtype=np.float32) for r in rows]),
            )
            last = rows[-1][0]

    def items_without_vector(self, model: str) -> list[Item]:
        """Items whose current text has no vector from `model`."""
        rows = self._read(
            "SELECT i.id, i.text, i.metadata FROM items i LEFT JOIN item_vectors v "
            f"ON v.item_id = i.id AND v.model = {self.P} WHERE v.text_hash IS NULL OR v.text_hash != i.text_hash "
            "ORDER BY i.id",
            (model,),
        )
        return [Item(i, text, json.loads(meta)) for i, text, meta in rows]

    def history_key(self, user_id: str) -> int:
        """The key `history` returns, alone (cheap: one index lookup)."""
        return self._read(f"SELECT COALESCE(MAX(seq), 0) FROM interactions WHERE user_id = {self.P}", (user_id,))[0][0]

    def liked_interactions(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """Every like (weight > 0) as parallel (user ids, item ids, timestamps), oldest first:
        what the re-ranker's collaborative signals are fitted on."""
        rows = self._read("SELECT user_id, item_id, ts FROM interactions WHERE weight > 0 ORDER BY ts, seq")
        users = [r[0] for r in rows]
        items = np.fromiter((r[1] for r in rows), np.int64, len(rows))
        times = np.fromiter((r[2] for r in rows), np.float64, len(rows))
        return users, items, times

    def seen_items(self, user_id: str) -> set[int]:
        return {
            r[0] for r in self._read(f"SELECT DISTINCT item_id FROM interactions WHERE user_id = {self.P}", (user_id,))
        }
