"""benchmarks/query_encoder.py's report: one per retrieval set in query-encoder.json, a run replaces
its own set's report and keeps the others', and BENCHMARKS.md gets one table per set in place of
the script's earlier section (the sections around it untouched)."""

from __future__ import annotations

import importlib.util
import json
import sys

from conftest import REPO


def _script():
    if "query_encoder" in sys.modules:
        return sys.modules["query_encoder"]
    spec = importlib.util.spec_from_file_location("query_encoder", REPO / "benchmarks" / "query_encoder.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _report(data: str, teacher: str, ndcg: float) -> dict:
    row = {"queries_per_s": 10.0, "speedup": 1.0, "MRR@10": 50.0, "Recall@100": 90.0}
    return {"date": "2026-12-07", "device": "CPU", "threads": 2, "label": "", "commands": [f"python benchmarks/query_encoder.py --beir {data}"],
            "commit": "abc1234", "data": data, "teacher": teacher, "queries_timed": 10, "max_length": 256, "mix": [],
            "rows": [{**row, "model": teacher, "queries": "teacher", "documents": "teacher", "nDCG@10": 60.0},
                     {**row, "model": "static-256", "queries": "student", "documents": "teacher", "nDCG@10": ndcg,
                      "of_teacher": round(100 * ndcg / 60.0, 1), "speedup": 90.0, "queries_per_s": 900.0}]}


def test_reports_are_kept_by_set_and_rendered_one_table_each(tmp_path):
    qe = _script()
    old = _report("scifact test", "all-minilm-l6-v2", 58.0)
    single = {k: v for k, v in old.items() if k != "commands"} | {"command": old["commands"][0]}
    path = tmp_path / "query-encoder.json"
    path.write_text(json.dumps(single))  # the file as it was before the Chinese sets: one report
    sets = qe.read_sets(path)
    assert list(sets) == ["scifact test"] and sets["scifact test"]["commands"] == old["commands"]

    sets["cmrc2018 test"] = _report("cmrc2018 test", "m3e-small", 57.0)
    md = tmp_path / "BENCHMARKS.md"
    md.write_text(f"# Benchmarks\n\n## Before\n\nkept\n\n{qe.SECTION}\n\nstale\n\n## After\n\nalso kept\n")
    qe.write_section(md, sets)
    text = md.read_text()
    assert "stale" not in text and "kept" in text and "also kept" in text
    assert text.index("## Before") < text.index(qe.SECTION) < text.index("## After")
    section = text[text.index(qe.SECTION):text.index("## After")]
    assert "### scifact test (teacher all-minilm-l6-v2)" in section and "### cmrc2018 test (teacher m3e-small)" in section
    assert "| static-256 | student | teacher | 58.00 | 96.7 |" in section and "| static-256 | student | teacher | 57.00 | 95.0 |" in section
