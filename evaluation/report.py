"""Evaluation output: JSON, a markdown table, and a PNG of Recall@K curves per method."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from bertrec.evaluation.metrics import paired_difference, standard_error
from bertrec.evaluation.runner import PRIMARY, MethodResult

METRICS = ("recall@10", "recall@20", "ndcg@10", "ndcg@20", "hitrate@10")


def summarise(results: list[MethodResult], reference: str | None = None) -> dict:
    """Per split and method: mean over seeds of each metric, spread across seeds, and the
    per-user paired difference in NDCG@10 against `reference` (first seed's users)."""
    out: dict = {}
    by_split: dict[str, dict[str, list[MethodResult]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        by_split[r.split][r.method].append(r)
    for split, methods in by_split.items():
        out[split] = {}
        for name, runs in methods.items():
            row: dict = {"seeds": [r.seed for r in runs], "params": runs[0].params}
            for m in METRICS:
                per_seed = [r.mean(m) for r in runs]
                row[m] = float(np.mean(per_seed))
                row[f"{m}_seed_std"] = float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else 0.0
            row[f"{PRIMARY}_user_se"] = float(np.mean([standard_error(r.per_user[PRIMARY]) for r in runs]))
            row["coverage@10"] = float(np.mean([r.coverage10 for r in runs]))
            row["recall_curve"] = np.mean([r.recall_curve for r in runs], axis=0).tolist()
            row["users"] = len(runs[0].users)
            row["fit_s"] = float(np.mean([r.fit_s for r in runs]))
            out[split][name] = row
        if reference and reference in methods:
            for name, runs in methods.items():
                diffs = [
                    paired_difference(a.per_user[PRIMARY], b.per_user[PRIMARY])
                    for a, b in zip(runs, methods[reference])
                ]
                out[split][name][f"{PRIMARY}_vs_{reference}"] = {
                    "mean_diff": float(np.mean([d[0] for d in diffs])),
                    "se": float(np.mean([d[1] for d in diffs])),
                }
    return out


def markdown(summary: dict, reference: str | None = None) -> str:
    lines = []
    for split, methods in summary.items():
        seeds = max(len(m["seeds"]) for m in methods.values())
        lines.append(f"### {split} ({next(iter(methods.values()))['users']} test users, {seeds} seed(s))\n")
        header = "| method | NDCG@10 | ± seeds | NDCG@20 | Recall@10 | Recall@20 | HitRate@10 | coverage@10 |"
        if reference:
            header += f" Δ NDCG@10 vs {reference} (± SE) |"
        lines.append(header)
        lines.append("|" + "---|" * (header.count("|") - 1))
        for name, m in sorted(methods.items(), key=lambda kv: -kv[1][PRIMARY]):
            row = (
                f"| {name} | {m['ndcg@10']:.4f} | {m['ndcg@10_seed_std']:.4f} | {m['ndcg@20']:.4f} | "
                f"{m['recall@10']:.4f} | {m['recall@20']:.4f} | {m['hitrate@10']:.4f} | {m['coverage@10']:.3f} |"
            )
            if reference:
                d = m.get(f"{PRIMARY}_vs_{reference}")
                row += f" {d['mean_diff']:+.4f} ± {d['se']:.4f} |" if d else " |"
            lines.append(row)
        lines.append("")
    return "\n".join(lines)


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(summary), figsize=(5.5 * len(summary), 4.2), squeeze=False)
    for ax, (split, methods) in zip(axes[0], summary.items()):
        for name, m in sorted(methods.items(), key=lambda kv: -kv[1][PRIMARY]):
            curve = m["recall_curve"]
            ax.plot(range(1, len(curve) + 1), curve, label=f"{name} ({m[PRIMARY]:.3f})")
        ax.set_title(f"{split}: Recall@K (legend: NDCG@10)")
        ax.set_xlabel("K")
        ax.set_ylabel("Recall@K")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(summary: dict, out_dir: Path, reference: str | None, meta: dict) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "evaluation.json", "md": out_dir / "evaluation.md", "png": out_dir / "evaluation.png"}
    paths["json"].write_text(json.dumps({**meta, "results": summary}, indent=2))
    paths["md"].write_text(markdown(summary, reference))
    plot(summary, paths["png"])
    return paths
