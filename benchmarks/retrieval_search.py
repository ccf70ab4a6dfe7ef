"""Exact top-k search: our chunked running top-k (`distill.eval.retrieval.exact_search`) against the
obvious alternatives that hold the whole query x passage score matrix.

    ours       corpus in chunks of --chunk-size passages, one matrix product per chunk, a running
               top-k per query (ties to the lower corpus index, whatever the chunk size)
    topk       the full score matrix, then torch.topk (ties in no defined order)
    argsort    the full score matrix, then a stable descending argsort, first k (ties in corpus
               order, like ours; what a numpy scorer does); skipped when its int64 index matrix
               would not fit in half the free memory

On random vectors (cosine: every method normalizes them), sizes QUERIESxPASSAGES: SciFact's test split (300 x 5,183) and a
larger one (10,000 x 100,000 by default). Each method's time is the best of --repeats; the script
checks that all three return the same top-k scores. It prints a table and appends a row per size
to BENCHMARKS.md (date, device, command, commit).

    python benchmarks/retrieval_search.py                                  # 300x5183 and 10000x100000, k=1000
    python benchmarks/retrieval_search.py --sizes 300x5183 --no-record     # a quick check
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_md import add_row, command_line, git_commit  # noqa: E402
from encode_speed import device_name  # noqa: E402

SECTION = "## Exact retrieval search (benchmarks/retrieval_search.py)"
INTRO = ("Seconds for the top-k of every query by exact cosine search over random vectors: ours (chunked matrix "
         "products, running top-k, score matrix never whole) vs the full score matrix + torch.topk and + a stable argsort. "
         "Best of the repeats; all three return the same top-k scores.")
COLUMNS = ["date", "device", "command", "commit", "queries x passages", "dim", "k", "chunk size", "ours s", "full + topk s",
           "full + argsort s", "full score matrix GiB", "ours / topk"]


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best(fn, repeats: int, device):
    best, out = float("inf"), None
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        best = min(best, time.perf_counter() - t0)
    return best, out


def _free_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def measure(n_q: int, n_d: int, dim: int, k: int, chunk_size: int, repeats: int, device) -> dict:
    import torch

    from distill.eval.retrieval import exact_search

    g = torch.Generator().manual_seed(0)
    q = torch.randn(n_q, dim, generator=g)
    d = torch.randn(n_d, dim, generator=g)
    k = min(k, n_d)

    def ours():
        return exact_search(q, d, k, metric="cosine", chunk_size=chunk_size, device=device)[0]

    def full_scores():  # cosine, as ours: the embeddings normalized first
        unit = torch.nn.functional.normalize
        return unit(q.to(device), dim=1) @ unit(d.to(device), dim=1).T

    def full_topk():
        return torch.topk(full_scores(), k, dim=1, sorted=True).values.cpu().numpy()

    def full_argsort():
        s = full_scores()
        idx = torch.argsort(s, dim=1, descending=True, stable=True)[:, :k]
        return torch.gather(s, 1, idx).cpu().numpy()

    matrix_bytes = n_q * n_d * 4
    t_ours, s_ours = _best(ours, repeats, device)
    t_topk, s_topk = _best(full_topk, repeats, device)
    fits = device.type == "cuda" or matrix_bytes * 3 < _free_bytes() / 2  # scores + int64 indices
    t_arg, s_arg = _best(full_argsort, repeats, device) if fits else (None, None)
    import numpy as np

    for name, other in (("topk", s_topk), ("argsort", s_arg)):
        if other is not None and not np.allclose(s_ours, other, atol=1e-5):
            raise SystemExit(f"{n_q}x{n_d}: ours and {name} disagree on the top-k scores")
    return {"queries x passages": f"{n_q:,} x {n_d:,}", "dim": dim, "k": k, "chunk size": f"{chunk_size:,}",
            "ours s": f"{t_ours:.2f}", "full + topk s": f"{t_topk:.2f}",
            "full + argsort s": f"{t_arg:.2f}" if t_arg is not None else "skipped (memory)",
            "full score matrix GiB": f"{matrix_bytes / 2**30:.2f}", "ours / topk": f"{t_ours / t_topk:.2f}x"}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="300x5183,10000x100000", help="QUERIESxPASSAGES, comma-separated")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--k", type=int, default=1000, help="top k kept per query (eval-retrieval's default: 1000, its largest cutoff)")
    ap.add_argument("--chunk-size", type=int, default=None, help="ours: passages per matrix product (default: the library's)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", help="cpu / cuda (default: the GPU when there is one)")
    ap.add_argument("--md", type=Path, default=REPO / "BENCHMARKS.md")
    ap.add_argument("--no-record", action="store_true", help="print only, do not append to BENCHMARKS.md")
    args = ap.parse_args(argv)

    import torch

    from distill.encoder import best_device
    from distill.eval.retrieval import DEFAULT_CHUNK_SIZE

    device = torch.device(args.device) if args.device else best_device()
    chunk = args.chunk_size or DEFAULT_CHUNK_SIZE
    sizes = [tuple(int(x) for x in s.lower().split("x")) for s in args.sizes.split(",") if s.strip()]
    where, commit = device_name(device), git_commit()  # before the first row makes the tree dirty
    for n_q, n_d in sizes:
        row = measure(n_q, n_d, args.dim, args.k, chunk, args.repeats if n_q * n_d < 10**8 else 1, device)
        print(" | ".join(f"{c} {row[c]}" for c in COLUMNS[4:]), flush=True)
        if not args.no_record:
            add_row(args.md, SECTION, INTRO, COLUMNS, {"date": dt.date.today().isoformat(), "device": where,
                                                      "command": f"`{command_line('retrieval_search.py', argv)}`",
                                                      "commit": commit, **row})
    return 0


if __name__ == "__main__":
    sys.exit(main())
