"""benchmarks/retrieval.py's report: rows of an earlier report whose runs are gone are carried with
their own date and commit (never re-stamped), and the targets and IB decisions are taken over all rows."""

from __future__ import annotations

import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import retrieval  # noqa: E402


def _row(name, stage, ndcg, set_="scifact", **kw):
    return {"name": name, "stage": stage, "set": set_, "ndcg@10": ndcg, "mrr@10": ndcg - 3, "recall@100": 80.0, "seeds": [42], **kw}


def test_carried_rows_keep_their_stamp_and_targets_use_the_best_row():
    earlier = {"date": "2026-12-02", "commit": "ae375ec", "device": "2-core CPU machine", "rows": [
        _row("all-MiniLM-L6-v2 (teacher)", "teacher", 64.51),
        _row("L3 distilled (stage 1, infonce)", "distilled", 31.02),
        _row("with", "supervised", 39.50, loss="ibkd_supervised", seeds=[1, 2, 3], **{"ndcg@10_sd": 0.60}),
        _row("without", "supervised", 39.45, loss="mnrl", seeds=[1, 2, 3], **{"ndcg@10_sd": 0.61}),
        _row("old, recorded before", "distilled", 20.0, recorded={"date": "2026-11-30", "commit": "0000000"}),
    ]}
    first3 = {"student": "all-minilm-l3-v2"}
    fresh = [_row("all-MiniLM-L6-v2 (teacher)", "teacher", 64.51),
             _row("L3 distilled (stage 1, hpd)", "distilled", 43.31, stage1_loss="hpd", **first3),
             _row("from hpd", "supervised", 48.33, loss="mnrl", stage1_loss="hpd", seeds=[1], stage2_steps="48", **first3),
             # another student's stage 2 from the same loss: its own pair, not mixed with the first-k cut's
             _row("spread with", "supervised", 60.0, loss="ibkd_supervised", stage1_loss="hpd", student="spread", seeds=[1, 2], stage2_steps="48", **{"ndcg@10_sd": 0.1}),
             _row("spread without", "supervised", 59.0, loss="mnrl", stage1_loss="hpd", student="spread", seeds=[1, 2], stage2_steps="48", **{"ndcg@10_sd": 0.1})]
    rows = retrieval.merge_recorded(fresh, earlier)
    by_name = {r["name"]: r for r in rows}
    assert len(rows) == 9 and "recorded" not in by_name["L3 distilled (stage 1, hpd)"]
    assert "recorded" not in by_name["all-MiniLM-L6-v2 (teacher)"]  # the fresh row replaces the earlier one
    assert by_name["L3 distilled (stage 1, infonce)"]["recorded"] == {"date": "2026-12-02", "commit": "ae375ec", "device": "2-core CPU machine"}
    assert by_name["old, recorded before"]["recorded"] == {"date": "2026-11-30", "commit": "0000000"}  # never re-stamped
    assert by_name["with"]["stage1_loss"] == "infonce"  # earlier reports' stage 1 was the recipe's infonce
    assert by_name["with"]["student"] == "all-minilm-l3-v2"  # ... of the first-three-layers cut
    assert by_name["with"]["stage2_steps"] == "48"  # ... and one pass of stage 2

    summary = retrieval.summarize(rows)
    distilled = summary["targets"]["distilled >= 95% of the teacher (scifact test nDCG@10)"]
    assert distilled == {"value": 43.31, "goal": round(0.95 * 64.51, 2), "met": False, "row": "L3 distilled (stage 1, hpd)"}
    assert summary["targets"]["stage 2 (mnrl) >= the teacher"]["row"] == "spread without"  # the best stage-2 row of that loss
    # one decision per stage 1 (student and loss) and stage-2 budget that has both sides; the one on record has the most seeds
    decisions = summary["ib_decisions_by_stage1"]
    assert decisions["all-minilm-l3-v2 hpd, 48 steps"] == {"verdict": "not run"}  # the spread student's with-IB row is not its pair
    assert decisions["spread hpd, 48 steps"]["with_beats_without"] is True and abs(decisions["spread hpd, 48 steps"]["with_minus_without"] - 1.0) < 1e-9
    decision = summary["ib_decision"]
    assert decision["stage1_loss"] == "infonce" and decision["student"] == "all-minilm-l3-v2" and decision["with_beats_without"] is False
    assert abs(decision["with_minus_without"] - 0.05) < 1e-9 and abs(decision["threshold"] - 1.22) < 1e-9
    assert retrieval.merge_recorded(fresh, None) == fresh


def test_dry_run_prints_stage2_commands_and_leaves_out_as_it_was(tmp_path, capsys):
    # a finished stage 1 and a rows file: the stage-2 runs are next, and a dry run only names them
    stage1 = retrieval.stage1_dir(tmp_path, retrieval.recipe_loss(retrieval.RECIPE))
    stage1.mkdir()
    (stage1 / "results.json").write_text("{}")
    (tmp_path / "mined-dev.jsonl").write_text("")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert retrieval.main(["--parts", "stage2", "--seeds", "1,2", "--out", str(tmp_path), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("stage2.train.seed=") == 2 * len(retrieval.STAGE2_LOSSES)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_stage2_of_another_budget_is_its_own_row_and_its_own_decision():
    # a carried one-pass row (48 steps, mnrl only) beside a fresh two-pass pair (96 steps, both losses)
    earlier = {"date": "2026-12-03", "commit": "8eed5e0", "rows": [
        _row("all-MiniLM-L6-v2 (teacher)", "teacher", 64.51),
        _row("skip + stage 2, mnrl (from the mse stage 1)", "supervised", 64.09, loss="mnrl", stage1_loss="mse", student="skip", seeds=[1])]}
    both = {"stage1_loss": "mse", "student": "skip", "seeds": [1, 2, 3], "stage2_steps": "96"}
    fresh = [_row("all-MiniLM-L6-v2 (teacher)", "teacher", 64.51),
             _row("skip + stage 2, with, 96 steps", "supervised", 65.0, loss="ibkd_supervised", **both, **{"ndcg@10_sd": 0.4}),
             _row("skip + stage 2, mnrl, 96 steps", "supervised", 65.6, loss="mnrl", **both, **{"ndcg@10_sd": 0.3})]
    rows = retrieval.merge_recorded(fresh, earlier)
    assert len(rows) == 4  # the one-pass row is carried: another name
    decisions = retrieval.summarize(rows)["ib_decisions_by_stage1"]
    assert decisions["skip mse, 48 steps"] == {"verdict": "not run"}
    assert decisions["skip mse, 96 steps"]["with_beats_without"] is False
    assert abs(decisions["skip mse, 96 steps"]["with_minus_without"] + 0.6) < 1e-9


def test_steps_label_names_a_budget_the_seeds_do_not_share():
    assert retrieval._steps([{"steps": 96}, {"steps": 96}]) == "96"
    assert retrieval._steps([{"steps": 128}, {"steps": 48}]) == "48/128"


def test_targets_pick_the_row_on_dev_not_on_test(monkeypatch):
    """Two recipes for one target: the one with the better dev nDCG@10 stands for it, even if the other scores higher on test."""
    rows = [_row("m3e-small (teacher)", "teacher", 90.0, set_="zh"),
            _row("hpd run", "distilled", 82.0, set_="zh", **{"dev_ndcg@10": 80.0}),
            _row("mse run", "distilled", 81.0, set_="zh", **{"dev_ndcg@10": 84.0}),
            _row("all-MiniLM-L6-v2 (teacher)", "teacher", 64.51),
            _row("no dev score", "distilled", 70.0),
            _row("with a dev score", "distilled", 60.0, **{"dev_ndcg@10": 61.0})]
    monkeypatch.setattr(retrieval, "ZH_RECIPES", {"zh": "unused.yaml"})
    targets = retrieval.summarize(rows)["targets"]
    assert targets["zh: distilled >= 90% of the teacher (test nDCG@10)"] == {"value": 81.0, "goal": 81.0, "met": True, "row": "mse run"}
    assert targets["distilled >= 95% of the teacher (scifact test nDCG@10)"]["row"] == "with a dev score"
