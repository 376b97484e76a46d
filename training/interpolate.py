"""Weight-space interpolation between a starting checkpoint and one fine-tuned from it (WiSE-FT,
Wortsman et al. 2022): weights = start + alpha * (tuned - start).

Fine-tuning on one domain specialises the encoder to that catalogue and costs it some of what it
knew about text in general; on another domain the tuned model can rank worse than the one it
started from (MovieLens genre split: source-tuned 0.046 vs pretrained 0.065 target NDCG@10).
Halfway weights keep both: they were measured ahead of either end on the target domain (see
EVALUATION.md, "Cross-domain transfer"). Works because both ends share one pretrained basin.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from bertrec.server.users import USER_TOWER_FILE
from bertrec.training.trainer import CONFIG_FILE, model_card


def interpolate_checkpoints(start: str, tuned: str, alpha: float, out: str | Path) -> Path:
    """Write start + alpha * (tuned - start) to `out` as a Hugging Face checkpoint. `start` empty
    means the packaged MiniLM. The tuned checkpoint's training record goes along, marked as
    interpolated and without its validation figures: they measured other weights (so the hot-swap
    gate treats the result as unevaluated)."""
    from transformers import AutoModel, AutoTokenizer

    from bertrec.workers.encoder import default_model_path

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1] (0 = the start, 1 = the tuned weights), got {alpha}")
    start_path, tuned_path, out = Path(start or default_model_path()), Path(tuned), Path(out)
    model = AutoModel.from_pretrained(start_path)
    tuned_state = AutoModel.from_pretrained(tuned_path).state_dict()
    state = model.state_dict()
    if state.keys() != tuned_state.keys() or any(state[k].shape != tuned_state[k].shape for k in state):
        raise ValueError(f"{tuned_path} is not the same architecture as {start_path}: cannot interpolate")
    model.load_state_dict(
        {k: v + alpha * (tuned_state[k] - v) if v.is_floating_point() else tuned_state[k] for k, v in state.items()}
    )
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(tuned_path).save_pretrained(out)
    _interpolate_user_tower(start_path, tuned_path, alpha, out)
    record = _record(start, tuned_path, alpha)
    (out / CONFIG_FILE).write_text(json.dumps(record, indent=2))
    card = model_card(record) if record.get("config") else "# bertrec encoder\n"
    (out / "README.md").write_text(card + _card_line(start, tuned_path, alpha))
    return out


def _interpolate_user_tower(start: Path, tuned: Path, alpha: float, out: Path) -> None:
    """The pooled tower's layer starts at zero, so a start without one counts as zero."""
    if not (tuned / USER_TOWER_FILE).exists():
        return
    end = np.load(tuned / USER_TOWER_FILE)
    begin = np.load(start / USER_TOWER_FILE) if (start / USER_TOWER_FILE).exists() else np.zeros_like(end)
    np.save(out / USER_TOWER_FILE, begin + alpha * (end - begin))


def _record(start: str, tuned: Path, alpha: float) -> dict:
    record = json.loads((tuned / CONFIG_FILE).read_text()) if (tuned / CONFIG_FILE).exists() else {}
    if record.get("summary"):
        record["summary"] = {**record["summary"], "validation": {}}
    record["history"] = []
    record["interpolation"] = {"start": start or "packaged MiniLM", "tuned": str(tuned), "alpha": alpha}
    return record


def _card_line(start: str, tuned: Path, alpha: float) -> str:
    return (
        f"\nWeights interpolated: start + {alpha} x (tuned - start), start `{start or 'all-MiniLM-L6-v2 (packaged)'}`,"
        f" tuned `{tuned}` (WiSE-FT). Validation figures of the tuned weights are not carried over.\n"
    )
