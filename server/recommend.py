"""The recommendation path: user vector -> FAISS top-N -> exclude, filter -> exact score -> MMR."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from bertrec.config import ServerConfig
from bertrec.errors import DeadlineExceeded, InvalidRequest, NotFound
from bertrec.server.catalog import Catalog, TextEncoder
from bertrec.server.ranking import closest_history, mmr, order_by_score
from bertrec.server.reranking import ServingReranker
from bertrec.server.users import UserProfile, UserProfiles
from bertrec.stages import stage as timed
from bertrec.store import HistoryEntry
from bertrec.types import Item, MetadataFilter, RecommendQuery, RerankQuery, ScoredItem, Stage, UserQuery

logger = logging.getLogger(__name__)

TEXT_WEIGHT = 0.5  # share of the free-text intent when a query has both history and text
MAX_SEARCH_ROUNDS = 4  # filters or seen items that take most hits widen the search this many times
SHORT_READ_ROWS = 100  # at most this many vectors read right after a search, in its thread


def check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.time() >= deadline:
        raise DeadlineExceeded("deadline passed; the request was not processed further")


def _metadata_matches(metadata: dict[str, Any], filters: tuple[MetadataFilter, ...]) -> bool:
    for f in filters:
        value = metadata.get(f.key)
        if value is None:
            return False
        values = value if isinstance(value, list) else [value]
        rendered = {v if isinstance(v, str) else _render(v) for v in values}
        if rendered.isdisjoint(f.values):
            return False
    return True


def _render(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


class Recommender:
    def __init__(
        self,
        catalog: Catalog,
        encoder: TextEncoder,
        profiles: UserProfiles,
        config: ServerConfig,
        reranker: ServingReranker | None = None,
    ):
        self.catalog = catalog
        self.encoder = encoder
        self.profiles = profiles
        self.config = config
        self.reranker = reranker

    def _active_reranker(self) -> ServingReranker | None:
        """The trained re-ranker once its signals match the serving encoder; else None."""
        if self.reranker is not None and self.reranker.ready_for(self.catalog.model):
            return self.reranker
        return None

    async def _liked_history(self, user: UserQuery) -> list[HistoryEntry]:
        """Liked history, oldest first: the store's, then the explicit ids (as if just liked)."""
        history: list[HistoryEntry] = []
        if user.user_id:
            history, _ = await asyncio.to_thread(
                self.catalog.store.history, user.user_id, self.config.max_history, True
            )
        now = max([time.time(), *(e.timestamp for e in history)])
        return history + [HistoryEntry(int(i), now, 1.0) for i in user.history_item_ids]

    async def _query_profile(self, user: UserQuery, deadline: float | None) -> tuple[np.ndarray, UserProfile]:
        """The query vector and the liked history behind it."""
        profile = await self.profiles.for_user(user.user_id) if user.user_id else None
        if user.history_item_ids:
            explicit = await self.profiles.for_history(user.history_item_ids)
            profile = explicit if profile is None else _merge(profile, explicit)
        vector = profile.vector if profile is not None else None
        if user.text:
            check_deadline(deadline)
            text_vector = (await self.encoder.encode([user.text], deadline))[0]
            vector = text_vector if vector is None else TEXT_WEIGHT * text_vector + (1 - TEXT_WEIGHT) * vector
            vector = vector / max(float(np.linalg.norm(vector)), 1e-12)
        if vector is None:
            raise NotFound("the user's history has no liked item in the catalogue; give text or more history")
        if profile is None:
            dim = len(vector)
            profile = UserProfile(vector, np.zeros(0, np.int64), np.zeros((0, dim), np.float32))
        return vector.astype(np.float32), profile

    async def recommend(self, q: RecommendQuery, deadline: float | None) -> list[ScoredItem]:
        final: list[ScoredItem] = []
        async for results, _ in self.recommend_stages(q, deadline):
            final = results
        return final

    async def recommend_stages(
        self, q: RecommendQuery, deadline: float | None
    ) -> AsyncIterator[tuple[list[ScoredItem], bool]]:
        """(top-k, is_final): with a trained re-ranker and `retrieval_first`, the retrieval-stage
        top-k comes first, ready to send before the re-ranker runs."""
        check_deadline(deadline)
        reranker = self._active_reranker()
        by_index = reranker is None and q.diversity == 0 and self.catalog.index.exact_scores
        # What the ranking below will read from the store, read in the search's own thread.
        wanted = _Wanted(top_k=q.k if by_index else 0, pool=reranker is None and not by_index, items=q.include_items)
        retrieved = await self._retrieve_for_cached_user(q, wanted, deadline)
        if retrieved is None:
            vector, profile = await self._query_profile(q.user, deadline)
            seen = await self.profiles.seen(q.user.user_id) if q.exclude_seen and q.user.user_id else None
            retrieved = await self._retrieve(q, vector, profile, seen, wanted, deadline)
        vector, profile, exclude, found = retrieved
        candidates, items = found.ids, found.items
        check_deadline(deadline)
        if reranker is None:
            if by_index:
                yield await self._top_by_index(vector, profile, found, q), True
                return
            yield (
                await self._score(
                    vector, profile, candidates, items, q.k, q.diversity, q.include_items, vectors=found.vectors
                ),
                True,
            )
            return
        if q.retrieval_first:
            yield await self._score(vector, profile, candidates, items, q.k, 0.0, q.include_items), False
        history = await self._liked_history(q.user)
        extra = reranker.extra_candidates(history, set(exclude.tolist()) | set(candidates))
        if extra and q.filters:
            found = await asyncio.to_thread(self.catalog.store.get_items, extra)
            items = {**items, **found}
            extra = [i for i in extra if i in found and _metadata_matches(found[i].metadata, q.filters)]
        check_deadline(deadline)
        reranked = await self._score(
            vector, profile, candidates + extra, items, q.k, q.diversity, q.include_items, history=history
        )
        yield reranked, True

    async def _retrieve_for_cached_user(
        self, q: RecommendQuery, wanted: _Wanted, deadline: float | None
    ) -> _Retrieved | None:
        """A known user asked for by id alone, with a cached profile: search with that profile at
        once and let the search's thread confirm that the user's history is unchanged, instead of
        a thread hand-off of its own for that check first. None without a cached profile or when
        the history changed since it was made (the caller then builds the profile anew)."""
        user = q.user
        if not user.user_id or user.history_item_ids or user.text:
            return None
        cached = self.profiles.unconfirmed(user.user_id)
        if cached is None or cached.profile.vector is None:
            return None
        expect = (user.user_id, cached.key)
        vector = np.asarray(cached.profile.vector, np.float32)
        seen = cached.seen if q.exclude_seen else None
        retrieved = await self._retrieve(q, vector, cached.profile, seen, wanted, deadline, expect)
        if retrieved.found.stale or not self.profiles.confirmed(user.user_id, cached):
            return None
        return retrieved

    async def _retrieve(
        self,
        q: RecommendQuery,
        vector: np.ndarray,
        profile: UserProfile,
        seen: np.ndarray | None,
        wanted: _Wanted,
        deadline: float | None,
        expect: tuple[str, int] | None = None,
    ) -> _Retrieved:
        """The candidate pool for `vector`, without the items the query excludes (and `seen`)."""
        excluded = [np.asarray(q.exclude_item_ids, np.int64)]
        if q.exclude_seen:
            excluded.append(np.asarray(q.user.history_item_ids, np.int64))
            if seen is not None:
                excluded.append(seen)
        exclude = _sorted_union(excluded)
        pool_size = max(q.candidate_pool_size or self.config.default_candidate_pool_size, q.k)
        found = await self._candidates(vector, pool_size, exclude, q.filters, deadline, wanted, expect)
        return _Retrieved(vector, profile, exclude, found)

    async def _candidates(
        self,
        vector: np.ndarray,
        pool_size: int,
        exclude: np.ndarray,
        filters: tuple[MetadataFilter, ...],
        deadline: float | None,
        wanted: _Wanted,
        expect: tuple[str, int] | None = None,
    ) -> _Candidates:
        """The pool in index order, with what `wanted` asks read beside the search; `stale` when
        `expect` (user id, history key) no longer holds."""
        index = self.catalog.index
        assert index is not None
        # Room for at most a pool's worth of excluded hits at first: a user with thousands of seen
        # items would otherwise make every search thousands wide (an HNSW search costs about k
        # steps; a GPU index takes k <= 2048). The loop widens when too few hits are left.
        fetch = pool_size + min(len(exclude), pool_size)
        rounds = 1
        while True:
            check_deadline(deadline)
            fetch = min(fetch, len(index))
            last = rounds == MAX_SEARCH_ROUNDS or fetch >= len(index)
            sift = functools.partial(
                self._sift, exclude=exclude, filters=filters, pool_size=pool_size, wanted=wanted, last=last,
                expect=expect,
            )  # fmt: skip
            with timed("search"):
                if wanted.short and not filters:
                    found = await self.catalog.search(vector[None, :], fetch, sift)
                else:  # longer reads (the pool's vectors, filtered items): a thread of their own
                    found = await asyncio.to_thread(sift, *await self.catalog.search(vector[None, :], fetch))
            if found.complete or found.stale or last:
                return found
            fetch *= 4
            rounds += 1

    def _sift(
        self,
        found_scores: np.ndarray,
        found: np.ndarray,
        exclude: np.ndarray,
        filters: tuple[MetadataFilter, ...],
        pool_size: int,
        wanted: _Wanted,
        last: bool,
        expect: tuple[str, int] | None,
    ) -> _Candidates:
        """In the search's worker thread: drop excluded and filtered-out hits, then, once the pool
        is full or the search will not widen again, read what the ranking needs (the store's
        reads, each otherwise a thread hand-off of its own)."""
        store = self.catalog.store
        if expect is not None and store.history_key(expect[0]) != expect[1]:
            return _Candidates([], found_scores[0][:0], {}, None, None, complete=False, stale=True)
        ids, scores = _hits(found[0], found_scores[0], exclude)
        items: dict[int, Item] = {}
        if filters:
            items = store.get_items(ids.tolist())
            matches = (i in items and _metadata_matches(items[i].metadata, filters) for i in ids.tolist())
            keep = np.fromiter(matches, dtype=bool, count=len(ids))
            ids, scores = ids[keep], scores[keep]
        complete = len(ids) >= pool_size
        ids, scores = ids[:pool_size], scores[:pool_size]
        if not (complete or last):  # the search widens: nothing to read yet
            return _Candidates(ids.tolist(), scores, items, None, None, complete)
        if wanted.top_k:
            top = ids[order_by_score(scores, ids)][: wanted.top_k].tolist()
            vectors = store.get_vectors(top, self.catalog.model)
            missing = [i for i in top if i not in items] if wanted.items else []
            if missing:
                items = {**items, **store.get_items(missing)}
            return _Candidates(ids.tolist(), scores, items, top, vectors, complete)
        vectors = store.get_vectors(ids.tolist(), self.catalog.model) if wanted.pool else None
        return _Candidates(ids.tolist(), scores, items, None, vectors, complete)

    async def _top_by_index(
        self, vector: np.ndarray, profile: UserProfile, found: _Candidates, q: RecommendQuery
    ) -> list[ScoredItem]:
        """The index's scores are exact already: order by them and read only the top k's vectors
        (for the "because" explanation) instead of re-scoring the whole candidate pool."""
        assert found.top is not None
        result = await self._score(
            vector, profile, found.top, found.items, q.k, 0.0, q.include_items, vectors=found.vectors
        )
        if len(result) < min(q.k, len(found.ids)):  # some were deleted since the search
            return await self._score(vector, profile, found.ids, found.items, q.k, 0.0, q.include_items)
        return result

    async def _score(
        self,
        vector: np.ndarray,
        profile: UserProfile,
        ids: list[int],
        items: dict[int, Item],
        k: int,
        diversity: float,
        include_items: bool,
        texts_vectors: np.ndarray | None = None,
        history: list[HistoryEntry] | None = None,
        vectors: dict[int, np.ndarray] | None = None,
    ) -> list[ScoredItem]:
        """Exact cosine order, or the trained re-ranker's when `history` is given; then MMR.
        `vectors`: the store's vectors of `ids`, when already read."""
        if not ids:
            return []
        if texts_vectors is None:
            stored = vectors
            if stored is None:
                stored = await asyncio.to_thread(self.catalog.store.get_vectors, ids, self.catalog.model)
            ids = [i for i in ids if i in stored]  # deleted since the search
            matrix = np.stack([stored[i] for i in ids]) if ids else np.zeros((0, len(vector)), np.float32)
        else:
            matrix = texts_vectors
        id_array = np.asarray(ids, dtype=np.int64)
        scores = matrix @ vector  # exact re-scoring, whatever approximation the index made
        stage = Stage.RETRIEVAL
        reranked = history is not None and self.reranker is not None
        if reranked:
            texts = {i: item.text for i, item in items.items()}  # raw candidate texts have no store row
            scores = await asyncio.to_thread(self.reranker.score, history, vector, id_array, matrix, texts)
            stage = Stage.RERANKED
        order = order_by_score(scores, id_array)
        id_array, scores, matrix = id_array[order], scores[order], matrix[order]
        if diversity > 0:
            picks = mmr(_unit_range(scores) if reranked else scores, matrix, k, diversity)
            stage = Stage.RERANKED
        else:
            picks = np.arange(min(k, len(id_array)))
        id_array, scores, matrix = id_array[picks], scores[picks], matrix[picks]
        because_ids, because_sims = closest_history(matrix, profile.history_ids, profile.history_vectors)
        if include_items:
            missing = [i for i in id_array.tolist() if i not in items and i > 0]
            if missing:
                items = {**items, **await asyncio.to_thread(self.catalog.store.get_items, missing)}
        return [
            ScoredItem(
                item_id=int(item_id),
                score=float(scores[rank]),
                rank=rank + 1,
                because_item_id=int(because_ids[rank]),
                because_similarity=float(because_sims[rank]),
                item=items.get(int(item_id)) if include_items else None,
                stage=stage,
            )
            for rank, item_id in enumerate(id_array.tolist())
        ]

    async def rerank(self, q: RerankQuery, deadline: float | None) -> list[ScoredItem]:
        check_deadline(deadline)
        vector, profile = await self._query_profile(q.user, deadline)
        history = await self._liked_history(q.user) if self._active_reranker() else None
        if q.candidate_texts:
            matrix = await self.encoder.encode(list(q.candidate_texts), deadline)
            ids = [-(i + 1) for i in range(len(q.candidate_texts))]
            items = {-(i + 1): Item(-(i + 1), text) for i, text in enumerate(q.candidate_texts)}
            return await self._score(
                vector, profile, ids, items, len(ids), q.diversity, q.include_items, matrix, history
            )
        unique = list(dict.fromkeys(q.candidate_item_ids))
        if len(unique) != len(q.candidate_item_ids):
            raise InvalidRequest("candidate_item_ids contains duplicates")
        stored = await asyncio.to_thread(self.catalog.store.existing_ids, unique)
        missing = [i for i in unique if i not in stored]
        if missing:
            raise NotFound(f"unknown candidate item ids: {missing[:10]}")
        return await self._score(
            vector, profile, unique, {}, len(unique), q.diversity, q.include_items, history=history
        )


@dataclass(frozen=True)
class _Wanted:
    """What the ranking after a search will read from the store, so the search's thread reads it."""

    top_k: int = 0  # > 0: rank the pool by the index's exact scores; the top k's vectors
    pool: bool = False  # the whole pool's vectors (re-scored exactly); not with top_k
    items: bool = False  # the top k's items too (include_items)

    @property
    def short(self) -> bool:
        """Few enough rows to read in the search's shared thread (see SearchBatcher)."""
        return not self.pool and self.top_k <= SHORT_READ_ROWS


@dataclass(frozen=True)
class _Candidates:
    ids: list[int]  # the pool, in index order
    scores: np.ndarray  # the index's score of each
    items: dict[int, Item]  # read for filters or include_items
    top: list[int] | None  # the top k by the index's scores (when asked)
    vectors: dict[int, np.ndarray] | None  # the store's vectors of `top` or of the pool (when read)
    complete: bool  # the pool is full; otherwise the search widens
    stale: bool = False  # the user's history changed since the profile searched with was made


class _Retrieved(NamedTuple):
    vector: np.ndarray  # the query vector
    profile: UserProfile  # the liked history behind it
    exclude: np.ndarray  # ids kept out of the pool, sorted
    found: _Candidates


def _sorted_union(arrays: list[np.ndarray]) -> np.ndarray:
    """The distinct ids of `arrays`, sorted. A lone non-empty array is taken as it is: the usual
    case is only the user's seen items, which the profile cache keeps sorted and distinct, so a
    user with thousands of them costs no copy per call."""
    filled = [a for a in arrays if len(a)]
    if len(filled) == 1 and (len(filled[0]) < 2 or bool(np.all(filled[0][1:] > filled[0][:-1]))):
        return filled[0]
    return np.unique(np.concatenate(filled)) if filled else np.zeros(0, np.int64)


def _hits(ids: np.ndarray, scores: np.ndarray, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A search's hits in index order without padding (-1), excluded ids (`exclude` sorted) and
    repeats (a sharded index can return an id from two shards while it moves). Array operations
    throughout: a Python loop over the hits took 40 us for a pool of 235, a dict entry per hit 150."""
    ids = ids.astype(np.int64, copy=False)
    keep = ids >= 0
    if len(exclude):
        at = np.minimum(np.searchsorted(exclude, ids), len(exclude) - 1)
        keep &= exclude[at] != ids
    ids, scores = ids[keep], scores[keep]
    _, first = np.unique(ids, return_index=True)
    if len(first) < len(ids):
        first.sort()  # the first of each repeat, in index order
        ids, scores = ids[first], scores[first]
    return ids, scores.astype(np.float32, copy=False)


def _unit_range(scores: np.ndarray) -> np.ndarray:
    """Re-ranker scores are logits; MMR's trade-off wants relevance on a similarity-like scale."""
    span = float(scores.max() - scores.min()) if len(scores) else 0.0
    return (scores - scores.min()) / span if span > 0 else np.zeros_like(scores)


def _merge(a: UserProfile, b: UserProfile) -> UserProfile:
    if a.vector is None:
        return b
    if b.vector is None:
        return a
    vector = a.vector + b.vector
    return UserProfile(
        vector / max(float(np.linalg.norm(vector)), 1e-12),
        np.concatenate([a.history_ids, b.history_ids]),
        np.concatenate([a.history_vectors, b.history_vectors]),
    )
