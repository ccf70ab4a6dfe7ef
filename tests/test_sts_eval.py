import json

import numpy as np
import pytest
from conftest import file_size_limit, unwritable_folders

from distill.cli import main
from distill.encoder import Encoder
from distill.errors import DistillError
from distill.eval.sts import cosine_rows, evaluate_sts, format_table, spearman_x100
from distill.eval.sts_data import TEST_TASKS


def test_spearman_and_cosine_by_hand():
    assert spearman_x100(np.array([0.1, 0.4, 0.3]), np.array([1.0, 3.0, 2.0])) == pytest.approx(100.0)
    assert spearman_x100(np.array([3.0, 2.0, 1.0]), np.array([1.0, 2.0, 3.0])) == pytest.approx(-100.0)
    np.testing.assert_allclose(cosine_rows(np.array([[1.0, 0.0], [1.0, 1.0]]), np.array([[0.0, 2.0], [2.0, 2.0]])), [0.0, 1.0])


def test_callable_models_and_dev_set_stay_out_of_the_average(sts_dir):
    rng = np.random.default_rng(0)
    table = {}

    def random_model(sentences):  # a "model" without any knowledge: scores near 0
        return np.stack([table.setdefault(s, rng.normal(size=8)) for s in sentences])

    res = evaluate_sts(random_model, tasks=["STS-B", "STS-B-dev"], sts_dir=sts_dir, progress=False)
    assert set(res) == {"STS-B", "STS-B-dev", "Avg"} and res["Avg"] == res["STS-B"]
    assert abs(res["STS-B"]) < 10
    assert "| STS-B | Avg | STS-B-dev |" in format_table(res, title="random")


@pytest.mark.integration
def test_packaged_minilm_seven_sets_cli_json(sts_dir, tmp_path, capsys):
    """The packaged model scored once, through the CLI: the seven sets printed and in --json, and
    the numbers an independent scorer measured."""
    out = tmp_path / "scores.json"
    assert main(["eval", "--model", "all-minilm-l6-v2", "--sts-dir", str(sts_dir), "--json", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    for name in (*TEST_TASKS, "Avg"):
        assert f" {name} " in printed
    from_json = json.loads(out.read_text())["scores"]
    assert list(from_json) == [*TEST_TASKS, "Avg"]
    row = printed.strip().splitlines()[-1]
    assert row == "| all-minilm-l6-v2 | " + " | ".join(f"{from_json[c]:.2f}" for c in (*TEST_TASKS, "Avg")) + " |"
    # An independent scorer measured 78.87 on an H100; CPU fp32 must agree to the hundredth.
    assert from_json["Avg"] == pytest.approx(78.87, abs=0.02)
    assert from_json["STS-B"] == pytest.approx(82.03, abs=0.02)


def test_cli_json_and_python_agree(sts_dir, tiny_bert_dir, tmp_path, capsys):
    """`distill eval --json` and evaluate_sts from Python give the same scores for the same model
    (a tiny real BERT: the packaged model's seven sets are scored once, above). Batches differ
    with the sentence set (length-sorted), so equal to float noise, not bit for bit."""
    out = tmp_path / "scores.json"
    assert main(["eval", "--model", str(tiny_bert_dir), "--sts-dir", str(sts_dir), "--tasks", "STS-B", "SICK-R",
                 "--json", str(out), "--quiet"]) == 0
    from_json = json.loads(out.read_text())["scores"]
    from_python = evaluate_sts(Encoder.load(str(tiny_bert_dir)), tasks=["STS-B", "SICK-R"], sts_dir=sts_dir, progress=False)
    for task in ("STS-B", "SICK-R"):
        assert from_python[task] == pytest.approx(from_json[task], abs=1e-3)
    assert f"| {from_json['STS-B']:.2f} |" in capsys.readouterr().out


def test_missing_sts_dir_is_a_clear_cli_error(tmp_path, capsys):
    assert main(["eval", "--model", "all-minilm-l6-v2", "--sts-dir", str(tmp_path / "missing"), "--json", str(tmp_path / "x.json")]) == 2
    assert "STS folder not found" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()  # nothing half-written


def test_constant_scores_are_refused(sts_dir):
    with pytest.raises(DistillError, match="STS task STS-B: no score can be computed, the model gives every pair the same similarity"):
        evaluate_sts(lambda s: np.ones((len(s), 4)), tasks=["STS-B"], sts_dir=sts_dir, progress=False)


def test_a_json_folder_that_cannot_be_written_is_refused_before_the_evaluation(tmp_path, capsys):
    for folder in unwritable_folders(tmp_path):
        out = folder / "scores.json"
        # a model that does not exist: not looked at before the check
        assert main(["eval", "--model", "no-such-model", "--tasks", "STS-B", "--json", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"--json {out}: " in err and ("is not a folder" in err or "Permission denied" in err), err


def test_an_existing_json_file_is_replaced_only_with_overwrite(tmp_path, tiny_bert_dir, sts_dir, capsys):
    """Issue 38, failure 4: `eval --json` replaced an existing file silently."""
    out = tmp_path / "scores.json"
    out.write_text("the user's own scores")
    # refused before the model loads: a model that does not exist is not looked at
    assert main(["eval", "--model", "no-such-model", "--tasks", "STS-B", "--json", str(out)]) == 2
    assert f"--json {out}: the file exists; pass --overwrite to replace it" in capsys.readouterr().err
    assert out.read_text() == "the user's own scores"
    assert main(["eval", "--model", str(tiny_bert_dir), "--sts-dir", str(sts_dir), "--tasks", "STS-B-dev", "--json", str(out),
                 "--overwrite", "--quiet"]) == 0
    assert set(json.loads(out.read_text())["scores"]) == {"STS-B-dev"}


def test_a_json_write_the_disk_refuses_is_named_after_the_table(tmp_path, tiny_bert_dir, sts_dir, capsys):
    """Files may not pass 50 bytes while it runs (a real EFBIG, as a full disk gives ENOSPC)."""
    out = tmp_path / "scores.json"
    with file_size_limit(50):
        code = main(["eval", "--model", str(tiny_bert_dir), "--sts-dir", str(sts_dir), "--tasks", "STS-B", "--json", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert code == 2 and f"--json {out}: File too large (EFBIG)" in captured.err and "the scores are in the table above" in captured.err
    assert "STS-B" in captured.out and list(tmp_path.iterdir()) == []
