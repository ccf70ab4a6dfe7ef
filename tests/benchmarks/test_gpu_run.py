"""benchmarks/gpu_run.sh on CPU (GPU_DRY=1, tiny sizes), so the GPU run cannot rot between GPU turns:
every step's code path runs, and its rows, offline-sts.json and reports are read back."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time

import pytest
from conftest import CORPUS_DIR, REPO, STS_DIR, needs_shared


def _script(name: str):
    """benchmarks/NAME.py as a module (benchmarks/ is no package); gpu_run imports gpu_harness itself."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@needs_shared
def test_dry_run_goes_through_every_step_and_writes_its_rows(tmp_path, minilm_path):
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "GPU_DRY": "1", "OUT": str(out), "GPU_WORK": str(work), "PYTHON": sys.executable,
           "GPU_CORPUS_DIR": str(CORPUS_DIR), "GPU_STS_DIR": str(STS_DIR), "GPU_COMMIT": "abc1234", "HF_HUB_OFFLINE": "1"}
    for key in ("GPU_MODELS_DIR", "GPU_TOTAL_S", "GPU_DEADLINE", "GPU_SEEDS", "GPU_EXTRA", "GPU_OTHER_LOSSES", "GPU_SEED_LOSSES", "DISTILL_HOME"):
        env.pop(key, None)
    proc = subprocess.run(["bash", "benchmarks/gpu_run.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    for r in rows:
        assert {"step", "name", "status", "utc", "elapsed_s"} <= set(r), r
    assert [r["step"] for r in rows] == sorted(r["step"] for r in rows)  # in step order, as measured
    assert not [r for r in rows if r["status"] in ("fail", "stopped")], [r for r in rows if r["status"] in ("fail", "stopped")]
    by = {}
    for r in rows:
        by.setdefault(r["name"], []).append(r)

    # 1: what the machine is; no nvidia-smi here, said so
    if shutil.which("nvidia-smi") is None:
        assert by["facts/nvidia-smi"][0]["status"] == "skipped" and "not on a GPU" in by["facts/nvidia-smi"][0]["why"]
    facts = by["facts/versions"][0]
    assert facts["torch"] and facts["transformers"] and facts["sentence_transformers"] and facts["commit"] == "abc1234"
    assert by["facts/settings"][0]["dry"] is True and by["facts/settings"][0]["missing_models"] == []

    # 2: the smoke train, the kill and the resume that ends at the same best score
    smoke = by["correctness/smoke"][0]
    assert smoke["status"] == "ok" and smoke["steps"] == 4 and smoke["sts_evaluations"] == 2 and smoke["fused_adamw"] is True
    killed = by["correctness/killed"][0]
    assert killed["status"] == "ok" and killed["rc"] == -9 and killed["checkpoint_step"] == 2
    resume = by["correctness/resume"][0]
    assert resume["status"] == "ok" and resume["exact"] is True and resume["resumed_best_dev"] == resume["uninterrupted_best_dev"]
    assert resume["resumed_sts_b"] == resume["uninterrupted_sts_b"] and resume["resumed_from_step"] == 2

    # 3: a row per trained run, as soon as its round ended; and offline-sts.json as the GPU run writes it
    runs = {(r["student"], r["loss"], r["seed"]): r for r in by["offline/run"]}
    assert set(runs) == {("all-minilm-l3-v2", "infonce", 42), ("all-minilm-l3-v2", "ibkd", 42), ("all-minilm-l3-v2", "mse", 42),
                         ("all-minilm-l6-v2", "infonce", 42)}
    for r in runs.values():
        assert set(r["tasks"]) == {"STS-B"} and r["avg"] == r["tasks"]["STS-B"] and r["train_sentences_per_s"] > 0
        assert r["peak_gpu_mem_gib"] is None and r["steps"] == 2
    assert [r["name"] for r in rows if r["name"].startswith("offline/round")] == [
        "offline/round infonce+ibkd seeds 42", "offline/round +mse", "offline/round all-minilm-l6-v2 infonce seed 42"]
    table = json.loads((out / "offline-sts.json").read_text())
    assert [(r["loss"], r["student"]) for r in table] == [
        ("teacher", None), ("init", "all-minilm-l3-v2"), ("infonce", "all-minilm-l3-v2"), ("ibkd", "all-minilm-l3-v2"),
        ("mse", "all-minilm-l3-v2"), ("init", "all-minilm-l6-v2"), ("infonce", "all-minilm-l6-v2")]
    for r in table:
        assert {"loss", "student", "seed", "avg", "tasks", "train_sentences_per_s", "peak_gpu_mem_gib", "commit"} <= set(r)
        assert r["commit"] == "abc1234" and r["peak_gpu_mem_gib"] is None
        assert (r["seed"] == 42) == (r["loss"] not in ("teacher", "init"))
    assert "## Offline STS distillation (benchmarks/offline_sts.py)" in (out / "offline-sts.md").read_text()

    # 4: speed
    assert {(r["student"], r["loss"]) for r in by["speed/train"]} >= {("all-minilm-l3-v2", "ibkd"), ("all-minilm-l6-v2", "infonce")}
    assert all(r["peak_note"] == "not on a GPU" for r in by["speed/train"])
    cache = by["speed/cache"][0]
    assert cache["status"] == "ok" and cache["sentences"] == 32 and cache["st_sentences_per_s"] > 0 and cache["cache_over_st"] > 0
    enc = by["speed/encode"][0]
    assert enc["status"] == "ok" and enc["exported"] == "ibkd-seed42" and enc["student"]["min_cos"] > 0.999
    assert enc["student_over_teacher_ours"] > 0 and (work / "export" / "ibkd-seed42" / "modules.json").is_file()
    static = by["speed/static"][0]
    assert static["status"] == "ok" and static["steps"] == 2 and static["epoch_train_s"] > 0
    speed_md = (out / "speed.md").read_text()
    assert "## Teacher cache speed (benchmarks/cache_speed.py)" in speed_md and "## Encode speed (benchmarks/encode_speed.py)" in speed_md

    # 5: the decoder teacher (tiny Qwen3 built in the step, last-token pooling) cached and distilled
    decoder = by["decoder/smoke"][0]
    assert decoder["status"] == "ok" and decoder["teacher_pooling"] == "lasttoken" and decoder["steps"] == 4, decoder
    assert decoder["teacher_dtype"] == "bf16" and set(decoder["tasks"]) == {"STS-B"}
    # 6: the targets are not judged on a CPU
    summary = by["summary/targets"][0]
    assert summary["status"] == "skipped" and "not on a GPU" in summary["why"]
    assert summary["measured"]["ibkd_l3_avg"] == runs[("all-minilm-l3-v2", "ibkd", 42)]["avg"]

    log = (out / "run.log").read_text()
    for step in ("facts", "correctness", "offline", "speed", "decoder", "summary"):
        assert f"] {step}: start (budget " in log and f"] {step}: done in " in log
    assert len([p for p in out.iterdir()]) <= 8  # the most files the GPU machine returns from $OUT


def test_a_step_over_its_budget_is_stopped_and_the_next_still_runs(tmp_path, monkeypatch):
    import torch  # noqa: F401  (guarded frees the GPU after each step: its first import must not count in the timings)

    harness = _script("gpu_harness")
    monkeypatch.setattr(harness, "MIN_STEP_S", 0.5)  # budgets of a second or two keep this test short
    rows = harness.Rows(tmp_path / "rows.jsonl", time.time())
    settings = harness.Settings(dry=True, out=tmp_path, work=tmp_path, models_dir=None, corpus_dir=tmp_path, sts_dir=tmp_path,
                                deadline=time.time() + 60, t0=time.time(), seeds=[42], seed_losses=["infonce"], other_losses=[],
                                extra=None, decoder_recipe=tmp_path / "none.yaml", resume_tol=0.0)

    def slow(s, r):
        time.sleep(30)

    def broken(s, r):
        raise ValueError("a broken step")

    def fine(s, r, value):
        r.add(9, "fine", "ok", value=value)

    start = time.time()
    harness.guarded(settings, rows, 7, "slow", 1.0, slow)
    assert time.time() - start < 10
    harness.guarded(settings, rows, 8, "broken", 5.0, broken)
    harness.guarded(settings, rows, 9, "fine", 5.0, fine, 3)
    harness.guarded(settings, rows, 10, "late", 0.2, fine, 4)  # under MIN_STEP_S: not started
    got = [(r["name"], r["status"]) for r in rows.read()]
    assert got == [("slow", "stopped"), ("broken", "fail"), ("fine", "ok"), ("late", "skipped")]
    assert "over its budget of 1 s" in rows.read()[0]["why"] and "ValueError: a broken step" in rows.read()[1]["why"]

    def parts(s, r):  # a step made of parts, each under its own budget (the speed step)
        harness.guarded(s, r, 11, "part", 1.0, slow)
        time.sleep(30)  # the step's own alarm still stops it

    start = time.time()
    harness.guarded(settings, rows, 11, "step", 2.0, parts)
    assert 1.8 < time.time() - start < 10
    assert [(r["name"], r["status"]) for r in rows.read()[-2:]] == [("part", "stopped"), ("step", "stopped")]


def test_the_offline_benchmark_gets_what_the_other_steps_leave(tmp_path):
    gpu_run, harness = _script("gpu_run"), _script("gpu_harness")
    now = time.time()
    s = harness.Settings(dry=False, out=tmp_path, work=tmp_path, models_dir=None, corpus_dir=tmp_path, sts_dir=tmp_path,
                         deadline=now + 540, t0=now, seeds=[42, 43, 44], seed_losses=["infonce", "ibkd"],
                         other_losses=["mse", "cosine", "crd", "hpd"], extra=("all-minilm-l6-v2", "infonce"),
                         decoder_recipe=tmp_path / "absent.yaml", resume_tol=0.1)
    budgets = {name: harness.budget_for(s, i) for i, name in enumerate(harness.STEPS)}
    assert budgets["facts"] == 20 and budgets["correctness"] == 90 and budgets["speed"] == 110
    later = 110 + (harness.MIN_STEP_S + 1) + 5  # speed, the decoder step's row (no recipe), the summary
    assert budgets["offline"] == pytest.approx(540 - harness.MARGIN_S - later, abs=1)
    (tmp_path / "absent.yaml").write_text("teacher: x\n")  # with the recipe, its 45 s are kept back
    assert harness.budget_for(s, harness.STEPS.index("offline")) == pytest.approx(540 - harness.MARGIN_S - (110 + 45 + 5), abs=1)
    s.deadline = time.time() + 60  # late: a step gets no more than is left
    assert harness.budget_for(s, harness.STEPS.index("speed")) < 60
    assert [r.label for r in gpu_run.offline_rounds(s)] == [
        "infonce+ibkd seeds 42", "infonce+ibkd seeds 42,43", "infonce+ibkd seeds 42,43,44", "+mse", "+cosine", "+crd", "+hpd",
        "all-minilm-l6-v2 infonce seed 42"]
