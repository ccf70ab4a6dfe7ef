"""`distill cache`: encode a corpus once with a frozen teacher."""

from __future__ import annotations


def _cmd_cache(args) -> int:
    import os

    from distill.data.cache import build_cache
    from distill.io import check_writable, write_errors

    check_writable(args.out, "--out", folder=True)  # before the corpus is read and the teacher loads
    rank, device, group = 0, None, int(os.environ.get("WORLD_SIZE", "1")) > 1
    if group:  # under torchrun: every rank encodes its share of the shards (data/cache.py: _build_ranks)
        from distill.training.distributed import init_distributed

        rank, _, device = init_distributed()
    try:
        # A disk that fills up mid-build keeps the shards written so far: the same command resumes.
        with write_errors(args.out, "--out", "; once the disk takes it (or with another --out), the same command "
                                              "resumes the build at the first missing shard"):
            cache = build_cache(
                _teacher(args.teacher, args.max_length), args.corpus, args.out, pca=args.pca, column=args.column,
                max_sentences=args.max_sentences, batch_size=args.batch_size, shard_size=args.shard_size,
                progress=not args.quiet and rank == 0, precision=args.precision, device=device,
            )
    finally:
        if group:
            _leave_group()
    if rank:
        return 0
    m = cache.manifest
    print(f"{cache.path}: {m['count']:,} sentences x {m['dim']} ({m['teacher']}, {m['pooling']} pooling, "
          f"normalize={m['normalize']}); dropped {m['dropped_empty']:,} empty, {m['dropped_duplicates']:,} duplicates"
          + (f"; PCA to {m['pca']['k']}" if m.get("pca") else ""))
    return 0


def _leave_group() -> None:
    """Leave the process group together; after a failure a peer may be gone already (its
    connection closed): then only this process's side is torn down."""
    import torch.distributed as dist

    from distill.training.distributed import teardown

    try:
        teardown()
    except RuntimeError:
        if dist.is_initialized():
            dist.destroy_process_group()


def _teacher(name: str, max_length: int | None):
    """The teacher (a preset, hub id or folder), at --max-length tokens when given (a recipe's data.teacher_max_length)."""
    import dataclasses

    from distill.errors import DistillError
    from distill.model_files import check_length
    from distill.presets import teacher_spec

    spec = teacher_spec(name)
    if max_length is None:
        return spec
    if max_length < 3:
        raise DistillError(f"--max-length {max_length}: must be at least 3 (two special tokens and one word piece)")
    check_length("--max-length", max_length, spec, "teacher")
    return dataclasses.replace(spec, max_length=max_length)


def register(sub) -> None:
    p = sub.add_parser("cache", help="encode a corpus with a teacher once (float16, memory-mapped, resumable; "
                                     "under torchrun every process encodes its share of the shards)")
    p.add_argument("--teacher", required=True, help="teacher: a preset (teachers/*.yaml), a hub id (owner/name) or a model folder; "
                        "encoded as sentence-transformers encodes it, each row with its role's prompt")
    p.add_argument("--corpus", required=True, nargs="+", help="text/.gz files (one sentence a line), .jsonl/.csv/.tsv, hub dataset names, beir:DIR[?queries=dev][&sentences=query]; "
                        "prefix query: for rows a teacher should encode as queries (query:questions.txt)")
    p.add_argument("--out", required=True, help="cache folder")
    p.add_argument("--pca", type=int, help="also store the targets projected to K PCA dims (HPD; the paper uses 128)")
    p.add_argument("--column", help="text column of JSONL/CSV/hub sources (default: text, sentence, ...)")
    p.add_argument("--max-length", type=int, metavar="N",
                   help="encode at N tokens instead of the preset's max_length (a recipe's data.teacher_max_length)")
    p.add_argument("--max-sentences", type=int, help="keep only the first N distinct sentences")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--shard-size", type=int, default=16384, help="rows per resumable shard")
    p.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default=None,
                   help="GPU autocast of the teacher (default: the teacher's dtype, fp32 unless set, as the IBKD authors; "
                        "bf16 is faster on a GPU). CPU runs fp32")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_cache)
