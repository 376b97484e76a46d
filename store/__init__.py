"""The durable store of items, item vectors and interactions."""

from bertrec.store.base import HistoryEntry, ItemRecord, Store
from bertrec.store.sqlite import SQLiteStore

__all__ = ["HistoryEntry", "ItemRecord", "SQLiteStore", "Store"]
