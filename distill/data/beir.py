"""Reading retrieval data: queries, corpus and qrels from TSV/JSONL and TREC files, a BEIR folder
(corpus.jsonl, queries.jsonl, qrels/<split>.tsv) or a hub dataset in the BEIR / MTEB layout.
Malformed lines, duplicate ids and files that are not there are errors naming the file and line.

The one reader of BEIR data: `distill eval-retrieval` and the retrieval evaluators
(distill/eval/retrieval/), a `beir:` corpus source and `distill mine` (distill/data/beir_source.py),
and the recipe checks (distill/recipe_checks.py) all come here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from distill.data.readers import is_jsonl, iter_jsonl, iter_lines, join_title
from distill.errors import DistillError

ID_KEYS = ("_id", "id", "docid", "doc_id", "qid", "pid", "query_id", "query-id", "corpus-id", "corpus_id")
TEXT_KEYS = ("text", "contents", "passage", "query", "body", "sentence")
_QRELS_QUERY_KEYS = ("query-id", "query_id", "qid", "query")
_QRELS_DOC_KEYS = ("corpus-id", "corpus_id", "doc-id", "doc_id", "docid", "pid")
_QRELS_REL_KEYS = ("score", "relevance", "rel", "label")



@dataclass
class RetrievalData:
    """Loaded queries (id -> text), corpus (id -> text), qrels (query id -> doc id -> grade)."""

    queries: dict[str, str]
    corpus: dict[str, str]
    qrels: dict[str, dict[str, int]]
    source: str = ""
    warnings: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Reading files


def load_texts(path: str | Path, what: str = "corpus") -> dict[str, str]:
    """id -> text from a TSV or JSONL file (`what` = "queries" or "corpus", for messages).

    JSONL (.jsonl / .ndjson, optionally .gz): one object per line with an id ("_id", "id",
    "docid", "qid", "pid", ...) and a text ("text", "contents", "passage", "query", ...), and an
    optional "title" (joined as "title text", as BEIR does). TSV (anything else, .gz allowed):
    "id<TAB>text" per line, everything after the first tab being the text; or, when the first
    line is a header whose first field names an id column ("id", "_id", "qid", "pid", "docid",
    ...), the columns its header names ("text"/"contents"/"passage"/"query", optional "title",
    e.g. DPR's "id text title"). Blank lines are skipped. A duplicate id is an error.
    """
    path = Path(path)
    if path.is_dir():
        raise DistillError(f"{path}: a folder, not a {what} file (for a BEIR folder use --beir)")
    out: dict[str, str] = {}
    first_line: dict[str, int] = {}

    def add(doc_id, text: str, lineno: int) -> None:
        doc_id = str(doc_id).strip()
        if not doc_id:
            raise DistillError(f"{path}:{lineno}: empty id")
        if doc_id in out:
            raise DistillError(f"{path}:{lineno}: duplicate id {doc_id!r} (first at line {first_line[doc_id]})")
        out[doc_id] = text
        first_line[doc_id] = lineno

    if is_jsonl(path):
        for lineno, obj in iter_jsonl(path):
            id_key = next((k for k in ID_KEYS if k in obj), None)
            text_key = next((k for k in TEXT_KEYS if k in obj), None)
            if id_key is None or text_key is None:
                missing = f"id key ({', '.join(ID_KEYS[:6])}, ...)" if id_key is None else f"text key ({', '.join(TEXT_KEYS)})"
                raise DistillError(f"{path}:{lineno}: no {missing}; keys: {', '.join(map(str, obj)) or 'none'}")
            text = obj[text_key]
            if not isinstance(text, str):
                raise DistillError(f"{path}:{lineno}: {text_key!r} is a {type(text).__name__}, not a string")
            if isinstance(obj[id_key], (dict, list)) or obj[id_key] is None:
                raise DistillError(f"{path}:{lineno}: {id_key!r} must be a string or number, got {obj[id_key]!r:.60}")
            add(obj[id_key], join_title(obj.get("title"), text), lineno)
        if not out:
            raise DistillError(f"{path}: no {what} in it")
        return out

    header: list[str] | None = None
    text_col = title_col = None
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        if header is None and not out and line.split("\t", 1)[0].strip().lower() in ID_KEYS and "\t" in line:
            header = [h.strip().lower() for h in line.split("\t")]
            text_col = next((header.index(k) for k in TEXT_KEYS if k in header), 1)
            title_col = header.index("title") if "title" in header else None
            continue
        if header is not None:
            fields = line.split("\t")
            if len(fields) != len(header):
                raise DistillError(
                    f"{path}:{lineno}: expected {len(header)} tab-separated fields ({', '.join(header)}), got {len(fields)}"
                )
            add(fields[0], join_title(fields[title_col] if title_col is not None else None, fields[text_col]), lineno)
        else:
            if "\t" not in line:
                raise DistillError(f"{path}:{lineno}: expected 'id<TAB>text', found no tab: {line[:80]!r}")
            doc_id, text = line.split("\t", 1)
            add(doc_id, text, lineno)
    if not out:
        raise DistillError(f"{path}: no {what} in it")
    return out


def _parse_grade(value, path, lineno: int) -> int:
    try:
        grade = float(value)
    except (TypeError, ValueError):
        raise DistillError(f"{path}:{lineno}: relevance {value!r} is not a number") from None
    if not math.isfinite(grade) or grade != int(grade):
        raise DistillError(f"{path}:{lineno}: relevance {value!r} is not an integer grade")
    return int(grade)


def load_qrels(path: str | Path) -> dict[str, dict[str, int]]:
    """query id -> doc id -> integer grade.

    Text (.tsv, .txt, TREC qrels, .gz allowed): fields split on tabs when the line has one, on
    whitespace otherwise; 3 fields = query id, doc id, relevance (BEIR/MTEB TSV, with or without
    the "query-id corpus-id score" header); 4 fields = TREC: query id, iteration (ignored), doc id,
    relevance. Only the first line may be a header (its relevance field not a number). JSONL:
    objects with "query-id"/"qid", "corpus-id"/"docid", "score"/"relevance". Blank lines are
    skipped; a repeated (query, doc) pair keeps its last grade.
    """
    path = Path(path)
    if path.is_dir():
        raise DistillError(f"{path}: a folder, not a qrels file (for a BEIR folder use --beir)")
    qrels: dict[str, dict[str, int]] = {}
    if is_jsonl(path):
        for lineno, obj in iter_jsonl(path):
            keys = [next((k for k in group if k in obj), None) for group in (_QRELS_QUERY_KEYS, _QRELS_DOC_KEYS, _QRELS_REL_KEYS)]
            if None in keys:
                raise DistillError(f"{path}:{lineno}: expected query-id, corpus-id and score keys; keys: {', '.join(map(str, obj))}")
            qrels.setdefault(str(obj[keys[0]]), {})[str(obj[keys[1]])] = _parse_grade(obj[keys[2]], path, lineno)
    else:
        seen_data = False
        for lineno, line in iter_lines(path):
            if not line.strip():
                continue
            fields = [f.strip() for f in line.split("\t")] if "\t" in line else line.split()
            if len(fields) == 3:
                qid, did, rel = fields
            elif len(fields) == 4:
                qid, _, did, rel = fields
            else:
                raise DistillError(
                    f"{path}:{lineno}: expected 3 fields (query id, doc id, relevance) or 4 (TREC: query id, "
                    f"iteration, doc id, relevance), got {len(fields)}: {line[:80]!r}"
                )
            if not seen_data:
                seen_data = True
                try:
                    float(rel)
                except ValueError:
                    continue  # header line
            if not qid or not did:
                raise DistillError(f"{path}:{lineno}: empty query or doc id")
            qrels.setdefault(qid, {})[did] = _parse_grade(rel, path, lineno)
    if not qrels:
        raise DistillError(f"{path}: no judgments in it")
    return qrels


def find_file(folder: Path, stem: str) -> Path | None:
    """FOLDER/STEM.jsonl, .jsonl.gz, .tsv or .tsv.gz: the first that exists, else None."""
    for name in (f"{stem}.jsonl", f"{stem}.jsonl.gz", f"{stem}.tsv", f"{stem}.tsv.gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def load_beir(folder: str | Path, split: str = "test") -> RetrievalData:
    """A BEIR-layout folder: corpus.jsonl (_id, title, text), queries.jsonl (_id, text), qrels/<split>.tsv."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DistillError(f"{folder}: no such folder (expected a BEIR folder with corpus.jsonl, queries.jsonl, qrels/)")
    corpus, queries = find_file(folder, "corpus"), find_file(folder, "queries")
    if corpus is None or queries is None:
        raise DistillError(f"{folder}: a BEIR folder needs corpus.jsonl and queries.jsonl (found: {', '.join(sorted(p.name for p in folder.iterdir())) or 'nothing'})")
    qrels_dir = folder / "qrels"
    qrels = find_file(qrels_dir, split) if qrels_dir.is_dir() else None
    if qrels is None:
        have = sorted(p.name for p in qrels_dir.iterdir()) if qrels_dir.is_dir() else []
        raise DistillError(f"{folder}: no qrels/{split}.tsv (qrels files there: {', '.join(have) or 'none'}); choose one with --split")
    return RetrievalData(
        queries=load_texts(queries, "queries"), corpus=load_texts(corpus, "corpus"), qrels=load_qrels(qrels),
        source=f"{folder} ({split})",
    )


def load_hub(name: str, split: str = "test") -> RetrievalData:
    """A hub dataset in the BEIR / MTEB layout, via the optional `datasets` package.

    Tries the configs "corpus" and "queries" of `name` and its qrels as `name`'s default config
    (MTEB: mteb/scifact) or as the dataset `name`-qrels (BEIR: BeIR/scifact + BeIR/scifact-qrels).
    """
    try:
        import datasets
    except ImportError:
        raise DistillError(f"hub dataset {name!r} needs the `datasets` package (pip install 'distill[hub]')") from None

    def get(dataset: str, config: str | None = None, split: str | None = None):
        what = f"hub dataset {dataset!r}" + (f" config {config!r}" if config else "") + (f" split {split!r}" if split else "")
        try:
            return datasets.load_dataset(dataset, config, split=split)
        except Exception as exc:  # noqa: BLE001 (offline, unknown name, missing config: all one message)
            raise DistillError(f"{what}: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from None

    def first_split(ds):
        return ds[next(iter(ds))] if isinstance(ds, Mapping) else ds

    corpus_ds = first_split(get(name, "corpus"))
    queries_ds = first_split(get(name, "queries"))
    try:
        qrels_ds = get(name, "default", split)
    except DistillError:
        qrels_ds = get(f"{name}-qrels", None, split)
    corpus = {str(r["_id"]): join_title(r.get("title"), r["text"]) for r in corpus_ds}
    queries = {str(r["_id"]): r["text"] for r in queries_ds}
    qrels: dict[str, dict[str, int]] = {}
    for i, r in enumerate(qrels_ds):
        qrels.setdefault(str(r["query-id"]), {})[str(r["corpus-id"])] = _parse_grade(r["score"], f"{name} qrels {split}", i + 1)
    return RetrievalData(queries=queries, corpus=corpus, qrels=qrels, source=f"hub {name} ({split})")


def load_retrieval_data(
    queries: str | Path | None = None,
    corpus: str | Path | None = None,
    qrels: str | Path | None = None,
    *,
    beir: str | Path | None = None,
    hub: str | None = None,
    split: str = "test",
) -> RetrievalData:
    """Queries, corpus and qrels from files, a BEIR folder (`beir`) or a hub dataset (`hub`).

    Files given beside `beir` / `hub` replace that part of it (e.g. other qrels).
    """
    if beir is not None and hub is not None:
        raise DistillError("give a BEIR folder or a hub dataset, not both")
    if beir is not None:
        base = load_beir(beir, split)
    elif hub is not None:
        base = load_hub(hub, split)
    else:
        missing = [n for n, v in (("queries", queries), ("corpus", corpus), ("qrels", qrels)) if v is None]
        if missing:
            raise DistillError(f"missing {', '.join(missing)}: give --queries, --corpus and --qrels files, or --beir DIR, or --hub NAME")
        base = None
    data = RetrievalData(
        queries=load_texts(queries, "queries") if queries is not None else base.queries,
        corpus=load_texts(corpus, "corpus") if corpus is not None else base.corpus,
        qrels=load_qrels(qrels) if qrels is not None else base.qrels,
        source=base.source if base is not None else f"{queries} / {corpus} / {qrels}",
    )
    return data
