"""`distill eval-retrieval`: MRR@10, Recall@k and nDCG@10 of a model by exact dense search."""

from __future__ import annotations

import sys

from distill.embedding import add_dims_arg
from distill.errors import DistillError
from distill.eval.retrieval.search import DEFAULT_CHUNK_SIZE
from distill.onnx.runtime import add_backend_args, backend_kwargs


def _cmd_eval_retrieval(args) -> int:
    from distill.eval.retrieval import (
        DEFAULT_K,
        evaluate_retrieval,
        format_table,
        load_retrieval_data,
        parse_k,
    )
    from distill.io import write_errors, write_json_atomic, write_text_atomic

    backend_kwargs(args)  # flags checked before the data loads
    ks = parse_k(args.k) if args.k else list(DEFAULT_K)
    if args.batch_size < 1 or args.chunk_size < 1:
        raise DistillError("--batch-size and --chunk-size must be at least 1")
    if args.max_length is not None and args.max_length < 1:
        raise DistillError(f"--max-length {args.max_length}: must be at least 1")
    check_outputs(args)  # before the data loads and the model encodes: not after the whole evaluation
    if args.doc_model:
        from distill.eval.retrieval.asymmetric import teacher_warning

        warning = teacher_warning(args.model, args.doc_model)
        if warning:
            print(f"distill: warning: {warning}", file=sys.stderr)
    data = load_retrieval_data(args.queries, args.corpus, args.qrels, beir=args.beir, hub=args.hub, split=args.split)
    results = evaluate_retrieval(
        args.model, data.queries, data.corpus, data.qrels, k=ks, batch_size=args.batch_size,
        chunk_size=args.chunk_size, metric=args.metric, progress=not args.quiet, max_length=args.max_length,
        return_run=bool(args.save_run), dims=args.dims, **backend_kwargs(args),
        doc_model=args.doc_model, corpus_source=args.corpus or args.beir,
    )
    run, scores = results.pop("run", None), results.pop("run_scores", None)
    for w in data.warnings + results["warnings"]:
        print(f"distill: warning: {w}", file=sys.stderr)
    print(format_table(results, title=args.model))
    docs = f", documents by {results['doc_model']} at {results['doc_max_length']} tokens" if args.doc_model else ""
    print(f"{results['queries']} queries evaluated, {results['corpus']} passages, {results['metric']} similarity, "
          f"exact search, max length {results['max_length']} tokens{docs}", file=sys.stderr)
    kept = "; not written, the scores are in the table above"
    if args.json:
        with write_errors(args.json, "--json", kept):
            write_json_atomic(args.json, {"model": args.model, "data": data.source, **({"doc_model": args.doc_model} if args.doc_model else {}),
                                          **results})
        print(f"wrote {args.json}", file=sys.stderr)
    if args.save_run:
        with write_errors(args.save_run, "--save-run", kept + (f" and in {args.json}" if args.json else "")):
            write_text_atomic(args.save_run, trec_run(run, scores, tag=args.model))
        print(f"wrote {args.save_run}", file=sys.stderr)
    return 0


def check_outputs(args) -> None:
    """--json and --save-run: two different files, each new (or --overwrite) in a folder that can be written."""
    from pathlib import Path

    from distill.io import check_new_file

    if args.json and args.save_run and Path(args.json).absolute() == Path(args.save_run).absolute():
        raise DistillError(f"--json and --save-run name the same file {args.json}; give two files")
    for flag, path in (("--json", args.json), ("--save-run", args.save_run)):
        if path:
            check_new_file(path, flag, args.overwrite)


def trec_run(run: dict, scores: dict, tag: str) -> str:
    """A TREC run file: `qid Q0 docid rank score tag` per line, best first (what trec_eval and
    pytrec_eval read). The tag has no spaces."""
    tag = "".join(tag.split()) or "distill"
    return "".join(f"{q} Q0 {d} {r} {s:.6f} {tag}\n" for q, docs in run.items() for r, (d, s) in enumerate(zip(docs, scores[q]), 1))


def register(sub) -> None:
    p = sub.add_parser(
        "eval-retrieval",
        help="retrieval evaluation: MRR@10, Recall@k, nDCG@10 by exact search",
        description=(
            "Embed queries and passages, rank every passage for every query exactly (chunked matrix products, "
            "running top-k), and score against qrels. Inputs: --queries/--corpus as TSV (id<TAB>text) or JSONL "
            "(_id/id, text, optional title), --qrels as TSV (query id, doc id, relevance; header optional) or "
            "TREC (query id, iteration, doc id, relevance); or --beir DIR (corpus.jsonl, queries.jsonl, "
            "qrels/SPLIT.tsv); or --hub NAME (BEIR/MTEB layout, needs `datasets` and the hub). Files given "
            "with --beir/--hub replace that part. Qrels query ids missing from the queries are dropped with a "
            "warning; relevant doc ids missing from the corpus count as not retrieved (warning); no match at "
            "all is an error. Length: queries and passages are truncated at the model's own max_seq_length (what "
            "its sentence-transformers folder declares, e.g. 256 for all-MiniLM-L6-v2; a plain transformers folder: "
            "its position limit), not at a preset's training/caching max_length; --max-length N overrides it."
        ),
    )
    p.add_argument("--model", required=True, help="model folder, preset name, hub id or PyPI model key")
    p.add_argument("--doc-model", metavar="MODEL",
                   help="embed the passages with this model (a teacher) and only the queries with --model: a query encoder "
                        "trained into the teacher's space, scored against the teacher's own document vectors (the two "
                        "must put out one width; docs/keep-your-index.md)")
    p.add_argument("--queries", metavar="FILE", help="queries: TSV (id<TAB>text) or JSONL")
    p.add_argument("--corpus", metavar="FILE", help="passages: TSV (id<TAB>text) or JSONL (_id, title, text)")
    p.add_argument("--qrels", metavar="FILE", help="judgments: TSV (qid, docid, rel) or TREC 4 columns")
    p.add_argument("--beir", metavar="DIR", help="BEIR folder: corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv")
    p.add_argument("--hub", metavar="NAME", help="hub dataset in BEIR/MTEB layout, e.g. mteb/scifact")
    p.add_argument("--split", default="test", help="qrels split of --beir / --hub (default: test)")
    p.add_argument("--k", default="10,100,1000", help="Recall cutoffs, comma-separated (default: 10,100,1000)")
    p.add_argument("--metric", default="cosine", help="cosine (default), dot, or l2")
    p.add_argument("--batch-size", type=int, default=128, help="sentences per encoder batch")
    p.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE,
                   help=f"passages scored per matrix product (default {DEFAULT_CHUNK_SIZE:,}; results do not depend on it)")
    p.add_argument("--max-length", type=int, metavar="N",
                   help="truncate queries and passages at N tokens (default: the model's own max_seq_length, "
                        "see above; at most the model's position limit)")
    p.add_argument("--json", metavar="FILE", help="also write the results to this JSON file (an existing file needs --overwrite)")
    p.add_argument("--save-run", metavar="FILE", help="also write the ranking (top max(k) per query) as a TREC run file "
                                                      "(an existing file needs --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace existing --json / --save-run files")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_dims_arg(p)
    add_backend_args(p)
    p.set_defaults(func=_cmd_eval_retrieval)
