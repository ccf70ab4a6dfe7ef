"""Issue 10: bad inputs, races and faults. Each probe of the issue gets exit 2 (or a clear
DistillError) naming the file, key or value; nothing deletes a user's files or mixes two runs.

Real components throughout: the tiny BERT teacher/student presets of conftest, real training
runs, real subprocesses holding (and dying with) the lock.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CORPUS_DIR, REPO, STS_DIR, tiny_recipe_text

from distill.cli import main
from distill.config import load_recipe
from distill.errors import DistillError
from distill.training.trainer import train

UMASK = os.umask(0)
os.umask(UMASK)


def _recipe(tmp_path: Path, overrides=(), **kw):
    path = tmp_path / "recipe.yaml"
    path.write_text(tiny_recipe_text(tmp_path, **kw))
    return load_recipe(path, list(overrides))


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_home):
    """One finished tiny run (2 steps), shared by the export probes."""
    root = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISTILL_HOME", str(tiny_home))
        train(_recipe(root, steps=2, every=2), progress=False)
    return root / "run"


def _tree(path: Path) -> dict:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# --- 1. export never deletes what it did not create ------------------------------------------

def test_export_refuses_folders_it_did_not_make_and_keeps_their_files(tmp_path, trained_run, monkeypatch, capsys):
    run_before = _tree(trained_run)
    user = tmp_path / "x"
    user.mkdir()
    (user / "notes.txt").write_text("keep")
    assert main(["export", str(trained_run), "--out", str(user)]) == 2
    assert "not a distill export" in capsys.readouterr().err and (user / "notes.txt").read_text() == "keep"
    assert main(["export", str(trained_run), "--out", str(user), "--overwrite"]) == 2  # --overwrite does not make it ours
    assert (user / "notes.txt").read_text() == "keep"
    assert main(["export", str(trained_run), "--out", str(trained_run)]) == 2
    assert "is the run folder" in capsys.readouterr().err
    assert main(["export", str(trained_run), "--out", str(trained_run / "best" / "sub")]) == 2
    assert "inside it" in capsys.readouterr().err
    monkeypatch.chdir(user)
    assert main(["export", str(trained_run), "--out", "."]) == 2
    assert "not a distill export" in capsys.readouterr().err and (user / "notes.txt").read_text() == "keep"
    afile = tmp_path / "model.bin"
    afile.write_text("mine")
    assert main(["export", str(trained_run), "--out", str(afile)]) == 2
    assert "an existing file" in capsys.readouterr().err and afile.read_text() == "mine"
    assert _tree(trained_run) == run_before  # the run folder is untouched by every probe
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folders left


def test_export_marks_replaces_only_its_own_export_and_honors_the_umask(tmp_path, trained_run, capsys):
    from distill.export import EXPORT_MARKER

    out = tmp_path / "exported"
    assert main(["export", str(trained_run), "--out", str(out)]) == 0
    marker = json.loads((out / EXPORT_MARKER).read_text())
    assert marker["tool"] == "distill" and marker["source_run"] == str(trained_run.resolve()) and marker["which"] == "best"
    assert main(["export", str(trained_run), "--out", str(out)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    (out / "README.md").write_text("edited")
    assert main(["export", str(trained_run), "--out", str(out), "--overwrite", "--which", "final"]) == 0
    assert json.loads((out / EXPORT_MARKER).read_text())["which"] == "final" and (out / "README.md").read_text() != "edited"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported"]  # the old export deleted, no temp folders
    # mkdtemp makes 0700 folders and safetensors 0600 files: the umask decides instead
    for folder in (out, trained_run / "best", trained_run / "final"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o777 & ~UMASK
        assert stat.S_IMODE((folder / "model.safetensors").stat().st_mode) == 0o666 & ~UMASK
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["export", str(trained_run), "--out", str(empty)]) == 0 and (empty / EXPORT_MARKER).is_file()


def test_exporting_an_interrupted_run_warns(tmp_path, trained_run, capsys):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("results.json", "final"))
    assert main(["export", str(run), "--out", str(tmp_path / "out")]) == 0
    assert "was interrupted or is still running" in capsys.readouterr().err
    assert main(["export", str(trained_run), "--out", str(tmp_path / "out2")]) == 0
    assert "interrupted" not in capsys.readouterr().err


# --- 2. cache writes only into an empty folder or a cache ------------------------------------

def test_cache_refuses_a_folder_with_user_files(tmp_path, tiny_home, monkeypatch, capsys):
    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    corpus = str(CORPUS_DIR / "sts-family-train.txt.gz")
    work = tmp_path / "work"
    (work / "shards").mkdir(parents=True)
    (work / "sentences.txt").write_text("a\nb\na\nc\nb\n")
    (work / "shards" / "mine.npy").write_bytes(b"user data")
    before = _tree(work)
    monkeypatch.chdir(work)
    args = ["cache", "--teacher", "tiny-teacher", "--corpus", corpus, "--max-sentences", "64", "--quiet"]
    assert main([*args, "--out", "."]) == 2
    assert "is not a teacher cache" in capsys.readouterr().err
    assert _tree(work) == before  # sentences.txt keeps its 5 lines, shards/ is still there
    assert main([*args, "--out", str(work / "sentences.txt")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    for flag in ("--shard-size", "--pca", "--batch-size", "--max-sentences"):
        assert main([*args, "--out", str(tmp_path / "c0"), flag, "0"]) == 2
        assert f"{flag} 0: must be a whole number of at least 1" in capsys.readouterr().err
    assert not (tmp_path / "c0").exists()
    # an empty folder is fine, and a cache of ours is reused
    (tmp_path / "c1").mkdir()
    assert main([*args, "--out", str(tmp_path / "c1")]) == 0
    assert main([*args, "--out", str(tmp_path / "c1")]) == 0
    assert "complete and matches: reused" in capsys.readouterr().out


def test_corpus_mismatch_says_how_to_rebuild_and_names_max_sentences(tmp_path, tiny_home, monkeypatch, capsys):
    from distill.training.stages import open_or_build_cache

    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    open_or_build_cache(_recipe(tmp_path, ["data.max_sentences=64"]), progress=False)
    with pytest.raises(DistillError, match=r"max_sentences is 64 in the cache but 32 here.*to a new folder, or delete .*cache"):
        open_or_build_cache(_recipe(tmp_path, ["data.max_sentences=32"]), progress=False)
    # distill cache on that folder gives the same advice, not "rebuild it with distill cache"
    corpus = str(CORPUS_DIR / "sts-family-train.txt.gz")
    assert main(["cache", "--teacher", "tiny-teacher", "--corpus", corpus, "--max-sentences", "32", "--out", str(tmp_path / "cache"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "max_sentences is 64 in the cache but 32 here" in err and "rebuild it with `distill cache`" not in err


def test_relative_corpus_path_shows_the_absolute_path_tried(tmp_path, monkeypatch):
    from distill.data.corpus import read_corpus

    monkeypatch.chdir(tmp_path)
    with pytest.raises(DistillError, match=rf"corpus file not found: data/c\.txt \(looked for {tmp_path}/data/c\.txt"):
        read_corpus(["data/c.txt"])


# --- 3. one process per run / cache folder ---------------------------------------------------

HOLDER = "import sys, time\nfrom distill.lock import folder_lock\nwith folder_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(300)\n"


def _hold(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "held"
    return proc


class StopAt:
    def __init__(self, step):
        self.step = step

    def on_train_begin(self, state): ...
    def on_evaluate(self, state, scores): ...
    def on_train_end(self, state, results): ...

    def on_step_end(self, state, metrics):
        if state.step == self.step:
            raise KeyboardInterrupt


def test_second_run_is_refused_and_a_killed_holder_never_blocks_resume(tmp_path, tiny_home, monkeypatch, capsys):
    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    recipe = _recipe(tmp_path, steps=4, every=2)
    with pytest.raises(KeyboardInterrupt):
        train(recipe, progress=False, callbacks=[StopAt(3)])  # checkpoint at step 2
    run = tmp_path / "run"
    # a checkpoint saved before data.column existed still resumes: a missing key is its default
    ckpt = torch.load(run / "checkpoint.pt", weights_only=False)
    del ckpt["recipe"]["data"]["column"]
    torch.save(ckpt, run / "checkpoint.pt")
    holder = _hold(run)
    try:
        with pytest.raises(DistillError, match=rf"in use by pid {holder.pid} on .*since"):
            train(recipe, resume=True, progress=False)
        assert main(["train", str(tmp_path / "recipe.yaml"), "--resume", "--quiet"]) == 2
        assert f"in use by pid {holder.pid}" in capsys.readouterr().err
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert str(holder.pid) in (run / ".distill.lock").read_text()  # the dead holder's note is left behind...
    results = train(recipe, resume=True, progress=False)  # ...and does not block
    assert results["steps"] == 4
    assert str(os.getpid()) in (run / ".distill.lock").read_text()


def test_two_cache_builds_into_one_folder(tmp_path, tiny_home, monkeypatch, capsys):
    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    out = tmp_path / "cache"
    holder = _hold(out)
    try:
        corpus = str(CORPUS_DIR / "sts-family-train.txt.gz")
        assert main(["cache", "--teacher", "tiny-teacher", "--corpus", corpus, "--max-sentences", "64", "--out", str(out), "--quiet"]) == 2
        assert f"teacher cache is in use by pid {holder.pid}" in capsys.readouterr().err
        assert sorted(p.name for p in out.iterdir()) == [".distill.lock"]  # nothing written next to the holder's build
    finally:
        holder.kill()
        holder.wait()


def test_two_real_trainings_into_one_folder(tmp_path, tiny_home):
    """The issue's probe: two `distill train` into one output.dir at once; the second is refused
    while the first runs (a long run, stopped with Ctrl-C afterwards), and every file is the first's."""
    path = tmp_path / "recipe.yaml"
    path.write_text(tiny_recipe_text(tmp_path, steps=100_000, every=20))
    env = {**os.environ, "DISTILL_HOME": str(tiny_home), "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "distill.cli", "train", str(path), "--quiet"]
    # SIG_DFL for SIGINT in the child: a shell runs background jobs (`cmd &`, as CI scripts may) with
    # SIGINT ignored, the child inherits that, Python then installs no KeyboardInterrupt handler and
    # the Ctrl-C below would be lost (this test hung so in a clean-clone CI run started with `&`).
    first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lock = tmp_path / "run" / ".distill.lock"
    deadline = time.time() + 120
    while not (lock.is_file() and lock.read_text()) and first.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    second = subprocess.run([*cmd, "--set", "train.seed=8"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert first.poll() is None, "the first run ended before the second started"
    ckpt = tmp_path / "run" / "checkpoint.pt"
    while not ckpt.is_file() and first.poll() is None and time.time() < deadline + 120:
        time.sleep(0.05)
    first.send_signal(signal.SIGINT)
    _, err = first.communicate(timeout=300)  # generous: CI machines may be shared and slow
    assert first.returncode == 130, err[-2000:]
    assert second.returncode == 2 and f"in use by pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
    assert "seed: 7" in (tmp_path / "run" / "recipe.yaml").read_text()  # the first run's recipe, not the second's
    assert torch.load(ckpt, weights_only=False)["recipe"]["train"]["seed"] == 7


# --- 4-7. recipe values are checked when the recipe is read ----------------------------------

SMOKE = str(REPO / "configs" / "smoke.yaml")


@pytest.mark.parametrize("override, message", [
    ("train.lr=-1", "train.lr: must be > 0, got -1.0"),
    ("train.lr=nan", "train.lr: expected a finite number, got nan"),
    ("train.lr=inf", "train.lr: expected a finite number, got inf"),
    ("train.batch_size=0", "train.batch_size: must be >= 1, got 0"),
    ("eval.every_steps=0", "eval.every_steps: must be >= 1, got 0"),
    ("train.grad_accum=0", "train.grad_accum: must be >= 1, got 0"),
    ("train.epochs=0", "train.epochs: must be > 0, got 0.0"),
    ("train.max_steps=0", "train.max_steps: must be unset or >= 1, got 0"),
    ("train.warmup_ratio=1.5", "train.warmup_ratio: must be between 0 and 1"),
    ("train.precision=fp8", "train.precision: must be one of bf16, fp16, fp32, got 'fp8'"),
    ("eval.tasks=[STS99]", "eval.tasks: unknown STS task 'STS99'"),
    ("eval.final_tasks=[STS99]", "eval.final_tasks: unknown STS task 'STS99'"),
    ("loss.bandwidth=foo", "loss.bandwidth: must be one of fixed, median, got 'foo'"),
    ("loss.tau=0", "loss.tau: must be a number > 0, got 0.0"),
    ("loss.gamma=-1", "loss.gamma: must be a number > 0"),
    ("loss.lam=.nan", "loss.lam: expected a finite number, got nan"),
    ("data.max_sentences=0", "data.max_sentences: must be unset or >= 1, got 0"),
    ("data.max_length=0", "data.max_length: must be >= 3"),
    ("train.batch_size=1", "train.batch_size 1: loss ibkd is contrastive"),
    ("stage2.train.lr=0", "stage2.train.lr: must be > 0"),
    ("stage2.loss.head=deep", "stage2.loss.head: must be one of linear, mlp, none"),
    ("stage2.loss.head_dim=wide", "stage2.loss.head_dim: must be unset or a whole number >= 1"),
])
def test_config_rejects_what_train_would_reject(override, message, capsys):
    assert main(["config", SMOKE, "--set", override]) == 2
    err = capsys.readouterr().err
    assert message in err and "smoke.yaml" in err and "Traceback" not in err
    assert main(["train", SMOKE, "--set", override, "--set", "output.dir=/nonexistent/never-made"]) == 2  # same check, before any model loads
    assert message in capsys.readouterr().err
    assert not Path("/nonexistent/never-made").exists()


@pytest.mark.parametrize("loss, bs", [("infonce", 1), ("crd", 1)])
def test_contrastive_losses_need_two_per_batch(loss, bs):
    with pytest.raises(DistillError, match=f"loss {loss} is contrastive"):
        load_recipe(SMOKE, [f"loss={{name: {loss}}}", f"train.batch_size={bs}"])
    assert load_recipe(SMOKE, ["loss={name: crd, queue_size: 64}", "train.batch_size=1"]).train.batch_size == 1  # a queue has negatives
    assert load_recipe(SMOKE, ["loss={name: mse}", "train.batch_size=1"]).train.batch_size == 1


def test_recipe_files_that_are_not_a_clean_mapping(tmp_path):
    base = "teacher: all-minilm-l6-v2\nstudent: all-minilm-l3-v2\nloss: {name: ibkd}\n"
    dup = tmp_path / "dup.yaml"
    dup.write_text(base + "train:\n  lr: 1.0e-4\n  batch_size: 32\n  lr: 5\n")
    with pytest.raises(DistillError, match=r"dup\.yaml: line 7: duplicate key 'lr' \(first given on line 5\)"):
        load_recipe(dup)
    top = tmp_path / "top.yaml"
    top.write_text(base + "teacher: all-mpnet-base-v2\n")
    with pytest.raises(DistillError, match=r"top\.yaml: line 4: duplicate key 'teacher'"):
        load_recipe(top)
    lst = tmp_path / "list.yaml"
    lst.write_text("- teacher: all-minilm-l6-v2\n- student: all-minilm-l3-v2\n")
    with pytest.raises(DistillError, match=r"list\.yaml: a recipe is a mapping .* holds a list"):
        load_recipe(lst)
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes((base + "# caf\xe9\n").encode("latin-1"))
    with pytest.raises(DistillError, match=r"latin1\.yaml:4: not UTF-8"):
        load_recipe(latin)
    anchors = tmp_path / "anchors.yaml"  # YAML merge keys stay legal
    anchors.write_text(base + "train: &t {lr: 1.0e-4}\nstage2:\n  train:\n    <<: *t\n    lr: 1.0e-6\n")
    assert load_recipe(anchors).stage2.train.lr == 1e-6


def test_jsonl_corpus_column_is_a_recipe_key(tmp_path, tiny_home, monkeypatch):
    from distill.training.stages import open_or_build_cache

    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    with gzip.open(CORPUS_DIR / "sts-family-train.txt.gz", "rt", encoding="utf-8") as f:
        lines = [next(f).strip() for _ in range(80)]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": i, "body": s}) + "\n" for i, s in enumerate(lines)))
    over = [f"data.corpus=[{corpus}]", "data.max_sentences=null"]
    with pytest.raises(DistillError, match=r"c\.jsonl:1: none of the columns .* data\.column \(a recipe\)"):
        open_or_build_cache(_recipe(tmp_path, over), progress=False)
    cache = open_or_build_cache(_recipe(tmp_path, [*over, "data.column=body"]), progress=False)
    assert cache.sentences() == list(dict.fromkeys(s for s in lines if s))


# --- 5. damaged and malformed data -----------------------------------------------------------

def _damaged_gz(path: Path, kind: str) -> Path:
    with gzip.open(CORPUS_DIR / "sts-family-train.txt.gz", "rb") as f:
        data = gzip.compress(f.read(200_000))
    if kind == "truncated":
        data = data[: len(data) // 2]
    else:  # bytes flipped inside the deflate stream: zlib.error or a CRC error
        data = data[:400] + bytes(b ^ 0xFF for b in data[400:800]) + data[800:]
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("kind", ["truncated", "corrupt"])
def test_damaged_gzip_is_named_in_cache_train_and_encode(tmp_path, tiny_home, monkeypatch, capsys, kind):
    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    bad = _damaged_gz(tmp_path / "bad.txt.gz", kind)
    assert main(["cache", "--teacher", "tiny-teacher", "--corpus", str(bad), "--out", str(tmp_path / "c"), "--quiet"]) == 2
    assert f"{bad}:" in capsys.readouterr().err
    with pytest.raises(DistillError, match=rf"{bad}:\d+: a damaged gzip file"):
        train(_recipe(tmp_path, [f"data.corpus=[{bad}]", "data.max_sentences=null"]), progress=False)
    assert main(["encode", "--model", "tiny-teacher", "--input", str(bad), "--out", str(tmp_path / "e.npy"), "--quiet"]) == 2
    assert f"{bad}:" in capsys.readouterr().err and not (tmp_path / "e.npy").exists()


def test_encode_out_folder_and_missing_device(tmp_path, capsys):
    src = tmp_path / "in.txt"
    src.write_text("a sentence\n")
    (tmp_path / "emb.npy").mkdir()
    assert main(["encode", "--model", "all-minilm-l6-v2", "--input", str(src), "--out", str(tmp_path / "emb.npy"), "--quiet"]) == 2
    assert "an existing folder" in capsys.readouterr().err
    if torch.cuda.is_available():  # a GPU machine: ask for one it does not have
        device, message = f"cuda:{torch.cuda.device_count()}", "there are"
    else:
        device, message = "cuda", "no CUDA GPU"
    assert main(["encode", "--model", "all-minilm-l6-v2", "--input", str(src), "--out", str(tmp_path / "e.npy"), "--device", device, "--quiet"]) == 2
    assert message in capsys.readouterr().err
    assert main(["encode", "--model", "all-minilm-l6-v2", "--input", str(src), "--out", str(tmp_path / "e.npy"), "--device", "gpu0", "--quiet"]) == 2
    assert "not a device name" in capsys.readouterr().err
    for flag in ("--max-length", "--batch-size"):
        assert main(["encode", "--model", "all-minilm-l6-v2", "--input", str(src), "--out", str(tmp_path / "e.npy"), flag, "0", "--quiet"]) == 2
        assert f"{flag} 0: must be at least" in capsys.readouterr().err
    assert not (tmp_path / "e.npy").exists()


def test_lone_surrogates_are_named_by_line(tmp_path, monkeypatch, capsys):
    from distill.data.corpus import read_corpus

    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "fine"}\n{"text": "bad \\ud800 here"}\n')
    with pytest.raises(DistillError, match=r"in\.jsonl:2: a lone surrogate '\\ud800' at character 5"):
        read_corpus([str(src)])
    assert main(["encode", "--model", "all-minilm-l6-v2", "--input", str(src), "--out", str(tmp_path / "e.npy"), "--quiet"]) == 2
    assert "in.jsonl:2: a lone surrogate" in capsys.readouterr().err
    # stdin read with surrogateescape (a POSIX locale) turns a bad byte into a lone surrogate
    monkeypatch.setattr(sys, "stdin", io.StringIO("ok\nbad \udce9 byte\n"))
    assert main(["encode", "--model", "all-minilm-l6-v2", "--input", "-", "--out", str(tmp_path / "e.npy"), "--quiet"]) == 2
    assert "stdin:2: a lone surrogate" in capsys.readouterr().err
    assert not (tmp_path / "e.npy").exists()


def test_damaged_cache_files_say_which_and_what_to_do(tmp_path, tiny_home, tiny_bert_dir, monkeypatch):
    from distill.data.cache import TeacherCache
    from distill.training.stages import open_or_build_cache

    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    recipe = _recipe(tmp_path, ["data.max_sentences=64"])
    cache = open_or_build_cache(recipe, progress=False).path
    manifest = (cache / "manifest.json").read_bytes()
    (cache / "manifest.json").write_bytes(manifest[: len(manifest) // 2])
    with pytest.raises(DistillError, match=r"manifest\.json: damaged .*delete the cache folder .*cache and build it again"):
        open_or_build_cache(recipe, progress=False)
    (cache / "manifest.json").write_bytes(manifest)
    emb = (cache / "embeddings.npy").read_bytes()
    (cache / "embeddings.npy").write_bytes(emb[:40])
    with pytest.raises(DistillError, match=r"embeddings\.npy: damaged .*delete the cache folder"):
        TeacherCache.open(cache)
    (cache / "embeddings.npy").write_bytes(emb)
    assert len(TeacherCache.open(cache)) == 64
    # the student's token ids stored next to the cache are recomputed when damaged
    from transformers import AutoTokenizer

    from distill.data.tokens import tokenize_corpus

    sentences = TeacherCache.open(cache).sentences()
    # a fresh tokenizer each time, as each run has (a used one carries its truncation setting)
    first = tokenize_corpus(AutoTokenizer.from_pretrained(str(tiny_bert_dir)), sentences, 32, cache, progress=False)
    (npz,) = (cache / "tokens").glob("*.npz")
    npz.write_bytes(b"PK\x03\x04 damaged")
    again = tokenize_corpus(AutoTokenizer.from_pretrained(str(tiny_bert_dir)), sentences, 32, cache, progress=False)
    assert np.array_equal(first.ids, again.ids) and np.array_equal(np.load(npz)["offsets"], first.offsets)


def test_damaged_checkpoint_says_which_file_and_what_to_do(tmp_path, tiny_home, monkeypatch):
    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    recipe = _recipe(tmp_path, steps=2, every=2)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoint.pt").write_bytes(b"PK\x03\x04 not a checkpoint")
    with pytest.raises(DistillError, match=r"checkpoint\.pt: damaged .*restore it from a copy, or move it away"):
        train(recipe, resume=True, progress=False)


def _sts_copy(tmp_path: Path) -> Path:
    sts = tmp_path / "sts"
    shutil.copytree(STS_DIR / "stsb", sts / "stsb")
    shutil.copytree(STS_DIR / "sts12", sts / "sts12")
    return sts


def test_sts_gold_nan_empty_and_blank_are_errors_not_nan_scores(tmp_path, capsys):
    from distill.eval.sts_data import load_sts

    sts = _sts_copy(tmp_path)
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


def test_constant_scores_and_non_finite_json_are_refused(tmp_path):
    from distill.io import write_json_atomic
    from distill.eval.sts import evaluate_sts

    with pytest.raises(DistillError, match="STS task STS-B: no score can be computed, the model gives every pair the same similarity"):
        evaluate_sts(lambda s: np.ones((len(s), 4)), tasks=["STS-B"], sts_dir=STS_DIR, progress=False)
    with pytest.raises(DistillError, match=r"out\.json: not written, it would hold non-finite numbers at scores\.STS-B"):
        write_json_atomic(tmp_path / "out.json", {"scores": {"STS12": 1.0, "STS-B": float("nan")}})
    assert not (tmp_path / "out.json").exists()


# --- 6-8. settings that said one thing and did another ----------------------------------------

def test_nan_before_the_first_checkpoint_points_nowhere_it_should_not(tmp_path, tiny_home, monkeypatch):
    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    recipe = _recipe(tmp_path, loss="name: mse, standardize: none", steps=30, every=25,
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


# --- minor: models path never downloads -------------------------------------------------------

def test_models_path_never_downloads(tmp_path):
    env = {**os.environ, "DISTILL_CACHE": str(tmp_path / "cache"), "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1",
           "PIP_NO_INDEX": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "distill.cli", "models", "path"]
    proc = subprocess.run([*cmd, "all-mpnet-base-v2"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1 and "distill models pull all-mpnet-base-v2" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "cache").exists()  # nothing fetched, nothing assembled
    # an installed PyPI copy is on this machine already: its folder, still without copying it
    proc = subprocess.run([*cmd, "all-minilm-l6-v2"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and (Path(proc.stdout.strip()) / "config.json").is_file()
    assert not (tmp_path / "cache").exists()
