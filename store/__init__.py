"""The durable store of items, item vectors and interactions."""

from bertrec.store.base import HistoryEntry, ItemRecord, Store
from bertrec.store.sqlite import SQLiteStore


def open_store(url: str, data_dir: str) -> Store:
    """PostgreSQL when `url` is a postgresql:// URL (shared by front ends on several hosts),
    else the SQLite file in `data_dir` (one host)."""
    if url:
        if not url.startswith(("postgresql://", "postgres://")):
            raise ValueError(f"store.url must be a postgresql:// URL, got {url.split('://')[0]}://...")
        from bertrec.store.postgres import PostgresStore

        return PostgresStore(url)
    return SQLiteStore(data_dir)


__all__ = ["HistoryEntry", "ItemRecord", "SQLiteStore", "Store", "open_store"]
