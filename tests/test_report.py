"""distill/report.py: one renderer for `distill train`'s printout, results.md and the model card."""

from __future__ import annotations

from distill.report import RunLabels, results_markdown, retrieval_rows, sts_rows, train_printout

SCORES = {"STS-B": 71.234, "SICK-R": 65.0, "Avg": 68.117, "STS-B@8": 60.5, "SICK-R@8": 55.25, "Avg@8": 57.875}
RESULTS = {
    "best": SCORES, "best_dev": 77.6, "best_step": 128, "steps": 128, "train_sentences_per_s": 201.4, "device": "cpu",
    "dev_task": "STS-B-dev", "warnings": ["the best selection score 50.00 (step 2) is below the untrained student's 60.00"],
    "baselines": {"teacher": {"STS-B": 82.03, "SICK-R": 77.15, "Avg": 79.59}, "init": {"STS-B": 55.86, "SICK-R": 60.03, "Avg": 57.95}},
    "retrieval": {"data": "scifact", "split": "test", "queries": 300, "corpus": 5183, "nDCG@10": 61.46, "MRR@10": 57.26, "Recall@100": 93.53},
    "retrieval_baselines": {"teacher": {"nDCG@10": 64.51, "MRR@10": 60.47, "Recall@100": 92.5}, "init": {"nDCG@10": 52.3, "MRR@10": 48.4, "Recall@100": 86.0}},
}


class _Recipe:
    teacher_name, student_name = "all-minilm-l6-v2", "all-minilm-l3-v2"
    loss = {"name": "ibkd"}

    class stage2:  # noqa: N801 (a recipe's section)
        loss = {"name": "mnrl"}


def test_the_printout_and_results_md_show_the_same_tables_and_each_warning_once():
    labels = RunLabels.of_recipe(_Recipe)
    printed = train_printout(RESULTS, labels, "runs/x")
    md = results_markdown(RESULTS, labels)
    for text in (printed, md):
        assert "| teacher all-minilm-l6-v2 | 77.15 | 82.03 | 79.59 |" not in text  # columns in the paper's order
        assert "| teacher all-minilm-l6-v2 | 82.03 | 77.15 | 79.59 |" in text
        assert "| all-minilm-l3-v2 before | 55.86 | 60.03 | 57.95 |" in text
        assert "| all-minilm-l3-v2 after (ibkd) | 71.23 | 65.00 | 68.12 |" in text
        assert "| all-minilm-l3-v2 after (ibkd) @8 | 60.50 | 55.25 | 57.88 |" in text  # a row per eval.dims width
        assert "Retrieval: scifact test (300 queries, 5183 passages), x100" in text
        assert "| all-minilm-l3-v2 after (ibkd) | 61.46 | 57.26 | 93.53 |" in text
        assert text.count("is below the untrained student's") == 1
    assert "best STS-B dev 77.60 at step 128 of 128; 201 sentences/s on cpu; run folder runs/x" in printed
    assert "**Warning:** the best selection score" in md


def test_after_a_stage_2_stage_1_comes_first_and_the_final_row_names_both_losses():
    results = {**RESULTS, "stage1": {"best": {"STS-B": 70.0, "SICK-R": 64.0, "Avg": 67.0}, "retrieval": {"nDCG@10": 60.0}}}
    labels = RunLabels.of_recipe(_Recipe, stage2=True)
    names = [name for name, _ in sts_rows(results, labels, widths=False)]
    assert names == ["teacher all-minilm-l6-v2", "all-minilm-l3-v2 before", "all-minilm-l3-v2 after (ibkd)",
                     "all-minilm-l3-v2 after (ibkd) + stage 2 (mnrl)"]
    assert [name for name, _ in retrieval_rows(results, labels)][-2:] == ["all-minilm-l3-v2 after (ibkd)", "all-minilm-l3-v2 after (ibkd) + stage 2 (mnrl)"]


def test_a_run_without_scores_renders_no_table():
    bare = {"best": {}, "warnings": []}
    assert sts_rows(bare, RunLabels(after="x")) == [] and retrieval_rows(bare, RunLabels(after="x")) == []
    assert results_markdown(bare, RunLabels(after="x")) == "\n"


def test_the_sentences_per_s_column_of_teacher_and_student_leaves_the_scores_as_they_are():
    plain = train_printout(RESULTS, RunLabels.of_recipe(_Recipe), "runs/x")
    timed = {**RESULTS, "sts_sentences_per_s": {"teacher": 415.2, "init": 1893.7, "best": 1902.1}}
    table = train_printout(timed, RunLabels.of_recipe(_Recipe), "runs/x")
    assert "|  | STS-B | SICK-R | Avg | sentences/s |" in table
    assert "| teacher all-minilm-l6-v2 | 82.03 | 77.15 | 79.59 | 415 |" in table
    assert "| all-minilm-l3-v2 before | 55.86 | 60.03 | 57.95 | 1,894 |" in table
    assert "| all-minilm-l3-v2 after (ibkd) | 71.23 | 65.00 | 68.12 | 1,902 |" in table
    assert "| all-minilm-l3-v2 after (ibkd) @8 | 60.50 | 55.25 | 57.88 | – |" in table  # a width row: not timed apart
    # the quality cells are the untimed table's, digit for digit
    for line in plain.splitlines():
        if line.startswith("| all-minilm-l3-v2 after (ibkd) |"):
            assert line[:-2] in table
