"""benchmarks/offline_sts.py end to end on tiny models staged as folders (--models-dir), on CPU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from conftest import REPO
from test_compare import small_sts, tiny_home, tiny_recipe


def test_offline_benchmark_script_on_tiny_models(tmp_path, tiny_bert_dir, sts_dir):
    # presets name a hub id that cannot be reached (HF_HUB_OFFLINE): only --models-dir can serve it
    home = tiny_home(tmp_path, "example/tiny-teacher", "example/tiny-teacher")
    (home / "students" / "tiny-student2.yaml").write_text(
        (home / "students" / "tiny-student.yaml").read_text().replace("tiny-student", "tiny-student2").replace("layers: 1", "layers: 2")
    )
    staged = tmp_path / "stage" / "files"
    shutil.copytree(tiny_bert_dir, staged / "tiny-teacher")
    recipe = tiny_recipe(tmp_path, small_sts(tmp_path, sts_dir))
    bench_md, out_json, out = tmp_path / "BENCHMARKS.md", tmp_path / "offline-sts.json", tmp_path / "runs"
    bench_md.write_text("# Benchmarks\n\n## Encode speed\n\nan earlier section\n")
    env = {**os.environ, "DISTILL_HOME": str(home), "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}  # one torch thread: two thrash each other on a busy 2-core machine
    cmd = [sys.executable, "benchmarks/offline_sts.py", "--recipe", str(recipe), "--students", "tiny-student,tiny-student2",
           "--losses", "mse,ibkd", "--seeds", "42", "--set", "train.max_steps=2", "--out", str(out),
           "--models-dir", str(staged), "--bench-md", str(bench_md), "--json", str(out_json), "--quiet"]
    proc = subprocess.run(cmd, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    rows = json.loads(out_json.read_text())
    assert [(r["loss"], r["student"]) for r in rows] == [
        ("teacher", None), ("init", "tiny-student"), ("mse", "tiny-student"), ("ibkd", "tiny-student"),
        ("init", "tiny-student2"), ("mse", "tiny-student2"), ("ibkd", "tiny-student2"),
    ]
    for r in rows:
        assert {"loss", "student", "seed", "tasks", "avg", "train_sentences_per_s", "peak_gpu_mem_gib", "device", "commit"} <= set(r)
        assert r["peak_gpu_mem_gib"] is None  # CPU
        assert set(r["tasks"]) == {"STS-B"} and r["avg"] == r["tasks"]["STS-B"] and r["device"] == "cpu"
        assert r["commit"] and r["commit"] != "unknown"
        trained = r["loss"] not in ("teacher", "init")
        assert (r["seed"] == 42 and r["train_sentences_per_s"] > 0) if trained else (r["seed"] is None and r["train_sentences_per_s"] is None)
    assert (out / "tiny-student" / "mse" / "results.json").is_file() and (out / "tiny-student2" / "ibkd-seed42" / "results.json").is_file()
    assert (out / "tiny-student" / "compare.png").is_file()
    staged_preset = (out / "home" / "teachers" / "tiny.yaml").read_text()
    assert str((staged / "tiny-teacher").resolve()) in staged_preset and "offline_source: null" in staged_preset

    md = bench_md.read_text()
    assert md.startswith("# Benchmarks\n\n## Encode speed\n\nan earlier section\n")  # appended, not rewritten
    sect = md[md.index("## Offline STS distillation (benchmarks/offline_sts.py), "):]
    for needle in ("- date: ", "- device: cpu", "- command: `python benchmarks/offline_sts.py --recipe ", "--losses mse,ibkd",
                   f"- commit: {rows[0]['commit']}", "corpus 200 distinct sentences from ", "max_steps 2 (2 optimizer steps)", "batch 32",
                   "selected on STS-B-dev only", "- loss parameters: mse: ", "standardize=student_norm", "; ibkd: tau=0.05"):
        assert needle in sect, needle
    table = [line for line in sect.splitlines() if line.startswith("|")]
    assert [line.strip("|").split("|")[0].strip() for line in table[2:]] == [
        "teacher (tiny)", "tiny-student (init)", "tiny-student + mse", "tiny-student + ibkd",
        "tiny-student2 (init)", "tiny-student2 + mse", "tiny-student2 + ibkd",
    ]
    assert proc.stdout.rstrip().splitlines()[-1] == table[-1]  # the table is printed last


def test_models_dir_without_the_recipes_models_is_refused_up_front(tmp_path, sts_dir, monkeypatch, capsys):
    import importlib.util

    spec = importlib.util.spec_from_file_location("offline_sts", REPO / "benchmarks" / "offline_sts.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    home = tiny_home(tmp_path, "example/tiny-teacher", "example/tiny-teacher")
    monkeypatch.setenv("DISTILL_HOME", str(home))  # the script repoints it; restored after the test
    (tmp_path / "stage" / "other-model").mkdir(parents=True)
    (tmp_path / "stage" / "other-model" / "config.json").write_text("{}")
    recipe = tiny_recipe(tmp_path, small_sts(tmp_path, sts_dir))
    code = script.main(["--recipe", str(recipe), "--students", "tiny-student", "--out", str(tmp_path / "runs"),
                        "--models-dir", str(tmp_path / "stage"), "--json", str(tmp_path / "x.json"), "--bench-md", str(tmp_path / "B.md")])
    assert code == 2
    assert "no model folder found for tiny, tiny-student" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "B.md").exists()


def test_models_dir_serves_the_repositorys_own_presets(tmp_path, minilm_path):
    """The GPU run stages all-MiniLM-L6-v2 as models/all-MiniLM-L6-v2: it serves the teacher preset and
    both MiniLM students, whose presets name it by hub_id (only old presets said base), and the static
    student, which names no model, is copied unchanged."""
    import importlib.util

    import yaml

    spec = importlib.util.spec_from_file_location("offline_sts", REPO / "benchmarks" / "offline_sts.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "all-MiniLM-L6-v2").symlink_to(minilm_path, target_is_directory=True)
    matched = script.stage_home(tmp_path / "models", tmp_path / "home")
    assert {"all-minilm-l6-v2", "all-minilm-l3-v2"} <= set(matched)
    staged = yaml.safe_load((tmp_path / "home" / "students" / "all-minilm-l3-v2.yaml").read_text())
    assert staged["hub_id"] == str((tmp_path / "models" / "all-MiniLM-L6-v2").resolve()) and staged["offline_source"] is None
    assert staged["layers"] == 3
    assert (tmp_path / "home" / "students" / "static-256.yaml").is_file() and "static-256" not in matched
