"""The cross-domain experiment on a slice of MovieLens with a few fine-tuning steps: domains share
no item, every encoder variant is trained and scored, and the report files are written."""

from __future__ import annotations

import json

import pytest

from bertrec.evaluation.cross_domain import CrossDomainConfig, genre_domains, run_cross_domain, subsample
from bertrec.evaluation.splits import warm_split
from tests.integration.helpers import movielens_slice

pytestmark = pytest.mark.integration


def test_domains_are_disjoint_and_subsampling_keeps_a_share():
    ds = movielens_slice()
    source, target = genre_domains(ds, ("Animation", "Children", "Fantasy"))
    source_ids, target_ids = {i.id for i in source.items}, {i.id for i in target.items}
    assert source_ids and target_ids and not source_ids & target_ids
    assert len(source.users) + len(target.users) == len(ds.users)
    assert set(target.item_ids.tolist()) <= target_ids
    assert all({"Animation", "Children", "Fantasy"} & set(i.metadata["genres"]) for i in target.items)
    split = warm_split(target)
    small = subsample(split, 0.2, seed=0)
    assert 0.1 < len(small.train.users) / len(split.train.users) < 0.3
    assert set(small.test) <= set(split.test)


def test_cross_domain_run_writes_its_report(tmp_path):
    config = CrossDomainConfig(fractions=(0.5, 1.0), source_steps=2, target_steps=2, batch_size=16, seeds=(0, 1))
    report = run_cross_domain(movielens_slice(), tmp_path, config)
    rows = report["ndcg@10"]
    expected = {
        "pretrained (zero-shot)",
        "source-tuned, no target tuning",
        "source-tuned, interpolated (0.5), no target tuning",
        "pretrained -> target-tuned",
        "source-tuned -> target-tuned",
        "popularity",
        "EASE",
    }
    assert set(rows) == expected
    assert all(set(row) == {"50%", "100%"} for row in rows.values())
    assert all(0.0 <= v <= 1.0 for row in rows.values() for v in row.values())
    assert json.loads((tmp_path / "cross_domain.json").read_text())["ndcg@10"] == rows
    assert (tmp_path / "cross_domain.png").stat().st_size > 1000
    assert "source-tuned -> target-tuned" in (tmp_path / "cross_domain.md").read_text()
    paired = report["source_minus_pretrained_after_target_tuning"]
    assert set(paired) == {"50%", "100%"} and all(len(p["per_seed"]) == 2 for p in paired.values())
    per_seed = report["per_seed"]["EASE"]["50%"]
    assert len(per_seed) == 2 and rows["EASE"]["50%"] == pytest.approx(sum(per_seed) / 2)
    # target tuning with a source start begins from the interpolated source encoder
    work = tmp_path / "checkpoints"
    assert (work / "source-2steps-interpolated-0.5" / "config.json").exists()
    tuned = work / "source-2steps-interpolated-0.5-target-50-seed1"
    record = json.loads((tuned / "bertrec_training.json").read_text())
    assert record["config"]["init_from"] == str(work / "source-2steps-interpolated-0.5")
