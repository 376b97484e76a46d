"""The store interface: SQLite is the embedded backend; a shared backend plugs in behind it."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from bertrec.types import Interaction, Item


@dataclass(frozen=True)
class ItemRecord:
    item: Item
    text_hash: str
    has_vector: bool


@dataclass(frozen=True)
class HistoryEntry:
    item_id: int
    timestamp: float
    weight: float


class Store(Protocol):
    """Every write is durable when the call returns; `version` grows with every catalogue change."""

    def version(self) -> int: ...

    def get_item_records(self, ids: Sequence[int], model: str = "") -> dict[int, ItemRecord]: ...

    def upsert_items(self, items: Sequence[Item], vectors: dict[int, np.ndarray], model: str) -> int: ...

    def delete_items(self, ids: Sequence[int]) -> tuple[list[int], int]: ...

    def get_items(self, ids: Sequence[int]) -> dict[int, Item]: ...

    def put_vectors(self, vectors: dict[int, np.ndarray], texts: dict[int, str], model: str) -> None: ...

    def drop_vectors_except(self, model: str) -> int: ...

    def get_vectors(self, ids: Sequence[int], model: str) -> dict[int, np.ndarray]: ...

    def existing_ids(self, ids: Sequence[int]) -> set[int]: ...

    def iter_vectors(self, model: str, batch: int = 4096) -> Iterator[tuple[np.ndarray, np.ndarray]]: ...

    def items_without_vector(self, model: str) -> list[Item]: ...

    def record_interactions(self, interactions: Sequence[Interaction]) -> int: ...

    def history(self, user_id: str, limit: int, liked_only: bool = False) -> tuple[list[HistoryEntry], int]: ...

    def history_key(self, user_id: str) -> int: ...

    def liked_interactions(self) -> tuple[list[str], np.ndarray, np.ndarray]: ...

    def seen_items(self, user_id: str) -> set[int]: ...

    def forget_user(self, user_id: str) -> int: ...

    def counts(self) -> dict[str, int]: ...

    def close(self) -> None: ...
