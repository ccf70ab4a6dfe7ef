"""`distill similarity`: score a source sentence against candidates (the model cards' pipeline call)."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

from distill.embedding import add_dims_arg
from distill.errors import DistillError
from distill.onnx.runtime import add_backend_args, backend_kwargs


def _read_input(spec: str) -> dict:
    """The JSON object of a file, or of stdin for "-"."""
    where = "stdin" if spec == "-" else spec
    if spec == "-":
        text = sys.stdin.read()
    else:
        path = Path(spec)
        if not path.is_file():
            raise DistillError(f"{path}: no such file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise DistillError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DistillError(f"{where}:{exc.lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(data, dict):
        raise DistillError(
            f'{where}: expected a JSON object like {{"source_sentence": [...], "sentences_to_compare": [...]}}, '
            f"got a {type(data).__name__}"
        )
    return data


def _table(rows: list[dict], metric: str, closer: bool) -> str:
    width = max(len(f"{r['score']:.4f}") for r in rows)
    head = f"{'rank':>4}  {metric + (' (distance)' if not closer else ''):>{width}}  sentence"
    lines = [head]
    for r in rows:
        lines.append(f"{r['rank']:>4}  {r['score']:>{width}.4f}  {r['sentence']}")
    return "\n".join(lines)


def _cmd_similarity(args) -> int:
    from distill.eval.similarity import (
        COMPARE_KEY,
        SOURCE_KEY,
        normalize_metric,
        parse_inputs,
        pipeline,
        rank,
    )

    if args.input is not None and (args.source or args.compare):
        raise DistillError("give --input, or --source/--compare, not both")
    if args.input is not None:
        inputs = _read_input(args.input)
    elif args.source:
        inputs = {SOURCE_KEY: args.source}
        if args.compare:
            inputs[COMPARE_KEY] = args.compare
    else:
        raise DistillError("nothing to score: give --source SENTENCE [--compare SENTENCE ...], or --input FILE (- for stdin)")
    metric = normalize_metric(args.metric)
    source, compare = parse_inputs(inputs)  # checked before the model loads
    with warnings.catch_warnings():  # the note is printed below, once
        warnings.filterwarnings("ignore", message=r".*further source sentence", category=UserWarning)
        result = pipeline(args.model, metric=metric, batch_size=args.batch_size, dims=args.dims, **backend_kwargs(args))(inputs)
    candidates = compare if compare is not None else source[1:]
    order = rank(result["scores"], metric)
    rows = [
        {"rank": r, "index": i, "score": result["scores"][i], "sentence": candidates[i]}
        for r, i in enumerate(order, 1)
    ]
    if "note" in result:
        print(f"distill: note: {result['note']}", file=sys.stderr)
    if args.json:
        out = {
            "model": args.model,
            "metric": result["metric"],
            "higher_is_closer": result["higher_is_closer"],
            "source_sentence": source[0],
            "results": rows,
        }
        if "ignored_source_sentences" in result:
            out["ignored_source_sentences"] = result["ignored_source_sentences"]
            out["note"] = result["note"]
        if args.embeddings:
            out["text_embedding"] = result["text_embedding"].tolist()
        print(json.dumps(out, ensure_ascii=False, indent=2))
        return 0
    print(f"source: {source[0]}")
    if not rows:
        print("(no candidates: give --compare, or more than one --source)")
        return 0
    print(_table(rows, result["metric"], result["higher_is_closer"]))
    return 0


def register(sub) -> None:
    p = sub.add_parser(
        "similarity",
        help="score a source sentence against candidate sentences (ranked table or JSON)",
        description=(
            "Score the first source sentence against each candidate, as the sentence-embedding model cards' "
            "pipeline does. Input from --source/--compare, or a JSON file / stdin holding "
            '{"source_sentence": [...], "sentences_to_compare": [...]}. Without candidates, the first source '
            "sentence is scored against the other source sentences."
        ),
    )
    p.add_argument("--model", required=True, help="model folder, preset name, hub id or PyPI model key")
    p.add_argument("--source", nargs="+", metavar="SENTENCE", help="the source sentence (more: scored against the first when no --compare)")
    p.add_argument("--compare", nargs="+", metavar="SENTENCE", help="candidate sentences")
    p.add_argument("--input", metavar="FILE", help="JSON file with source_sentence / sentences_to_compare; - reads stdin")
    p.add_argument("--metric", default="cosine", help="cosine (default), dot, or l2 (a distance: smaller is closer)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--embeddings", action="store_true", help="with --json: include the text_embedding rows")
    p.add_argument("--batch-size", type=int, default=128)
    add_dims_arg(p)
    add_backend_args(p)
    p.set_defaults(func=_cmd_similarity)
