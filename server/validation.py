"""Request checks: every limit a caller can exceed gets INVALID_ARGUMENT with a message naming it."""

from __future__ import annotations

import math
from collections.abc import Sequence

from bertrec.config import Config, ServerConfig, check_batching
from bertrec.errors import InvalidRequest
from bertrec.types import Interaction, Item, RecommendQuery, RerankQuery, UserQuery

MAX_USER_ID_CHARS = 256
MAX_FILTERS = 32
MAX_CHUNK_SIZE = 1000
MAX_MODEL_PATH_CHARS = 4096


def check_text(text: str, limit: int, what: str) -> None:
    if not text or not text.strip():
        raise InvalidRequest(f"{what} is empty")
    if len(text) > limit:
        raise InvalidRequest(f"{what} has {len(text)} characters; the limit is {limit}")


def check_count(n: int, limit: int, what: str) -> None:
    if n > limit:
        raise InvalidRequest(f"too many {what} in one request: {n} (limit {limit})")


def check_item_id(item_id: int, what: str = "item id") -> None:
    if item_id <= 0:
        raise InvalidRequest(f"{what} must be a positive 64-bit integer, got {item_id}")


def check_user_id(user_id: str) -> None:
    if not user_id.strip():
        raise InvalidRequest("user_id is empty")
    if len(user_id) > MAX_USER_ID_CHARS:
        raise InvalidRequest(f"user_id is longer than {MAX_USER_ID_CHARS} characters")


def check_user(user: UserQuery, cfg: ServerConfig) -> None:
    if not (user.user_id or user.history_item_ids or user.text):
        raise InvalidRequest("user needs a user_id, history_item_ids or text")
    if user.user_id:
        check_user_id(user.user_id)
    check_count(len(user.history_item_ids), cfg.max_items_per_request, "history items")
    for item_id in user.history_item_ids:
        check_item_id(item_id, "history item id")
    if user.text:
        check_text(user.text, cfg.max_text_chars, "user text")


def check_chunk_size(chunk_size: int) -> None:
    if chunk_size > MAX_CHUNK_SIZE:
        raise InvalidRequest(f"chunk_size {chunk_size} is above {MAX_CHUNK_SIZE}")


def check_diversity(diversity: float) -> None:
    if not (0.0 <= diversity < 1.0) or math.isnan(diversity):
        raise InvalidRequest(f"diversity must be in [0, 1), got {diversity}")


def check_recommend(q: RecommendQuery, cfg: ServerConfig) -> None:
    check_user(q.user, cfg)
    if not 1 <= q.k <= cfg.max_k:
        raise InvalidRequest(f"k must be between 1 and {cfg.max_k}, got {q.k}")
    if q.candidate_pool_size and not q.k <= q.candidate_pool_size <= cfg.max_candidate_pool_size:
        raise InvalidRequest(
            f"candidate_pool_size must be between k ({q.k}) and {cfg.max_candidate_pool_size}, "
            f"got {q.candidate_pool_size}"
        )
    check_diversity(q.diversity)
    check_chunk_size(q.chunk_size)
    check_count(len(q.filters), MAX_FILTERS, "filters")
    for f in q.filters:
        if not f.key or not f.values:
            raise InvalidRequest("a metadata filter needs a key and at least one value")
    check_count(len(q.exclude_item_ids), cfg.max_items_per_request, "excluded items")


def check_rerank(q: RerankQuery, cfg: ServerConfig) -> None:
    check_user(q.user, cfg)
    if bool(q.candidate_item_ids) == bool(q.candidate_texts):
        raise InvalidRequest("give either candidate_item_ids or candidate_texts (one of them, not both)")
    check_count(len(q.candidate_item_ids) + len(q.candidate_texts), cfg.max_items_per_request, "candidates")
    for item_id in q.candidate_item_ids:
        check_item_id(item_id, "candidate item id")
    for i, text in enumerate(q.candidate_texts):
        check_text(text, cfg.max_text_chars, f"candidate text {i}")
    check_diversity(q.diversity)
    check_chunk_size(q.chunk_size)


def check_items(items: Sequence[Item], cfg: ServerConfig) -> None:
    check_count(len(items), cfg.max_items_per_request, "items")
    for item in items:
        check_item_id(item.id)
        check_text(item.text, cfg.max_text_chars, f"text of item {item.id}")


def check_ids(ids: Sequence[int], cfg: ServerConfig) -> None:
    if not ids:
        raise InvalidRequest("no item ids given")
    check_count(len(ids), cfg.max_items_per_request, "item ids")
    for item_id in ids:
        check_item_id(item_id)


def check_interactions(interactions: Sequence[Interaction], cfg: ServerConfig) -> None:
    if not interactions:
        raise InvalidRequest("no interactions given")
    check_count(len(interactions), cfg.max_items_per_request, "interactions")
    for x in interactions:
        check_user_id(x.user_id)
        check_item_id(x.item_id)
        if not math.isfinite(x.weight) or not math.isfinite(x.timestamp) or x.timestamp < 0:
            raise InvalidRequest(f"interaction of user {x.user_id!r} has a non-finite weight or bad timestamp")


def check_model_path(path: str) -> None:
    # The path is resolved on disk; a NUL byte makes the OS calls raise instead of answering.
    if "\x00" in path or len(path) > MAX_MODEL_PATH_CHARS:
        raise InvalidRequest(f"model_path must be a folder name without NUL, at most {MAX_MODEL_PATH_CHARS} chars")


def check_texts(texts: Sequence[str], cfg: ServerConfig) -> None:
    if not texts:
        raise InvalidRequest("no texts given")
    check_count(len(texts), cfg.max_items_per_request, "texts")
    for i, text in enumerate(texts):
        check_text(text, cfg.max_text_chars, f"text {i}")


def check_batching_change(change: dict, config: Config) -> None:
    """A ConfigureBatching request: at least one setting, each within the limits the config has."""
    if all(v is None for v in change.values()):
        raise InvalidRequest("give at least one of max_batch_size, max_wait_s, max_batch_tokens")
    try:
        check_batching(
            change["max_batch_size"],
            change["max_wait_s"],
            change["max_batch_tokens"],
            config.workers.max_queue,
            config.model.max_length,
        )
    except ValueError as exc:
        raise InvalidRequest(str(exc)) from None
