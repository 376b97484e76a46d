"""MovieLens CSV reader (movies.csv, ratings.csv, tags.csv) into bertrec items and interactions."""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

from bertrec.types import Interaction, Item

_YEAR = re.compile(r"\((\d{4})\)\s*$")
LIKED_RATING = 3.0  # ratings above this shape taste; at or below it the movie is only "seen"


def bundled_path() -> Path:
    """The MovieLens-small copy shipped as the demo catalogue."""
    return Path(str(resources.files("bertrec.demo") / "movielens-small"))


def read_movies(folder: Path) -> Iterator[Item]:
    """Item text is "Title (year)": on this data it retrieves better than title + genres + tags."""
    with open(Path(folder) / "movies.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            title = row["title"].strip()
            match = _YEAR.search(title)
            genres = [g for g in row["genres"].split("|") if g and g != "(no genres listed)"]
            metadata: dict = {"title": title, "genres": genres}
            if match:
                metadata["year"] = int(match.group(1))
            yield Item(id=int(row["movieId"]), text=title, metadata=metadata)


def read_ratings(folder: Path) -> Iterator[Interaction]:
    """One interaction per rating; weight = rating - 3, so only ratings above 3 count as liked."""
    with open(Path(folder) / "ratings.csv", newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            yield Interaction(
                user_id=row["userId"],
                item_id=int(row["movieId"]),
                timestamp=float(row["timestamp"]),
                weight=float(row["rating"]) - LIKED_RATING,
            )
