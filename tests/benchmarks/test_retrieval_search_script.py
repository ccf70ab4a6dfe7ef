"""benchmarks/retrieval_search.py: exact search against the full score matrix, one BENCHMARKS row."""

from __future__ import annotations


def test_search_benchmark_script_records_a_row(tmp_path):
    """benchmarks/retrieval_search.py on a small size: all three methods agree, one row appended."""
    import sys

    from conftest import REPO

    sys.path.insert(0, str(REPO / "benchmarks"))
    import retrieval_search

    md = tmp_path / "BENCHMARKS.md"
    assert retrieval_search.main(["--sizes", "40x700", "--k", "50", "--repeats", "1", "--md", str(md), "--chunk-size", "128"]) == 0
    rows = [line for line in md.read_text().splitlines() if line.startswith("| 20")]
    assert len(rows) == 1 and "| 40 x 700 | 384 | 50 | 128 |" in rows[0]
    assert "--md DIR/BENCHMARKS.md" in rows[0]  # the recorded command names no machine's folder
