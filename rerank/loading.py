"""Opening a trained re-ranker folder of either kind (fusion, cross-encoder), by its card's `kind`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from bertrec.rerank.model import CARD, FusionReranker

if TYPE_CHECKING:
    from bertrec.rerank.cross_encoder import CascadeReranker

FUSION = "fusion"


@dataclass
class LoadedReranker:
    kind: str
    fusion: FusionReranker  # every kind ranks all candidates with the fusion model first
    fusion_card: dict  # dim, encoder and signal settings the service fits its signals with
    card: dict  # the folder's own card (the fusion card for a fusion folder)
    cascade: CascadeReranker | None = None  # a cross-encoder folder's fusion -> cross-encoder cascade


def reranker_kind(path: str | Path) -> str:
    card = Path(path) / CARD
    if not card.exists():
        raise FileNotFoundError(f"no re-ranker card ({CARD}) in {path}")
    return json.loads(card.read_text()).get("kind", FUSION)  # fusion cards predate `kind`


def load_reranker(path: str | Path, device: str = "cpu") -> LoadedReranker:
    kind = reranker_kind(path)
    if kind == FUSION:
        model, card = FusionReranker.load(path)
        return LoadedReranker(kind, model, card, card)
    from bertrec.rerank.cross_encoder import KIND, CascadeReranker

    if kind != KIND:
        raise ValueError(f"{path}: unknown re-ranker kind {kind!r} (this version knows {FUSION}, {KIND})")
    cascade, card = CascadeReranker.load(path, device)
    fusion_card = json.loads((Path(path) / card["first_stage"] / CARD).read_text())
    return LoadedReranker(kind, cascade.fusion, fusion_card, card, cascade)
