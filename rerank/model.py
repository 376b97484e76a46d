"""The fusion re-ranker: scalar signals (optionally joined with a learned projection of
user ⊙ item) scored by a small MLP. Saved as a folder: weights plus a JSON card (features, scaling, metrics)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bertrec.rerank.features import SCALAR_FEATURES

WEIGHTS = "reranker.pt"
CARD = "reranker.json"


class _Member(nn.Module):
    def __init__(self, dim: int, n_scalars: int, interaction_dims: int, hidden: int):
        super().__init__()
        # Without it the model sees only the scalar signals: less to overfit on small data.
        self.interaction = nn.Linear(dim, interaction_dims, bias=False) if interaction_dims else None
        self.mlp = nn.Sequential(
            nn.Linear(n_scalars + interaction_dims, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, scalars: torch.Tensor, crossed: torch.Tensor) -> torch.Tensor:
        if self.interaction is None:
            return self.mlp(scalars).squeeze(-1)
        return self.mlp(torch.cat([scalars, self.interaction(crossed)], dim=-1)).squeeze(-1)


class FusionReranker(nn.Module):
    """An average of `members` independently seeded MLPs: a few lists more or less move a single
    small model's ranking noticeably; the average is steadier."""

    def __init__(
        self,
        dim: int,
        n_scalars: int = len(SCALAR_FEATURES),
        members: int = 1,
        interaction_dims: int = 16,
        hidden: int = 64,
    ):
        super().__init__()
        self.dim = dim
        self.shape = {"members": members, "interaction_dims": interaction_dims, "hidden": hidden}
        self.members = nn.ModuleList(_Member(dim, n_scalars, interaction_dims, hidden) for _ in range(members))
        self.register_buffer("mean", torch.zeros(n_scalars))
        self.register_buffer("std", torch.ones(n_scalars))

    def forward(
        self, scalars: torch.Tensor, user: torch.Tensor, items: torch.Tensor, member: int | None = None
    ) -> torch.Tensor:
        """scalars (..., C, S), user (..., D), items (..., C, D) -> scores (..., C)."""
        scalars = (scalars - self.mean) / self.std
        crossed = user.unsqueeze(-2) * items
        if member is not None:
            return self.members[member](scalars, crossed)
        return torch.stack([m(scalars, crossed) for m in self.members]).mean(0)

    @torch.no_grad()
    def score(self, scalars: np.ndarray, user: np.ndarray, items: np.ndarray) -> np.ndarray:
        self.eval()
        out = self(torch.from_numpy(scalars), torch.from_numpy(user.astype(np.float32)), torch.from_numpy(items))
        return out.numpy()

    def save(self, path: str | Path, card: dict) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        torch.save(self.state_dict(), path / WEIGHTS)
        card = {"features": list(SCALAR_FEATURES), "dim": self.dim, "shape": self.shape, **card}
        (path / CARD).write_text(json.dumps(card, indent=2))

    @classmethod
    def load(cls, path: str | Path) -> tuple[FusionReranker, dict]:
        path = Path(path)
        card = json.loads((path / CARD).read_text())
        if card["features"] != list(SCALAR_FEATURES):
            raise ValueError(f"{path} was trained with features {card['features']}, this version has {SCALAR_FEATURES}")
        model = cls(card["dim"], **card.get("shape", {}))
        model.load_state_dict(torch.load(path / WEIGHTS, weights_only=True))
        model.eval()
        return model, card
