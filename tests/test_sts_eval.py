import json

import numpy as np
import pytest

from distill.cli import main
from distill.encoder import Encoder
from distill.eval.sts_data import TEST_TASKS
from distill.eval.sts import cosine_rows, evaluate_sts, format_table, spearman_x100


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
def test_packaged_minilm_seven_sets_cli_json_and_python_agree(sts_dir, tmp_path, capsys):
    out = tmp_path / "scores.json"
    assert main(["eval", "--model", "all-minilm-l6-v2", "--sts-dir", str(sts_dir), "--json", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    for name in (*TEST_TASKS, "Avg"):
        assert f" {name} " in printed
    from_json = json.loads(out.read_text())["scores"]
    from_python = evaluate_sts(Encoder.load("all-minilm-l6-v2"), sts_dir=sts_dir, progress=False)
    assert from_json == from_python
    assert list(from_python) == [*TEST_TASKS, "Avg"]
    row = printed.strip().splitlines()[-1]
    assert row == "| all-minilm-l6-v2 | " + " | ".join(f"{from_python[c]:.2f}" for c in (*TEST_TASKS, "Avg")) + " |"
    # An independent scorer measured 78.87 on an H100; CPU fp32 must agree to the hundredth.
    assert from_python["Avg"] == pytest.approx(78.87, abs=0.02)
    assert from_python["STS-B"] == pytest.approx(82.03, abs=0.02)


def test_missing_sts_dir_is_a_clear_cli_error(tmp_path, capsys):
    assert main(["eval", "--model", "all-minilm-l6-v2", "--sts-dir", str(tmp_path / "missing"), "--json", str(tmp_path / "x.json")]) == 2
    assert "STS folder not found" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()  # nothing half-written
