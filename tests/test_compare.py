"""`distill compare`: six losses on a tiny teacher/student, the four report files, reuse, errors."""

from __future__ import annotations

import csv
import gzip
import json
import shutil
from pathlib import Path

import pytest
from conftest import CORPUS_DIR

from distill.config import load_recipe
from distill.errors import DistillError

LOSSES = ["mse", "cosine", "crd", "hpd", "infonce", "ibkd"]
# HPD's PCA cannot take the default 128 components of a 32-d teacher; CRD's heads shrink too.
LOSS_SET = ["hpd.k=8", "crd.proj_dim=16"]


def tiny_home(root: Path, teacher_model: str, student_model: str) -> Path:
    """A DISTILL_HOME with teacher 'tiny' (mean pooled, normalized) and student 'tiny-student' (1 layer)."""
    home = root / "home"
    (home / "teachers").mkdir(parents=True, exist_ok=True)
    (home / "students").mkdir(exist_ok=True)
    (home / "teachers" / "tiny.yaml").write_text(
        f"name: tiny\nhub_id: {teacher_model}\noffline_source: null\npooling: mean\nnormalize: true\ndim: 32\nmax_length: 32\n"
    )
    (home / "students" / "tiny-student.yaml").write_text(
        f"name: tiny-student\nbase: {student_model}\noffline_source: null\nlayers: 1\npooling: mean\nnormalize: false\n"
        "hidden_dim: 32\nmax_length: 32\n"
    )
    return home


def small_sts(root: Path, sts_dir: Path, n: int = 200) -> Path:
    """The first n pairs of the shared STS-B dev and test files (enough to rank, fast to encode)."""
    out = root / "sts" / "stsb"
    out.mkdir(parents=True, exist_ok=True)
    for name in ("sts-dev.csv", "sts-test.csv"):
        lines = (sts_dir / "stsb" / name).read_text(encoding="utf-8").splitlines()[:n]
        (out / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return out.parent


def tiny_recipe(root: Path, sts: Path, n_sentences: int = 200) -> Path:
    with gzip.open(CORPUS_DIR / "wordnet-glosses.txt.gz", "rt", encoding="utf-8") as f:
        lines = [next(f).rstrip("\n") for _ in range(n_sentences)]
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(lines) + "\n")
    path = root / "tiny.yaml"
    path.write_text(
        "teacher: tiny\nstudent: tiny-student\nloss:\n  name: ibkd\n  bandwidth: median\n"
        f"data:\n  corpus: [{corpus}]\n  cache_dir: {root / 'cache'}\n  max_length: 32\n"
        "train:\n  max_steps: 3\n  batch_size: 32\n  precision: fp32\n"
        f"eval:\n  sts_dir: {sts}\n  every_steps: 1000\n  tasks: [STS-B-dev]\n  final_tasks: [STS-B]\n  batch_size: 256\n"
        f"output:\n  dir: {root / 'runs' / 'tiny'}\n"
    )
    return path


@pytest.fixture
def setup(tmp_path, tiny_bert_dir, sts_dir, monkeypatch, one_thread):
    home = tiny_home(tmp_path, str(tiny_bert_dir), str(tiny_bert_dir))
    monkeypatch.setenv("DISTILL_HOME", str(home))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    return tiny_recipe(tmp_path, small_sts(tmp_path, sts_dir))


def test_compare_six_losses_writes_the_tables_and_reuses_runs(tmp_path, setup, capsys):
    from distill.cli import main

    out = tmp_path / "cmp"
    argv = ["compare", str(setup), "--losses", ",".join(LOSSES), "--out", str(out), "--seeds", "42,7", "--seed-losses", "ibkd", "--quiet"]
    for item in LOSS_SET:
        argv += ["--loss-set", item]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.rstrip().splitlines()[-1].startswith("| ibkd (2 seeds) |")  # the table comes last

    # compare.md: the paper's columns, teacher and init first, then one row per loss
    md = (out / "compare.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("|")]
    head = [c.strip() for c in table[0].strip("|").split("|")]
    assert head == ["model", "STS-B", "Avg", "params", "dim", "train sentences/s", "best STS-B dev", "Avg per seed"]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    assert [c[0] for c in cells] == ["teacher (tiny)", "student init (tiny-student)", *LOSSES[:-1], "ibkd (2 seeds)"]
    assert " ± " in cells[-1][1] and cells[-1][-1].startswith("42: ") and ", 7: " in cells[-1][-1]
    assert " ± " not in cells[2][1] and cells[2][-1] == ""
    assert "mean ± sample standard deviation" in md

    # compare.json / .csv: one row per run, plus teacher and init
    rows = json.loads((out / "compare.json").read_text())
    assert [(r["loss"], r["seed"]) for r in rows] == [("teacher", None), ("init", None), *((x, 42) for x in LOSSES), ("ibkd", 7)]
    for r in rows:
        assert {"loss", "student", "seed", "tasks", "avg", "train_sentences_per_s", "params", "dim", "best_dev", "device"} <= set(r)
        assert set(r["tasks"]) == {"STS-B"} and -100 <= r["avg"] <= 100 and r["device"] == "cpu"
    runs = {r["loss"]: r for r in rows[2:]}
    assert runs["hpd"]["dim"] == 8 and runs["mse"]["dim"] == 32 and rows[0]["dim"] == 32
    assert all(r["train_sentences_per_s"] > 0 and r["reused"] is False for r in rows[2:])
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted([*LOSSES[:-1], "ibkd-seed42", "ibkd-seed7"])
    assert rows[1]["params"] < rows[0]["params"]  # the 1-layer student is smaller than its teacher
    # the recipe's ibkd params are kept for ibkd; the others get defaults plus --loss-set
    saved = json.loads((out / "ibkd-seed7" / "results.json").read_text())
    assert saved["steps"] == 3 and [e["step"] for e in saved["evals"]] == [3]
    import yaml

    ibkd7 = yaml.safe_load((out / "ibkd-seed7" / "recipe.yaml").read_text())
    assert ibkd7["loss"]["bandwidth"] == "median" and ibkd7["train"]["seed"] == 7
    assert yaml.safe_load((out / "hpd" / "recipe.yaml").read_text())["loss"] == {"name": "hpd", "k": 8, "init": "lstsq"}
    with open(out / "compare.csv", newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert [r["loss"] for r in csv_rows] == ["teacher", "init", *LOSSES, "ibkd"]
    assert float(csv_rows[2]["STS-B"]) == pytest.approx(rows[2]["tasks"]["STS-B"])

    png = (out / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1024

    # second call: finished runs and the baselines are reused, nothing is retrained; a run
    # interrupted after its last checkpoint (no results.json yet) is resumed, not restarted
    folders = [*LOSSES[:-1], "ibkd-seed42", "ibkd-seed7"]
    mtimes = {f: (out / f / "results.json").stat().st_mtime_ns for f in folders if f != "cosine"}
    shutil.rmtree(out / "mse" / "best")  # a retrained run would recreate it
    (out / "cosine" / "results.json").unlink()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert printed.count("reused") == len(folders)  # the other runs and the baselines
    assert "cosine seed 42: resuming in" in printed
    assert {f: (out / f / "results.json").stat().st_mtime_ns for f in mtimes} == mtimes
    assert not (out / "mse" / "best").exists()
    again = json.loads((out / "compare.json").read_text())
    assert [r["reused"] for r in again[2:]] == [r["loss"] != "cosine" for r in again[2:]]
    assert again[3]["steps"] == 3 and again[3]["avg"] == pytest.approx(rows[3]["avg"])

    # a changed recipe is refused instead of mixed into the table
    assert main([*argv, "--set", "train.lr=0.001"]) == 2
    assert "holds a run of another recipe (train differ)" in capsys.readouterr().err


def test_unknown_loss_or_loss_key_is_named(tmp_path, setup, capsys):
    from distill.cli import main
    from distill.compare import loss_specs, parse_loss_overrides, parse_losses

    with pytest.raises(DistillError, match=r"unknown loss 'msee'"):
        parse_losses("mse,msee")
    with pytest.raises(DistillError, match=r"--loss-set hpd.kk=3: unknown key loss.kk for loss 'hpd' \(it takes: k, init\)"):
        parse_loss_overrides(["hpd.kk=3"])
    with pytest.raises(DistillError, match=r"unknown loss 'hdp'"):
        parse_loss_overrides(["hdp.k=3"])
    with pytest.raises(DistillError, match=r"loss.tau: expected a value like 0.05"):
        parse_loss_overrides({"infonce": {"tau": "warm"}})
    recipe = load_recipe(setup)
    specs = loss_specs(recipe, ["ibkd", "crd"], parse_loss_overrides(["crd.tau=0.1", "ibkd.lam=0.5"]))
    assert specs["ibkd"]["bandwidth"] == "median" and specs["ibkd"]["lam"] == 0.5  # recipe's params kept
    assert specs["crd"] == {"name": "crd", "proj_dim": 128, "tau": 0.1, "queue_size": 0,
                            "matryoshka_dims": None, "matryoshka_weights": None, "matryoshka_head": "none", "matryoshka_detach": False}  # defaults: the plain objective
    # the CLI reports them as errors, before training anything
    assert main(["compare", str(setup), "--losses", "mse,foo", "--out", str(tmp_path / "x")]) == 2
    assert "unknown loss 'foo'" in capsys.readouterr().err
    assert main(["compare", str(setup), "--losses", "mse", "--loss-set", "mse.k=2", "--out", str(tmp_path / "x")]) == 2
    assert "unknown key loss.k for loss 'mse'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def _ret_row(loss, seed, tasks, ret, dev, dev_task="retrieval/nDCG@10"):
    """A hand-made compare row, as _baseline_row / _run_row write them, with eval.final_retrieval scores."""
    return {"loss": loss, "student": None if loss == "teacher" else "tiny-student", "teacher": "tiny", "seed": seed,
            "tasks": tasks, "avg": None, "train_sentences_per_s": None if loss in ("teacher", "init") else 250.0,
            "params": 2_000_000, "dim": 32, "best_dev": dev, "dev_task": dev_task, "model": "tiny",
            "retrieval": None if ret is None else dict(zip(("nDCG@10", "MRR@10", "Recall@100"), ret)),
            "retrieval_split": None if ret is None else "test"}


def test_compare_table_and_csv_with_retrieval_columns(tmp_path):
    from distill.compare import CSV_COLUMNS, RETRIEVAL_CSV_COLUMNS, format_compare_table, write_csv, write_outputs

    rows = [_ret_row("teacher", None, {"STS-B": 80.0}, (64.51, 60.47, 92.5), 66.0), _ret_row("init", None, {"STS-B": 70.0}, (50.0, 45.0, 80.0), 52.0),
            _ret_row("mse", 42, {"STS-B": 75.0}, (58.0, 55.5, 88.0), 60.0)]
    lines = format_compare_table(rows).splitlines()
    assert lines[0] == ("| model | STS-B | test nDCG@10 | test MRR@10 | test Recall@100 | params | dim | train sentences/s "
                        "| best dev nDCG@10 |")
    assert lines[2] == "| teacher (tiny) | 80.00 | 64.51 | 60.47 | 92.50 | 2.0M | 32 | – | 66.00 |"
    assert lines[-1] == "| mse | 75.00 | 58.00 | 55.50 | 88.00 | 2.0M | 32 | 250 | 60.00 |"
    write_csv(rows, tmp_path / "c.csv")
    with open(tmp_path / "c.csv", newline="") as f:
        got = list(csv.DictReader(f))
    assert list(got[0]) == [*CSV_COLUMNS, *RETRIEVAL_CSV_COLUMNS]
    assert got[2]["nDCG@10"] == "58.0" and got[2]["retrieval_split"] == "test" and got[2]["STS-B"] == "75.0"

    # an STS-free compare over two seeds: retrieval columns only, the per-seed column on test nDCG@10
    free = [_ret_row("teacher", None, {}, (64.51, 60.47, 92.5), 66.0), _ret_row("init", None, {}, (50.0, 45.0, 80.0), 52.0),
            _ret_row("mse", 42, {}, (58.0, 55.0, 88.0), 60.0), _ret_row("mse", 7, {}, (60.0, 57.0, 90.0), 61.0)]
    md = write_outputs(free, tmp_path / "free", dev="retrieval/nDCG@10")
    lines = md.splitlines()
    assert lines[0] == ("| model | test nDCG@10 | test MRR@10 | test Recall@100 | params | dim | train sentences/s | best dev nDCG@10 "
                        "| test nDCG@10 per seed |")
    assert lines[-1].startswith("| mse (2 seeds) | 59.00 ± 1.41 | 56.00 ± 1.41 | 89.00 ± 1.41 |") and lines[-1].endswith("| 42: 58.00, 7: 60.00 |")
    note = (tmp_path / "free" / "compare.md").read_text().splitlines()[2]
    assert note.startswith("retrieval: nDCG@10, MRR@10 and Recall@100 x100 on the test split; of the student selected on retrieval/nDCG@10. ")

    # STS only: the table and CSV exactly as before (no retrieval columns)
    sts = [{**r, "retrieval": None, "retrieval_split": None, "dev_task": "STS-B-dev"} for r in rows]
    assert format_compare_table(sts).splitlines()[0] == "| model | STS-B | params | dim | train sentences/s | best STS-B dev |"
    write_csv(sts, tmp_path / "s.csv")
    assert (tmp_path / "s.csv").read_text().splitlines()[0] == ",".join(CSV_COLUMNS)


def test_compare_selects_on_retrieval_and_reports_test_retrieval(tmp_path, setup, tiny_beir, capsys):
    """One loss, STS-B dev still logged, selection on the dev split's MRR@10, test retrieval columns,
    the baselines' retrieval scores computed once (test for the table, dev for best dev)."""
    from distill.cli import main

    out = tmp_path / "cmp"
    sets = [f"eval.retrieval={{beir: {tiny_beir}, split: dev, metric: mrr@10}}", f"eval.final_retrieval={{beir: {tiny_beir}}}"]
    argv = ["compare", str(setup), "--losses", "mse", "--out", str(out), "--quiet", *[a for s in sets for a in ("--set", s)]]
    assert main(argv) == 0
    capsys.readouterr()
    results = json.loads((out / "mse" / "results.json").read_text())
    assert results["dev_task"] == "retrieval/MRR@10"
    assert {"STS-B-dev", "retrieval/MRR@10", "retrieval/nDCG@10", "retrieval/Recall@100"} <= set(results["evals"][0])
    base = json.loads((out / "baselines.json").read_text())
    for role in ("teacher", "init"):
        assert set(base[role]["retrieval"]) >= {"nDCG@10", "MRR@10", "Recall@100", "max_length"}
        assert "retrieval/MRR@10" in base[role]["scores"] and "STS-B-dev" in base[role]["scores"]
    assert base["key"]["retrieval"]["split"] == "test" and base["key"]["dev_retrieval"]["key"] == "retrieval/MRR@10"

    rows = json.loads((out / "compare.json").read_text())
    assert [r["loss"] for r in rows] == ["teacher", "init", "mse"]
    assert rows[2]["retrieval"] == {m: results["retrieval"][m] for m in ("nDCG@10", "MRR@10", "Recall@100")}
    assert rows[0]["retrieval"]["nDCG@10"] == base["teacher"]["retrieval"]["nDCG@10"]
    assert rows[1]["best_dev"] == base["init"]["scores"]["retrieval/MRR@10"] and rows[2]["best_dev"] == results["best_dev"]
    table = [line for line in (out / "compare.md").read_text().splitlines() if line.startswith("|")]
    assert table[0] == ("| model | STS-B | Avg | test nDCG@10 | test MRR@10 | test Recall@100 | params | dim | train sentences/s "
                        "| best dev MRR@10 |")
    sts_b = f"{rows[2]['tasks']['STS-B']:.2f}"
    assert table[-1].startswith(f"| mse | {sts_b} | {sts_b} | {results['retrieval']['nDCG@10']:.2f} |")
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the second call reuses the run and the baselines (their key holds the retrieval splits)
    assert main(argv) == 0
    assert capsys.readouterr().out.count("reused") == 2


def test_compare_resumes_only_run_folders_it_wrote(tmp_path, setup, capsys):
    """issue 38: compare resumed any OUT/<loss>/checkpoint.pt by itself (no --resume), unpickling a
    planted one, and took a folder without recipe.yaml as its own. Now a per-loss folder is resumed
    only with its recipe.yaml and distill's run marker; every refusal names the folder and comes
    before any work (no baselines.json)."""
    import pickle

    from conftest import Payload

    from distill.cli import main
    from distill.training.run_folder import RUN_MARKER

    out, ran = tmp_path / "cmp", tmp_path / "payload-ran"
    mse = out / "mse"
    mse.mkdir(parents=True)
    argv = ["compare", str(setup), "--losses", "mse", "--out", str(out), "--quiet"]
    (mse / "checkpoint.pt").write_bytes(pickle.dumps(Payload(ran), protocol=2))
    assert main(argv) == 2
    assert f"{mse}: holds checkpoint.pt but no recipe.yaml, so it is not a run this compare wrote" in capsys.readouterr().err
    (mse / "recipe.yaml").write_text(setup.read_text())
    assert main(argv) == 2
    assert f"{mse}: holds checkpoint.pt but no {RUN_MARKER}, so compare did not write it" in capsys.readouterr().err
    (mse / "checkpoint.pt").unlink()
    (mse / "recipe.yaml").unlink()
    (mse / "results.json").write_text('{"best": {"STS-B": 99.0}}')
    assert main(argv) == 2
    assert f"{mse}: holds results.json but no recipe.yaml" in capsys.readouterr().err
    (mse / "results.json").unlink()
    (mse / "notes.txt").write_text("a user's file")
    assert main(argv) == 2
    assert f"output.dir {mse}: a folder distill did not make" in capsys.readouterr().err
    assert not ran.exists() and not (out / "baselines.json").exists()
    assert sorted(p.name for p in mse.iterdir()) == ["notes.txt"]
