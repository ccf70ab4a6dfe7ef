"""benchmarks/ib_ablation.py on the tiny presets: it trains settings x seeds, reports the IB share,
writes its BENCHMARKS table, and an interrupted ablation resumes without redoing finished runs."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import REPO, tiny_recipe_text

sys.path.insert(0, str(REPO / "benchmarks"))
import ib_ablation  # noqa: E402


def test_ablation_runs_reports_and_resumes(tmp_path, tiny_home, monkeypatch, sts_dir):
    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(tiny_recipe_text(tmp_path, loss="name: infonce, tau: 0.05", steps=4, every=2))
    out, md = tmp_path / "ib", tmp_path / "BENCH.md"
    # two trainings (each a `distill train` process), the fewest that cover a setting with and one
    # without the IB term; seed 2 shows that the seed reaches the recipe
    args = ["--recipe", str(recipe), "--out", str(out), "--bench-md", str(md), "--runs", "infonce=1", "--runs", "rel0.1-med-random=2"]
    assert ib_ablation.main(args) == 0

    plain = json.loads((out / "infonce-s1" / "results.json").read_text())
    rel = json.loads((out / "rel0.1-med-random-s2" / "results.json").read_text())
    assert "ib" not in plain  # no HSIC term: nothing to share
    assert rel["ib"]["ib_share"] == pytest.approx(0.1, rel=1e-4)  # relative lam holds the share at its target
    assert 0.0 <= rel["ib"]["nhsic"] <= 1.0 and rel["ib"]["intervals"] >= 1
    recipe_used = (out / "rel0.1-med-random-s2" / "recipe.yaml").read_text()
    assert "batching: random" in recipe_used and "lam_mode: relative" in recipe_used and "seed: 2" in recipe_used

    text = md.read_text()
    assert ib_ablation.SECTION in text
    row = next(line for line in text.splitlines() if line.startswith("| rel0.1-med-random |"))
    assert "| 2 |" in row and "| 10.00% |" in row and "-core CPU machine" in row and "--runs rel0.1-med-random=2" in row
    # a row over several seeds: mean ± sample sd of the finished runs' scores, their mean IB share
    several = ib_ablation.summarize("two", [], [1, 2], {1: plain, 2: rel})
    assert several["seeds"] == "1,2" and " ± " in several["STS-B dev (mean ± sd)"]
    assert several["IB share"] == "5.00%"  # (0 + 10%) / 2

    # resume: finished runs are reused (their results untouched); a run cut after its last checkpoint
    # (results.json lost) continues with --resume instead of starting again.
    kept = (out / "infonce-s1" / "results.json").stat().st_mtime_ns
    (out / "rel0.1-med-random-s2" / "results.json").unlink()
    logs_before = (out / "rel0.1-med-random-s2" / "log.jsonl").read_text().count("\n")
    assert ib_ablation.main(args + ["--no-bench-md"]) == 0
    assert (out / "infonce-s1" / "results.json").stat().st_mtime_ns == kept
    again = json.loads((out / "rel0.1-med-random-s2" / "results.json").read_text())
    assert again["steps"] == 4 and (out / "rel0.1-med-random-s2" / "log.jsonl").read_text().count("\n") == logs_before
    commands = [line for line in (out / "rel0.1-med-random-s2.log").read_text().splitlines() if line.startswith("$ ")]
    assert len(commands) == 2 and "--resume" not in commands[0] and commands[1].endswith("--resume")
    assert text == md.read_text()  # --no-bench-md wrote nothing

    # --report-only trains nothing: an unfinished seed is named in the row
    assert ib_ablation.main(["--recipe", str(recipe), "--out", str(out), "--bench-md", str(md), "--report-only", "--runs", "infonce=1,5"]) == 0
    assert not (out / "infonce-s5").exists()
    assert "| 1 (not finished: 5) |" in md.read_text()


def test_unknown_setting_is_an_error_naming_it(capsys):
    assert ib_ablation.main(["--runs", "nope=1", "--no-bench-md"]) == 2
    assert "nope" in capsys.readouterr().err
