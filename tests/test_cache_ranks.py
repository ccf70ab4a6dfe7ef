"""The teacher cache built by several processes (torchrun / gloo on CPU): the same bytes as one
process's build, resumable by any number of processes after a rank is killed, and refused before
any encoding when the ranks disagree or do not share the folder."""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import CORPUS_DIR, REPO

from distill.data.cache import TeacherCache, build_cache
from distill.errors import DistillError
from distill.presets import TeacherSpec

N, SHARD = 600, 50  # 12 shards
STORE = ("embeddings.npy", "sentences.txt", "sentence_offsets.npy", "roles.npy")


def _spec(model_dir: Path, max_length: int = 32) -> TeacherSpec:
    return TeacherSpec(name="tiny", hub_id=str(model_dir), offline_source=None, pooling="mean", normalize=True, dim=32,
                       max_length=max_length)


def _corpus(tmp_path: Path) -> Path:
    with gzip.open(CORPUS_DIR / "wordnet-glosses.txt.gz", "rt", encoding="utf-8") as f:
        lines = [next(f) for _ in range(N)]
    path = tmp_path / "corpus.txt"
    path.write_text("".join(lines), encoding="utf-8")
    return path


class StopsAfter:
    """A real teacher (distill.sentence_model.SentenceModel) stopped at its `calls`+1-th encode call
    (a cache encodes one call per shard): by Ctrl-C, or killed with SIGKILL, as `how` says."""

    def __init__(self, model, calls: int, how: str):
        self.model, self.calls, self.how = model, calls, how

    def __getattr__(self, name):
        return getattr(self.model, name)

    def encode(self, *args, **kwargs):
        if self.calls == 0:
            if self.how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            raise KeyboardInterrupt
        self.calls -= 1
        return self.model.encode(*args, **kwargs)


def _same_cache(a: Path, b: Path) -> None:
    for name in STORE:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    ma, mb = (json.loads((p / "manifest.json").read_text()) for p in (a, b))
    assert {**ma, "created": None} == {**mb, "created": None}
    assert sorted(p.name for p in b.iterdir()) == sorted(p.name for p in a.iterdir())  # no shards, nonce or build.json left


def _worker(rank: int, world: int, init_file: str, job: dict) -> None:
    """One rank of a gloo group: runs job["scenarios"] in order, writing each one's outcome to
    job["out"]/rank{rank}-{i}.txt ("ok ..." or the DistillError's message)."""
    import torch
    import torch.distributed as dist

    from distill.sentence_model import SentenceModel

    torch.set_num_threads(1)
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ["DISTILL_SHARED_WAIT_S"] = "1"
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        for i, sc in enumerate(job["scenarios"]):
            mine = {**sc.get("all", {}), **sc.get(f"rank{rank}", {})}
            encoder = None
            if "encoder_from" in mine:  # the teacher's files: another folder than rank 0's, the same spec
                encoder = SentenceModel.load(_spec(Path(job["model"])), folder=mine.pop("encoder_from"), device="cpu")
            if "stop_after" in mine:
                encoder = StopsAfter(SentenceModel.load(_spec(Path(job["model"])), device="cpu"), mine.pop("stop_after"), "kill")
            try:
                cache = build_cache(_spec(Path(job["model"]), mine.pop("max_length", 32)), [job["corpus"]],
                                    mine.pop("out"), shard_size=SHARD, batch_size=16, progress=False, encoder=encoder, **mine)
                said = f"ok {cache.build_stats}"
            except DistillError as exc:
                said = str(exc)
            Path(job["out"], f"rank{rank}-{i}.txt").write_text(said)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _spawn(tmp_path: Path, job: dict, name: str) -> list[int]:
    """Run _worker in 2 processes forked from this one (the imports are inherited: a spawned
    process spent about 15 CPU-seconds here importing torch and sentence-transformers); their exit
    codes (a killed rank's peer may fail too)."""
    import torch.multiprocessing as mp

    ctx = mp.start_processes(_worker, args=(2, str(tmp_path / f"init-{name}"), job), nprocs=2, join=False, start_method="fork")
    for p in ctx.processes:
        p.join(timeout=240)
    codes = [p.exitcode for p in ctx.processes]
    for p in ctx.processes:
        if p.exitcode is None:
            p.kill()
    assert None not in codes, "a rank hung"
    return codes


@pytest.fixture(scope="module")
def ranks(tmp_path_factory, tiny_bert_dir) -> dict:
    """One 2-process gloo session (each process start costs seconds): 4 bad builds, each refused on
    both ranks, then a good one whose rank 1 is killed (SIGKILL) after its first shard. Also the
    one-process build of the same corpus, to compare with."""
    import torch
    from transformers import BertConfig, BertModel

    tmp = tmp_path_factory.mktemp("ranks")
    corpus = _corpus(tmp)
    one = build_cache(_spec(tiny_bert_dir), [str(corpus)], tmp / "one", shard_size=SHARD, batch_size=16, progress=False)
    assert one.build_stats["shards_encoded"] == 12
    other = tmp / "other-teacher"  # the same settings, other weights
    torch.manual_seed(1)
    BertModel(BertConfig.from_pretrained(tiny_bert_dir)).save_pretrained(other)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (other / name).write_bytes((tiny_bert_dir / name).read_bytes())
    c = {i: str(tmp / f"c{i}") for i in range(5)}
    job = {"model": str(tiny_bert_dir), "corpus": str(corpus), "out": str(tmp), "scenarios": [
        {"all": {"out": c[0]}, "rank1": {"max_sentences": 300}},
        {"all": {"out": c[1]}, "rank1": {"max_length": 16}},
        {"all": {"out": c[2]}, "rank1": {"encoder_from": str(other)}},
        {"rank0": {"out": c[3]}, "rank1": {"out": c[4]}},  # each rank its own folder: as two nodes' local disks
        {"all": {"out": str(tmp / "killed")}, "rank1": {"stop_after": 1}},
    ]}
    codes = _spawn(tmp, job, "session")
    said = [[(tmp / f"rank{r}-{i}.txt").read_text() for r in range(2)] for i in range(4)]
    return {"tmp": tmp, "corpus": corpus, "codes": codes, "said": said, "c": c}


def test_ranks_that_disagree_or_do_not_share_the_folder_fail_before_encoding(ranks):
    said, c = ranks["said"], ranks["c"]
    for rank_said in said[0]:
        assert "rank 1 disagrees with rank 0 on max_sentences: 300 on rank 1, None on rank 0" in rank_said
    for rank_said in said[1]:
        assert "rank 1 disagrees with rank 0 on max_length: 16 on rank 1, 32 on rank 0" in rank_said
    for rank_said in said[2]:
        assert "rank 1 disagrees with rank 0 on teacher_revision" in rank_said and "weights differ" in rank_said
    for rank_said in said[3]:
        assert "must be on a filesystem shared by every node" in rank_said and c[4] in rank_said
    # nothing was read for the first two; the others never encoded a shard, and no nonce is left
    assert not Path(c[0]).exists() and not Path(c[1]).exists()
    for folder in (c[2], c[3]):
        assert (Path(folder) / "build.json").is_file() and not list((Path(folder) / "shards").glob("*.npy"))
        assert not (Path(folder) / ".distill.shared").exists()


def test_two_ranks_build_the_same_bytes_and_any_count_resumes(ranks, tiny_bert_dir):
    from distill.sentence_model import SentenceModel

    tmp, corpus = ranks["tmp"], ranks["corpus"]
    # 2 ranks, rank 1 killed (SIGKILL) after its first shard: its peer stops too, the shards stay
    killed = tmp / "killed"
    assert ranks["codes"][1] == -signal.SIGKILL and ranks["codes"][0] != 0
    with pytest.raises(DistillError, match="not a complete teacher cache.*interrupted"):
        TeacherCache.open(killed)
    done = sorted(p.name for p in (killed / "shards").glob("*.npy"))
    assert "00001.npy" in done and len(done) < 12  # rank 1's first shard (1, 3, 5... are its) and not all
    # ... resumed by one process: only the missing shards are encoded, the bytes are one process's
    resumed = build_cache(_spec(tiny_bert_dir), [str(corpus)], killed, shard_size=SHARD, batch_size=16, progress=False)
    assert resumed.build_stats["shards_reused"] == len(done) and resumed.build_stats["shards_encoded"] == 12 - len(done)
    _same_cache(tmp / "one", killed)

    # one process stopped (Ctrl-C) after 5 shards, resumed by `torchrun --nproc_per_node 2 -m distill.cli cache`
    stopped = tmp / "stopped"
    with pytest.raises(KeyboardInterrupt):
        build_cache(_spec(tiny_bert_dir), [str(corpus)], stopped, shard_size=SHARD, batch_size=16, progress=False,
                    encoder=StopsAfter(SentenceModel.load(_spec(tiny_bert_dir), device="cpu"), 5, "interrupt"))
    assert len(list((stopped / "shards").glob("*.npy"))) == 5
    home = tmp / "home"
    (home / "teachers").mkdir(parents=True)
    (home / "teachers" / "tiny.yaml").write_text(
        f"name: tiny\nhub_id: {tiny_bert_dir}\noffline_source: null\npooling: mean\nnormalize: true\ndim: 32\nmax_length: 32\n")
    env = {**os.environ, "DISTILL_HOME": str(home), "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "distill.cli", "cache",
           "--teacher", "tiny", "--corpus", str(corpus), "--out", str(stopped), "--shard-size", str(SHARD), "--batch-size", "16"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _same_cache(tmp / "one", stopped)
    # one line per rank (7 missing shards: 5, 7, 9, 11 on rank 0, 6, 8, 10 on rank 1) and rank 0's one bar,
    # which counts both ranks' rows: it reaches 600 though rank 0 encoded 200 of the 350 left
    assert "resuming" in proc.stdout and "5 of 12 shards already encoded" in proc.stdout
    assert "rank 0 of 2" in proc.stdout and "encoded 4 of 12 shards (200 sentences)" in proc.stdout
    assert "rank 1 of 2" in proc.stdout and "encoded 3 of 12 shards (150 sentences)" in proc.stdout
    assert "600/600" in proc.stderr and proc.stderr.count("250/600") == 1
    assert proc.stdout.count(f"{stopped}: 600 sentences x 32") == 1  # the summary: rank 0 only
