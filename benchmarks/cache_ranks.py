"""A teacher cache built by one process vs by `torchrun --nproc_per_node N` (issue 35), in one run.

Each build is a fresh `distill cache` command (its own process or processes), over the same
distinct WordNet glosses, with the same teacher, batch and shard size, into a new folder:

  1 process, T threads     `python -m distill.cli cache ...` with OMP_NUM_THREADS=T (the baseline)
  N processes x 1 thread   `python -m torch.distributed.run --standalone --nproc_per_node N -m distill.cli cache ...`

Wall time is the whole command (imports, teacher load, corpus read, encoding, assembly): what a
user waits. CPU time is the children's user + system time (os.wait4), all processes together.
The 1-minute load average before and after each build is recorded: on a shared machine the wall
time moves with the neighbours' load. Every build's embeddings.npy, sentences.txt,
sentence_offsets.npy and roles.npy are compared with the first build's, byte for byte.

    python benchmarks/cache_ranks.py --teacher all-minilm-l6-v2 --n 4000 --ranks 2 --threads 1,2

Appends to benchmarks/cache_ranks.json (one record per build) and adds a row per build to BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_md import add_row, command_line, git_commit  # noqa: E402
from encode_speed import DEFAULT_CORPUS, read_sentences  # noqa: E402

SECTION = "## Teacher cache: one process vs torchrun ranks (benchmarks/cache_ranks.py, issue 35)"
INTRO = ("Each row is one fresh `distill cache` command over the same sentences (wall: the whole command, imports and "
         "teacher load included; CPU: all its processes). `same bytes`: its cache equals the first row's, byte for byte.")
COLUMNS = ["date", "device", "command", "commit", "teacher", "sentences", "build", "wall s", "CPU s", "sentences/s (wall)",
           "load avg before/after", "same bytes"]
FILES = ("embeddings.npy", "sentences.txt", "sentence_offsets.npy", "roles.npy")


def _cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "CPU"


def _run(cmd: list[str], env: dict) -> tuple[float, float]:
    """(wall s, CPU s) of a command: CPU is its processes' and their waited-for children's
    (torchrun's workers), read from RUSAGE_CHILDREN before and after."""
    cpu0 = _children_cpu()
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, check=False)
    wall = time.perf_counter() - start
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}")
    return wall, _children_cpu() - cpu0


def _children_cpu() -> float:
    import resource

    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--teacher", default="all-minilm-l6-v2")
    p.add_argument("--n", type=int, default=4000, help="distinct sentences")
    p.add_argument("--ranks", default="2", help="process counts under torchrun, comma-separated")
    p.add_argument("--threads", default="1", help="torch threads of the one-process baselines, comma-separated")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--shard-size", type=int, default=500)
    p.add_argument("--work", help="folder for the corpus and caches (default: a temporary one)")
    p.add_argument("--no-md", action="store_true", help="do not add rows to BENCHMARKS.md")
    args = p.parse_args(argv)
    commit = git_commit()
    work = Path(args.work or tempfile.mkdtemp(prefix="cache-ranks-"))
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / "corpus.txt"
    sentences = list(dict.fromkeys(read_sentences(DEFAULT_CORPUS, 2 * args.n)))[: args.n]  # distinct: every row is encoded
    corpus.write_text("\n".join(sentences) + "\n", encoding="utf-8")
    common = ["-m", "distill.cli", "cache", "--teacher", args.teacher, "--corpus", str(corpus), "--batch-size", str(args.batch_size),
              "--shard-size", str(args.shard_size), "--quiet"]
    builds = [(f"1 process, {t} thread{'s' if int(t) > 1 else ''}", int(t), [sys.executable, *common]) for t in args.threads.split(",")]
    builds += [(f"torchrun {r} processes x 1 thread", 1,
                [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", r, *common])
               for r in args.ranks.split(",")]
    records, first = [], None
    device = f"{_cpu_name()}, {os.cpu_count()} cores (shared with other jobs)"
    for i, (label, threads, cmd) in enumerate(builds):
        out_dir = work / f"cache-{i}"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1"}
        before = os.getloadavg()[0]
        wall, cpu = _run([*cmd, "--out", str(out_dir)], env)
        after = os.getloadavg()[0]
        same = True if first is None else all((out_dir / f).read_bytes() == (first / f).read_bytes() for f in FILES)
        first = first or out_dir
        rec = {"date": dt.date.today().isoformat(), "device": device, "commit": commit, "teacher": args.teacher, "sentences": args.n,
               "build": label, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "sentences_per_s": round(args.n / wall, 1),
               "load_before": round(before, 1), "load_after": round(after, 1), "same_bytes": same,
               "batch_size": args.batch_size, "shard_size": args.shard_size}
        records.append(rec)
        print(json.dumps(rec), flush=True)
    out_json = REPO / "benchmarks" / "cache_ranks.json"
    earlier = json.loads(out_json.read_text(encoding="utf-8")) if out_json.is_file() else []
    out_json.write_text(json.dumps(earlier + records, indent=1) + "\n", encoding="utf-8")
    if not args.no_md:
        command = command_line("cache_ranks.py", list(argv if argv is not None else sys.argv[1:]))
        for rec in records:
            add_row(REPO / "BENCHMARKS.md", SECTION, INTRO, COLUMNS, {
                "date": rec["date"], "device": rec["device"], "command": f"`{command}`", "commit": rec["commit"],
                "teacher": rec["teacher"], "sentences": rec["sentences"], "build": rec["build"], "wall s": rec["wall_s"],
                "CPU s": rec["cpu_s"], "sentences/s (wall)": rec["sentences_per_s"],
                "load avg before/after": f"{rec['load_before']} / {rec['load_after']}", "same bytes": "yes" if rec["same_bytes"] else "NO"})
    return 0 if all(r["same_bytes"] for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
