"""Dense retrieval evaluation: MRR@10, Recall@k and nDCG@10 with exact (brute-force) search.

The job an exported student takes over from its teacher besides STS: embed queries and passages,
rank every passage for every query, score the ranking against relevance judgments (qrels).

Metrics, per query q with graded judgments rel(q, d) (a doc is *relevant* when rel > 0; an
unjudged doc has rel 0; a negative grade counts as 0):

- MRR@10: 1 / rank of the first relevant doc among the top 10 (rank 1 = best), 0 if none is.
- Recall@k: |relevant docs in the top k| / |relevant docs|.
- nDCG@10: DCG@10 / IDCG@10 with DCG@10 = sum over ranks r = 1..10 of rel(doc at r) / log2(r + 1):
  linear gain (the gain is the grade itself, as in BEIR / pytrec_eval's ndcg_cut, not 2^rel - 1)
  and log2(rank + 1) discount; IDCG@10 is the DCG@10 of the query's judged grades sorted best
  first.

Each metric is averaged over the queries that have at least one relevant doc in the qrels
(queries without one are counted and left out: every metric would be 0 or undefined for them).
Judged docs that are missing from the corpus stay in the qrels: they cannot be retrieved, so they
lower Recall and nDCG as they do in BEIR / pytrec_eval; they are counted in a warning.

Ties: passages with equal scores are ranked in corpus order (earlier in the file first), both
inside a chunk and across chunks, so the ranking does not depend on `chunk_size`. One caveat:
"equal" means equal float32 scores, and the last bit of a float32 dot product can depend on the
shape of the matrix product it was computed in; two passages whose scores differ only by that
rounding (duplicate passages, typically) can swap between chunk sizes. Embeddings do not depend on
`chunk_size` (the corpus is embedded in fixed blocks of ENCODE_BLOCK passages).

Search never holds the full query x corpus score matrix: the corpus is embedded in blocks and
scored in chunks of `chunk_size` passages (one matrix product per chunk and query block, on the
GPU when there is one), keeping only a running top-k per query (k = the largest cutoff, at
least 10). Memory: queries x k for the running top-k, chunk_size x dim for the passages, one
query block x (k + chunk_size) for the scores.

Inputs (see `load_retrieval_data`): TSV or JSONL queries / corpus (id and text; a corpus may have
titles, used as "title text" like BEIR does), qrels as TSV (query id, doc id, relevance; header
line optional) or TREC (query id, iteration, doc id, relevance), a BEIR folder (corpus.jsonl,
queries.jsonl, qrels/<split>.tsv), or a hub dataset with the `datasets` package (BEIR / MTEB
layout). Every malformed line is a `DistillError` naming the file and line. Qrels that name
unknown query ids are dropped with a counted warning; if none of the qrels' query ids, or none of
their relevant doc ids, occur in the data, that is an error (the ids do not match: wrong column
or wrong file).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .corpus_io import is_jsonl, iter_jsonl, iter_lines
from .errors import DistillError

DEFAULT_K = (10, 100, 1000)
MRR_CUTOFF = 10
NDCG_CUTOFF = 10
DEFAULT_CHUNK_SIZE = 50_000
# Corpus passages embedded per block before scoring. Fixed (not tied to chunk_size), so that the
# embeddings, and hence the results, do not depend on chunk_size.
ENCODE_BLOCK = 131_072
# Score-matrix elements per query block: bounds the scratch memory of one top-k merge.
_BLOCK_ELEMENTS = 1 << 25

_ID_KEYS = ("_id", "id", "docid", "doc_id", "qid", "pid", "query_id", "query-id", "corpus-id", "corpus_id")
_TEXT_KEYS = ("text", "contents", "passage", "query", "body", "sentence")
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


def _join_title(title, text: str) -> str:
    title = "" if title is None else str(title)
    return f"{title} {text}".strip() if title.strip() else text


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
            id_key = next((k for k in _ID_KEYS if k in obj), None)
            text_key = next((k for k in _TEXT_KEYS if k in obj), None)
            if id_key is None or text_key is None:
                missing = f"id key ({', '.join(_ID_KEYS[:6])}, ...)" if id_key is None else f"text key ({', '.join(_TEXT_KEYS)})"
                raise DistillError(f"{path}:{lineno}: no {missing}; keys: {', '.join(map(str, obj)) or 'none'}")
            text = obj[text_key]
            if not isinstance(text, str):
                raise DistillError(f"{path}:{lineno}: {text_key!r} is a {type(text).__name__}, not a string")
            if isinstance(obj[id_key], (dict, list)) or obj[id_key] is None:
                raise DistillError(f"{path}:{lineno}: {id_key!r} must be a string or number, got {obj[id_key]!r:.60}")
            add(obj[id_key], _join_title(obj.get("title"), text), lineno)
        if not out:
            raise DistillError(f"{path}: no {what} in it")
        return out

    header: list[str] | None = None
    text_col = title_col = None
    for lineno, line in iter_lines(path):
        if not line.strip():
            continue
        if header is None and not out and line.split("\t", 1)[0].strip().lower() in _ID_KEYS and "\t" in line:
            header = [h.strip().lower() for h in line.split("\t")]
            text_col = next((header.index(k) for k in _TEXT_KEYS if k in header), 1)
            title_col = header.index("title") if "title" in header else None
            continue
        if header is not None:
            fields = line.split("\t")
            if len(fields) != len(header):
                raise DistillError(
                    f"{path}:{lineno}: expected {len(header)} tab-separated fields ({', '.join(header)}), got {len(fields)}"
                )
            add(fields[0], _join_title(fields[title_col] if title_col is not None else None, fields[text_col]), lineno)
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


def _find(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}.jsonl", f"{stem}.jsonl.gz", f"{stem}.tsv", f"{stem}.tsv.gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def load_beir(folder: str | Path, split: str = "test") -> RetrievalData:
    """A BEIR-layout folder: corpus.jsonl (_id, title, text), queries.jsonl (_id, text), qrels/<split>.tsv."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DistillError(f"{folder}: no such folder (expected a BEIR folder with corpus.jsonl, queries.jsonl, qrels/)")
    corpus, queries = _find(folder, "corpus"), _find(folder, "queries")
    if corpus is None or queries is None:
        raise DistillError(f"{folder}: a BEIR folder needs corpus.jsonl and queries.jsonl (found: {', '.join(sorted(p.name for p in folder.iterdir())) or 'nothing'})")
    qrels_dir = folder / "qrels"
    qrels = _find(qrels_dir, split) if qrels_dir.is_dir() else None
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
    corpus = {str(r["_id"]): _join_title(r.get("title"), r["text"]) for r in corpus_ds}
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


# ---------------------------------------------------------------------------------------------
# Metrics on rankings


def _relevant(judged: Mapping[str, int]) -> set[str]:
    return {d for d, g in judged.items() if g > 0}


def mrr_at_k(ranking: Sequence[str], judged: Mapping[str, int], k: int = MRR_CUTOFF) -> float:
    """1 / rank of the first relevant doc (grade > 0) in the top k, else 0."""
    for r, doc in enumerate(ranking[:k], 1):
        if judged.get(doc, 0) > 0:
            return 1.0 / r
    return 0.0


def recall_at_k(ranking: Sequence[str], judged: Mapping[str, int], k: int) -> float:
    """Fraction of the relevant docs (grade > 0) in the top k; 0 when there is none to find."""
    relevant = _relevant(judged)
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranking[:k])) / len(relevant)


def ndcg_at_k(ranking: Sequence[str], judged: Mapping[str, int], k: int = NDCG_CUTOFF) -> float:
    """DCG@k / IDCG@k, gain = grade (linear, negative grades as 0), discount log2(rank + 1)."""
    dcg = sum(max(judged.get(doc, 0), 0) / math.log2(r + 1) for r, doc in enumerate(ranking[:k], 1))
    ideal = sorted((max(g, 0) for g in judged.values()), reverse=True)[:k]
    idcg = sum(g / math.log2(r + 1) for r, g in enumerate(ideal, 1))
    return dcg / idcg if idcg > 0 else 0.0


def compute_metrics(
    run: Mapping[str, Sequence[str]], qrels: Mapping[str, Mapping[str, int]], k: Sequence[int] = DEFAULT_K
) -> dict[str, float]:
    """MRR@10, nDCG@10 and Recall@k averaged over the qrels' queries with a relevant doc.

    `run`: query id -> doc ids ranked best first (a query missing from it counts as an empty
    ranking). Returns {"MRR@10", "nDCG@10", "Recall@<k>" for each k, "queries": how many were
    averaged}.
    """
    ks = _check_k(k)
    evaluated = [q for q, judged in qrels.items() if _relevant(judged)]
    out: dict[str, float] = {f"MRR@{MRR_CUTOFF}": 0.0, f"nDCG@{NDCG_CUTOFF}": 0.0, **{f"Recall@{c}": 0.0 for c in ks}}
    for q in evaluated:
        ranking = list(run.get(q, ()))
        judged = qrels[q]
        out[f"MRR@{MRR_CUTOFF}"] += mrr_at_k(ranking, judged, MRR_CUTOFF)
        out[f"nDCG@{NDCG_CUTOFF}"] += ndcg_at_k(ranking, judged, NDCG_CUTOFF)
        for c in ks:
            out[f"Recall@{c}"] += recall_at_k(ranking, judged, c)
    n = len(evaluated)
    out = {key: (value / n if n else 0.0) for key, value in out.items()}
    out["queries"] = n
    return out


def _check_k(k) -> list[int]:
    if isinstance(k, int):
        k = [k]
    ks = sorted({int(c) for c in k})
    if not ks or ks[0] < 1:
        raise DistillError(f"k must be positive cutoffs, got {list(k)!r}")
    return ks


def parse_k(text: str) -> list[int]:
    """"10,100,1000" (or spaces) -> [10, 100, 1000]."""
    parts = [p for p in str(text).replace(",", " ").split() if p]
    try:
        ks = [int(p) for p in parts]
    except ValueError:
        raise DistillError(f"--k {text!r}: expected comma-separated positive integers, e.g. 10,100,1000") from None
    if not ks or min(ks) < 1:
        raise DistillError(f"--k {text!r}: expected comma-separated positive integers, e.g. 10,100,1000")
    return sorted(set(ks))


# ---------------------------------------------------------------------------------------------
# Exact search with a running top-k


def _merge_topk(top_s, top_i, new_s, new_i, k: int):
    """Best k of (running top-k, new chunk) per row, ties to the lower index.

    Invariant: each row's entries are in increasing index order, and every running index is below
    every new one; the result keeps that order (it is a masked selection, not a sort).
    """
    import torch

    scores = torch.cat([top_s, new_s], 1)
    index = torch.cat([top_i, new_i.expand(new_s.shape[0], -1)], 1)
    if scores.shape[1] <= k:
        return scores, index
    kth = torch.topk(scores, k, dim=1, sorted=True).values[:, -1:]
    above = scores > kth
    tied = scores == kth
    need = k - above.sum(1, keepdim=True)
    keep = above | (tied & (torch.cumsum(tied, 1, dtype=torch.int32) <= need))
    rows = scores.shape[0]
    return scores[keep].view(rows, k), index[keep].view(rows, k)


class TopK:
    """Running top-k over a corpus fed in chunks (in corpus order), for all queries at once.

    Scores are "higher is closer" similarities (for l2: minus the squared distance); `result()`
    converts them back to the metric's values.
    """

    def __init__(self, queries, k: int, metric: str = "cosine", chunk_size: int = DEFAULT_CHUNK_SIZE, device=None):
        import torch

        from .pipeline import normalize_metric

        if chunk_size < 1:
            raise DistillError(f"chunk_size must be at least 1, got {chunk_size}")
        self.metric = normalize_metric(metric)
        self.k = int(k)
        self.chunk_size = int(chunk_size)
        self.device = torch.device(device) if device is not None else _default_device()
        q = torch.as_tensor(np.asarray(queries, dtype=np.float32)).to(self.device)
        if q.ndim != 2:
            raise DistillError(f"query embeddings must be 2-d, got shape {tuple(q.shape)}")
        self.queries = self._prepare(q)
        n = q.shape[0]
        self.scores = torch.empty(n, 0, device=self.device)
        self.index = torch.empty(n, 0, dtype=torch.long, device=self.device)
        self.seen = 0
        self.query_block = max(1, _BLOCK_ELEMENTS // (self.k + self.chunk_size))

    def _prepare(self, x):
        import torch

        return torch.nn.functional.normalize(x, dim=1) if self.metric == "cosine" else x

    def add(self, docs) -> None:
        """Score the next passages (rows of `docs`, continuing the corpus order) and merge."""
        import torch

        d_all = torch.as_tensor(np.asarray(docs, dtype=np.float32) if not isinstance(docs, torch.Tensor) else docs)
        if d_all.ndim != 2 or d_all.shape[1] != self.queries.shape[1]:
            raise DistillError(f"passage embeddings of shape {tuple(d_all.shape)} do not match queries of dim {self.queries.shape[1]}")
        for start in range(0, d_all.shape[0], self.chunk_size):
            d = self._prepare(d_all[start : start + self.chunk_size].to(self.device, torch.float32))
            ids = torch.arange(self.seen, self.seen + d.shape[0], device=self.device).unsqueeze(0)
            d_sq = (d * d).sum(1) if self.metric == "l2" else None
            parts_s, parts_i = [], []
            for q0 in range(0, self.queries.shape[0], self.query_block):
                q = self.queries[q0 : q0 + self.query_block]
                s = q @ d.T
                if self.metric == "l2":  # minus squared distance, up to the per-query |q|^2
                    s = 2 * s - d_sq
                s = torch.nan_to_num(s, nan=-math.inf)
                top_s, top_i = _merge_topk(self.scores[q0 : q0 + self.query_block], self.index[q0 : q0 + self.query_block], s, ids, self.k)
                parts_s.append(top_s)
                parts_i.append(top_i)
            self.scores, self.index = torch.cat(parts_s), torch.cat(parts_i)
            self.seen += d.shape[0]

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(scores, corpus positions), each (queries, min(k, passages seen)), best first."""
        import torch

        order = torch.sort(self.scores, dim=1, descending=True, stable=True).indices
        scores = torch.gather(self.scores, 1, order)
        index = torch.gather(self.index, 1, order)
        if self.metric == "l2":
            q_sq = (self.queries * self.queries).sum(1, keepdim=True)
            scores = torch.sqrt(torch.clamp(q_sq - scores, min=0))
        return scores.cpu().numpy().astype(np.float32), index.cpu().numpy()


def _default_device():
    import torch

    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def exact_search(
    query_emb, doc_emb, k: int, *, metric: str = "cosine", chunk_size: int = DEFAULT_CHUNK_SIZE, device=None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k passages per query by exhaustive search over embeddings, in chunks of `chunk_size`.

    Returns (scores, indices), both (queries, min(k, passages)), closest first: cosine or dot
    similarities (descending), or l2 distances (ascending). Equal scores rank the lower passage
    index first, whatever the chunk size (see the module docstring on float rounding).
    """
    top = TopK(query_emb, k, metric=metric, chunk_size=chunk_size, device=device)
    top.add(doc_emb)
    return top.result()


# ---------------------------------------------------------------------------------------------
# End to end


def _as_text_map(items, what: str) -> dict[str, str]:
    if isinstance(items, Mapping):
        pairs = items.items()
    else:
        try:
            pairs = [tuple(p) for p in items]
        except TypeError:
            raise DistillError(f"{what}: expected a mapping id -> text or a list of (id, text) pairs") from None
    out: dict[str, str] = {}
    for pair in pairs:
        if len(pair) != 2:
            raise DistillError(f"{what}: expected (id, text) pairs, got {pair!r:.80}")
        key, value = pair
        if isinstance(value, Mapping):  # BEIR corpus entry {"title": ..., "text": ...}
            if "text" not in value:
                raise DistillError(f"{what} {key!r}: no 'text' in {sorted(value)}")
            value = _join_title(value.get("title"), value["text"])
        if not isinstance(value, str):
            raise DistillError(f"{what} {key!r}: text is a {type(value).__name__}, not a string")
        out[str(key)] = value
    return out


def check_qrels(queries: Mapping[str, str], corpus: Mapping[str, str], qrels: Mapping[str, Mapping[str, int]]):
    """(qrels of the evaluable queries, warnings). See the module docstring for the policy."""
    warnings: list[str] = []
    if not qrels:
        raise DistillError("qrels are empty")
    qrels = {str(q): {str(d): int(g) for d, g in judged.items()} for q, judged in qrels.items()}
    unknown_q = [q for q in qrels if q not in queries]
    kept = {q: judged for q, judged in qrels.items() if q in queries}
    if not kept:
        raise DistillError(
            f"none of the {len(qrels)} qrels query ids occurs in the queries (e.g. qrels {next(iter(qrels))!r} vs "
            f"queries {next(iter(queries), None)!r}): wrong file or column?"
        )
    if unknown_q:
        warnings.append(f"{len(unknown_q)} of {len(qrels)} qrels query ids are not among the queries and were dropped (e.g. {unknown_q[0]!r})")
    relevant = {d for judged in kept.values() for d, g in judged.items() if g > 0}
    missing_docs = sorted(d for d in relevant if d not in corpus)
    if relevant and len(missing_docs) == len(relevant):
        raise DistillError(
            f"none of the {len(relevant)} relevant doc ids in the qrels occurs in the corpus (e.g. {missing_docs[0]!r} vs "
            f"corpus {next(iter(corpus), None)!r}): wrong file or column?"
        )
    if missing_docs:
        warnings.append(
            f"{len(missing_docs)} of {len(relevant)} relevant doc ids in the qrels are not in the corpus "
            f"(e.g. {missing_docs[0]!r}): they count as not retrieved"
        )
    no_relevant = [q for q, judged in kept.items() if not any(g > 0 for g in judged.values())]
    if no_relevant:
        warnings.append(f"{len(no_relevant)} queries have no relevant doc (grade > 0) in the qrels and are not evaluated")
    if not relevant:
        raise DistillError("the qrels judge no doc relevant (grade > 0) for any known query: nothing to evaluate")
    return {q: judged for q, judged in kept.items() if q not in no_relevant}, warnings


def evaluate_retrieval(
    model,
    queries,
    corpus,
    qrels: Mapping[str, Mapping[str, int]],
    k: Sequence[int] = DEFAULT_K,
    batch_size: int = 128,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    *,
    metric: str = "cosine",
    progress: bool = False,
    device=None,
    return_run: bool = False,
    backend: str = "torch",
    onnx_file=None,
    quantized: bool = False,
) -> dict:
    """Embed, search exactly, and score: {"MRR@10", "nDCG@10", "Recall@<k>"..., counts, warnings}.

    `model`: model name / folder / preset, `Encoder`, `SentenceTransformer`, or a callable from a
    list of sentences to an (n, d) array. `queries`: query id -> text (or (id, text) pairs);
    `corpus`: doc id -> text or BEIR's {"title", "text"}; `qrels`: query id -> doc id -> grade.
    Only the queries with a relevant doc are embedded and evaluated. `chunk_size`: passages
    scored per matrix product (memory, not results). `metric`: cosine (default), dot or l2.
    `return_run=True` adds "run": query id -> ranked doc ids (top max(k)). Metric definitions,
    tie-breaking and the unknown-id policy: see the module docstring. Values are fractions in
    [0, 1]. Usable as a training callback: load the data once (`load_retrieval_data`), call this
    with the model being trained. `backend="onnx"` (`quantized`, `onnx_file`): embed with the
    folder's onnx/ graph through onnxruntime.
    """
    from tqdm.auto import tqdm

    from .pipeline import embedder

    ks = _check_k(k)
    queries = _as_text_map(queries, "queries")
    corpus = _as_text_map(corpus, "corpus")
    if not corpus:
        raise DistillError("the corpus is empty")
    evaluable, warnings = check_qrels(queries, corpus, qrels)
    qids = [q for q in queries if q in evaluable]
    encoder_mod = sys.modules.get("distill.encoder")
    if device is None and encoder_mod is not None and isinstance(model, encoder_mod.Encoder):
        device = model.device
    embed = embedder(model, batch_size=batch_size, progress=progress, device=device, backend=backend, onnx_file=onnx_file, quantized=quantized)
    q_emb = embed([queries[q] for q in qids])
    kmax = max(max(ks), MRR_CUTOFF, NDCG_CUTOFF)
    top = TopK(q_emb, kmax, metric=metric, chunk_size=chunk_size, device=device)
    doc_ids = list(corpus)
    texts = list(corpus.values())
    blocks = range(0, len(texts), ENCODE_BLOCK)
    for start in tqdm(blocks, desc="corpus blocks", disable=not progress or len(blocks) < 2, leave=False):
        top.add(embed(texts[start : start + ENCODE_BLOCK]))
    _, index = top.result()
    run = {q: [doc_ids[i] for i in row] for q, row in zip(qids, index)}
    results: dict = compute_metrics(run, evaluable, ks)
    results.update(
        {
            "corpus": len(doc_ids),
            "queries_total": len(queries),
            "metric": top.metric,
            "k": ks,
            "warnings": warnings,
        }
    )
    if return_run:
        results["run"] = run
    return results


def format_table(results: Mapping, title: str | None = None) -> str:
    """A markdown table of the metric values (fractions, 4 decimals) and the query count."""
    cols = [c for c in results if c.startswith(("MRR@", "nDCG@", "Recall@"))]
    head = "| " + " | ".join(([""] if title is not None else []) + cols + ["queries"]) + " |"
    sep = "|" + "|".join(["---"] * (len(cols) + 1 + (1 if title is not None else 0))) + "|"
    row = "| " + " | ".join(
        ([title] if title is not None else []) + [f"{results[c]:.4f}" for c in cols] + [str(results.get("queries", ""))]
    ) + " |"
    return f"{head}\n{sep}\n{row}"


def results_json(results: Mapping, **extra) -> str:
    return json.dumps({**extra, **{k: v for k, v in results.items() if k != "run"}}, indent=2)
