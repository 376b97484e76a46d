"""Interaction datasets for evaluation and training: MovieLens and a generic CSV / JSONL / Parquet format."""

from __future__ import annotations

import csv
import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bertrec.types import Item

_YEAR = re.compile(r"\((\d{4})\)\s*$")

# Item-text templates. Fields: {title} (with year), {name} (title without year), {year},
# {genres}, {tags}. "Title (year)" alone retrieves best zero-shot on MovieLens.
TEMPLATES = {
    "title": "{title}",
    "title_genres": "{title}. {genres}",
    "title_genres_tags": "{title}. {genres}. {tags}",
}


@dataclass
class Dataset:
    """Items and an interaction log as parallel arrays; item ids are the caller's ids."""

    items: list[Item]
    users: np.ndarray  # str user id per interaction
    item_ids: np.ndarray  # int64
    timestamps: np.ndarray  # float64, seconds
    weights: np.ndarray  # float32: rating or event weight
    positive_threshold: float  # weight >= this is a positive

    @property
    def positive(self) -> np.ndarray:
        return self.weights >= self.positive_threshold

    def subset(self, mask: np.ndarray) -> Dataset:
        return Dataset(
            self.items,
            self.users[mask],
            self.item_ids[mask],
            self.timestamps[mask],
            self.weights[mask],
            self.positive_threshold,
        )


def _read_rows(path: Path) -> list[dict]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if path.suffix in (".jsonl", ".ndjson"):
        with open(path, encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def render_text(template: str, metadata: dict) -> str:
    text = TEMPLATES.get(template, template).format(
        title=metadata.get("title", ""),
        name=metadata.get("name", metadata.get("title", "")),
        year=metadata.get("year", ""),
        genres=", ".join(metadata.get("genres", [])),
        tags=", ".join(metadata.get("tags", [])),
    )
    return re.sub(r"(\.\s*)+$", "", text.strip()) or metadata.get("title", "")


def load_movielens(folder: str | Path, template: str = "title", top_tags: int = 5) -> Dataset:
    """movies.csv + ratings.csv (+ tags.csv for {tags}); positives are ratings >= 4."""
    folder = Path(folder)
    tags: dict[int, Counter] = defaultdict(Counter)
    if (folder / "tags.csv").exists():
        for row in _read_rows(folder / "tags.csv"):
            tags[int(row["movieId"])][row["tag"].strip().lower()] += 1
    items = []
    for row in _read_rows(folder / "movies.csv"):
        item_id = int(row["movieId"])
        title = row["title"].strip()
        match = _YEAR.search(title)
        metadata = {
            "title": title,
            "name": _YEAR.sub("", title).strip(),
            "genres": [g for g in row["genres"].split("|") if g and g != "(no genres listed)"],
            "tags": [t for t, _ in tags[item_id].most_common(top_tags)],
        }
        if match:
            metadata["year"] = int(match.group(1))
        items.append(Item(item_id, render_text(template, metadata), metadata))
    ratings = _read_rows(folder / "ratings.csv")
    return Dataset(
        items=items,
        users=np.array([r["userId"] for r in ratings]),
        item_ids=np.array([int(r["movieId"]) for r in ratings], dtype=np.int64),
        timestamps=np.array([float(r["timestamp"]) for r in ratings]),
        weights=np.array([float(r["rating"]) for r in ratings], dtype=np.float32),
        positive_threshold=4.0,
    )


def load_generic(
    items_path: str | Path, interactions_path: str | Path, template: str = "{text}", positive_threshold: float = 1.0
) -> Dataset:
    """items: id, text, optional metadata (JSON object); interactions: user_id, item_id, optional
    timestamp and weight (default 1). CSV, JSONL or Parquet, by file extension."""
    items = []
    for row in _read_rows(Path(items_path)):
        metadata = row.get("metadata") or {}
        if isinstance(metadata, str):
            metadata = json.loads(metadata) if metadata.strip() else {}
        text = str(row["text"])
        rendered = text if template == "{text}" else render_text(template, {"title": text, **metadata})
        items.append(Item(int(row["id"]), rendered, metadata))
    rows = _read_rows(Path(interactions_path))
    return Dataset(
        items=items,
        users=np.array([str(r["user_id"]) for r in rows]),
        item_ids=np.array([int(r["item_id"]) for r in rows], dtype=np.int64),
        timestamps=np.array([float(r.get("timestamp") or 0.0) for r in rows]),
        weights=np.array(
            [float(r.get("weight") if r.get("weight") not in (None, "") else 1.0) for r in rows], dtype=np.float32
        ),
        positive_threshold=positive_threshold,
    )
