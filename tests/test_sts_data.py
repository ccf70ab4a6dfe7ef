import shutil

import pytest

from distill.errors import DistillError
from distill.eval.sts_data import load_local, normalize_task

# Pair counts of the standard sets (SentEval / SimCSE), gold-less pairs skipped.
EXPECTED = {"STS12": 3108, "STS13": 1500, "STS14": 3750, "STS15": 3000, "STS16": 1186, "STS-B": 1379, "SICK-R": 4927, "STS-B-dev": 1500}


@pytest.mark.parametrize("task", list(EXPECTED))
def test_pair_counts_match_the_standard_sets(sts_dir, task):
    pairs = load_local(task, sts_dir)
    assert len(pairs) == len(pairs.sentences1) == len(pairs.sentences2) == EXPECTED[task]
    assert pairs.scores.min() >= 0 and pairs.scores.max() <= 5
    assert all(isinstance(s, str) and s for s in pairs.sentences1[:50])


def test_sts16_uses_the_first_two_columns(sts_dir):
    pairs = load_local("STS16", sts_dir)
    assert not any("\t" in s or "Europe Media Monitor" in s for s in pairs.sentences2)


def test_task_aliases():
    assert normalize_task("stsb") == "STS-B" and normalize_task("sickr") == "SICK-R" and normalize_task("sts-b-dev") == "STS-B-dev"
    with pytest.raises(DistillError, match=r"unknown STS task 'sts17'"):
        normalize_task("sts17")


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(DistillError, match=r"STS folder not found: .*nowhere"):
        load_local("STS12", tmp_path / "nowhere")


def test_missing_file_is_named(tmp_path, sts_dir):
    shutil.copytree(sts_dir / "sts13", tmp_path / "sts13")
    (tmp_path / "sts13" / "STS.gs.FNWN.txt").unlink()
    with pytest.raises(DistillError, match=r"missing STS file: .*sts13/STS\.gs\.FNWN\.txt"):
        load_local("STS13", tmp_path)


def test_gs_input_line_count_mismatch_names_both_files(tmp_path, sts_dir):
    shutil.copytree(sts_dir / "sts13", tmp_path / "sts13")
    gs = tmp_path / "sts13" / "STS.gs.headlines.txt"
    gs.write_text("\n".join(gs.read_text().splitlines()[:-3]) + "\n")
    with pytest.raises(DistillError, match=r"STS\.input\.headlines\.txt has 750 lines but .*STS\.gs\.headlines\.txt has 747"):
        load_local("STS13", tmp_path)


def test_bad_gold_and_bad_columns_name_file_and_line(tmp_path, sts_dir):
    shutil.copytree(sts_dir / "sts13", tmp_path / "sts13")
    gs = tmp_path / "sts13" / "STS.gs.OnWN.txt"
    lines = gs.read_text().splitlines()
    lines[4] = "four"
    gs.write_text("\n".join(lines) + "\n")
    with pytest.raises(DistillError, match=r"STS\.gs\.OnWN\.txt:5: gold score 'four' is not a number"):
        load_local("STS13", tmp_path)
    shutil.copytree(sts_dir / "stsb", tmp_path / "stsb")
    test = tmp_path / "stsb" / "sts-test.csv"
    lines = test.read_text().splitlines()
    lines[9] = "only\tthree\tcolumns"
    test.write_text("\n".join(lines) + "\n")
    with pytest.raises(DistillError, match=r"sts-test\.csv:10: expected 7 tab-separated columns, found 3"):
        load_local("STS-B", tmp_path)


def test_sentences_are_whitespace_normalized_as_senteval_does(tmp_path, sts_dir):
    """SentEval splits every sentence on white space and re-joins it: we score that same text."""
    shutil.copytree(sts_dir / "sts13", tmp_path / "sts13")
    inp = tmp_path / "sts13" / "STS.input.FNWN.txt"
    lines = inp.read_text(encoding="utf-8").splitlines()
    lines[0] = " A  man\u00a0is   here. \tThe man  is here .  "
    inp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    pairs = load_local("STS13", tmp_path)
    assert (pairs.sentences1[0], pairs.sentences2[0]) == ("A man is here.", "The man is here .")
    # the real sets: nothing is left un-normalized, and STS14 is where most of it was
    raw14 = [s for sub in ("deft-forum", "deft-news", "headlines", "images", "OnWN", "tweet-news")
             for line in (sts_dir / "sts14" / f"STS.input.{sub}.txt").read_text(encoding="utf-8").splitlines()
             for s in line.split("\t")[:2]]
    assert sum(s != " ".join(s.split()) for s in raw14) > 400
    for task in EXPECTED:
        p = load_local(task, sts_dir)
        assert all(s == " ".join(s.split()) for s in p.sentences1 + p.sentences2), task


def _sts_copy(tmp_path, sts_dir):
    sts = tmp_path / "sts"
    shutil.copytree(sts_dir / "stsb", sts / "stsb")
    shutil.copytree(sts_dir / "sts12", sts / "sts12")
    return sts


def test_sts_gold_nan_empty_and_blank_are_errors_not_nan_scores(tmp_path, sts_dir, capsys):
    from distill.cli import main
    from distill.eval.sts_data import load_sts

    sts = _sts_copy(tmp_path, sts_dir)
    test_csv = sts / "stsb" / "sts-test.csv"
    lines = test_csv.read_text(encoding="utf-8").splitlines()
    cols = lines[2].split("\t")
    cols[4] = "nan"
    test_csv.write_text("\n".join([*lines[:2], "\t".join(cols), *lines[3:]]) + "\n", encoding="utf-8")
    with pytest.raises(DistillError, match=r"sts-test\.csv:3: gold score 'nan' is not a finite number"):
        load_sts("STS-B", sts)
    json_out = tmp_path / "scores.json"
    assert main(["eval", "--model", "all-minilm-l6-v2", "--sts-dir", str(sts), "--tasks", "STS-B", "--json", str(json_out), "--quiet"]) == 2
    assert "gold score 'nan'" in capsys.readouterr().err and not json_out.exists()
    test_csv.write_text("")
    with pytest.raises(DistillError, match=r"sts-test\.csv: no scored sentence pair in it"):
        load_sts("STS-B", sts)
    gs = sts / "sts12" / "STS.gs.MSRpar.txt"
    gs.write_text("\n" * len(gs.read_text().splitlines()))
    with pytest.raises(DistillError, match=r"STS\.gs\.MSRpar\.txt: no gold score on any of its \d+ lines"):
        load_sts("STS12", sts)
