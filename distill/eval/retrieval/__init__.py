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

import sys
from collections.abc import Mapping, Sequence

from distill.errors import DistillError
from distill.eval.retrieval.data import (
    RetrievalData,
    as_text_map,
    check_qrels,
    load_beir,
    load_hub,
    load_qrels,
    load_retrieval_data,
    load_texts,
)
from distill.eval.retrieval.metrics import (
    DEFAULT_K,
    MRR_CUTOFF,
    NDCG_CUTOFF,
    SELECTABLE,
    check_k,
    compute_metrics,
    metric_key,
    mrr_at_k,
    ndcg_at_k,
    parse_k,
    recall_at_k,
)
from distill.eval.retrieval.search import DEFAULT_CHUNK_SIZE, TopK, exact_search

__all__ = [
    "DEFAULT_CHUNK_SIZE", "DEFAULT_K", "ENCODE_BLOCK", "RetrievalData", "SELECTABLE", "TopK", "check_qrels", "compute_metrics",
    "REPORT_METRICS", "evaluate_retrieval", "exact_search", "format_report", "format_table", "load_beir", "load_hub", "load_qrels",
    "load_retrieval_data", "load_texts", "metric_key", "mrr_at_k", "ndcg_at_k", "parse_k", "recall_at_k",
]

# Corpus passages embedded per block before scoring. Fixed (not tied to chunk_size), so that the
# embeddings, and hence the results, do not depend on chunk_size.
ENCODE_BLOCK = 131_072


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
    max_length: int | None = None,
    dims: int | None = None,
    corpus_embeddings=None,
    keep_corpus_embeddings: bool = False,
    doc_model=None,
    corpus_source=None,
) -> dict:
    """Embed, search exactly, and score: {"MRR@10", "nDCG@10", "Recall@<k>"..., counts, warnings}.

    `model`: model name / folder / preset, `Encoder`, `SentenceTransformer`, or a callable from a
    list of sentences to an (n, d) array. `queries`: query id -> text (or (id, text) pairs);
    `corpus`: doc id -> text or BEIR's {"title", "text"}; `qrels`: query id -> doc id -> grade.
    Only the queries with a relevant doc are embedded and evaluated. `chunk_size`: passages
    scored per matrix product (memory, not results). `metric`: cosine (default), dot or l2.
    `return_run=True` adds "run": query id -> ranked doc ids (top max(k)), and "run_scores": their
    similarities (cosine / dot; l2: distances). Metric definitions,
    tie-breaking and the unknown-id policy: see the module docstring. Values are fractions in
    [0, 1]. Usable as a training callback: load the data once (`load_retrieval_data`), call this
    with the model being trained. `backend="onnx"` (`quantized`, `onnx_file`): embed with the
    folder's onnx/ graph through onnxruntime. `max_length`: tokens per query and passage, default
    the model's own declared length (`distill.embedding.own_max_length`: a sentence-transformers
    folder's max_seq_length, else the position limit), not a preset's training length; a given
    length is checked against the model's limit. A callable model encodes however it does.
    `results["max_length"]`: the length used (None for a callable). `dims`: serve the model at
    that many dimensions (`distill.embedding.truncate`); `results["dims"]`: the width searched at
    (None: the full vector). `corpus_embeddings`: the corpus's vectors by this very model, row i
    for the i-th passage (the corpus is not embedded again; a caller that knows the model has not
    changed, `RetrievalSet`); `keep_corpus_embeddings=True` returns them as
    results["corpus_embeddings"] (the whole corpus in memory: for small corpora). `doc_model`:
    embed the passages with this model instead (anything `model` may be; a teacher preset's name
    is loaded as a teacher), the queries with `model`: asymmetric retrieval
    (eval/retrieval/asymmetric.py; the two widths must agree, and the document vectors are computed
    once per model, length and corpus file, `corpus_source`, and reused);
    `results["doc_model"]`, `results["doc_max_length"]` say which and at what length.
    """
    import numpy as np
    from tqdm.auto import tqdm

    from distill.embedding import OWN, embedder

    ks = check_k(k)
    queries = as_text_map(queries, "queries")
    corpus = as_text_map(corpus, "corpus")
    if not corpus:
        raise DistillError("the corpus is empty")
    evaluable, warnings = check_qrels(queries, corpus, qrels)
    qids = [q for q in queries if q in evaluable]
    student_mod = sys.modules.get("distill.student")
    if device is None and student_mod is not None and isinstance(model, student_mod.EmbeddingModel):
        device = model.device
    embed = embedder(model, batch_size=batch_size, progress=progress, device=device, backend=backend, onnx_file=onnx_file,
                     quantized=quantized, max_length=OWN if max_length is None else max_length, dims=dims)
    doc_embed = None
    if doc_model is not None:
        from distill.eval.retrieval.asymmetric import check_widths, doc_embedder, doc_vectors

        doc_embed = doc_embedder(doc_model, batch_size=batch_size, max_length=max_length, progress=progress, device=device)
        check_widths(embed.dims or embed.width, doc_embed.dims or doc_embed.width, embed.source, doc_embed.source)
    # each side with its role's prompt and route (a model without roles encodes both alike)
    q_emb = embed([queries[q] for q in qids], role="query")
    if doc_embed is not None:
        if corpus_embeddings is None:
            corpus_embeddings = doc_vectors(doc_embed, corpus, corpus_source, batch_size)
        check_widths(q_emb.shape[1], corpus_embeddings.shape[1], embed.source, doc_embed.source)
    kmax = max(max(ks), MRR_CUTOFF, NDCG_CUTOFF)
    top = TopK(q_emb, kmax, metric=metric, chunk_size=chunk_size, device=device)
    doc_ids = list(corpus)
    texts = list(corpus.values())
    blocks = range(0, len(texts), ENCODE_BLOCK)
    if corpus_embeddings is not None and len(corpus_embeddings) != len(texts):
        raise DistillError(f"corpus_embeddings: {len(corpus_embeddings)} rows for a corpus of {len(texts)} passages")
    kept = []
    for start in tqdm(blocks, desc="corpus blocks", disable=not progress or len(blocks) < 2 or corpus_embeddings is not None, leave=False):
        block = corpus_embeddings[start : start + ENCODE_BLOCK] if corpus_embeddings is not None else embed(texts[start : start + ENCODE_BLOCK], role="document")
        top.add(block)
        if keep_corpus_embeddings:
            kept.append(np.asarray(block))
    top_scores, index = top.result()
    run = {q: [doc_ids[i] for i in row] for q, row in zip(qids, index)}
    results: dict = compute_metrics(run, evaluable, ks)
    results.update(
        {
            "corpus": len(doc_ids),
            "queries_total": len(queries),
            "metric": top.metric,
            "max_length": embed.max_length,
            "dims": embed.dims,
            **({"doc_model": str(doc_embed.source), "doc_max_length": doc_embed.max_length} if doc_embed is not None else {}),
            "k": ks,
            "warnings": warnings,
        }
    )
    if keep_corpus_embeddings:
        results["corpus_embeddings"] = np.concatenate(kept)
    if return_run:
        results["run"] = run
        results["run_scores"] = {q: [float(x) for x in row] for q, row in zip(qids, top_scores)}
    return results


# What a training run reports of a retrieval split (eval.final_retrieval), x100 like its STS scores.
REPORT_METRICS = ("nDCG@10", "MRR@10", "Recall@100")


def format_report(rows: Sequence[tuple[str, Mapping]]) -> str:
    """A markdown table of REPORT_METRICS, one row per (model name, scores x100), 2 decimals as the
    STS tables; a metric missing from a row shows as "–"."""
    head = "| | " + " | ".join(REPORT_METRICS) + " |"
    sep = "|---|" + "---:|" * len(REPORT_METRICS)
    lines = [head, sep]
    for name, scores in rows:
        lines.append(f"| {name} | " + " | ".join(f"{scores[m]:.2f}" if scores.get(m) is not None else "–" for m in REPORT_METRICS) + " |")
    return "\n".join(lines)


def format_table(results: Mapping, title: str | None = None) -> str:
    """A markdown table of the metric values (fractions, 4 decimals) and the query count."""
    cols = [c for c in results if c.startswith(("MRR@", "nDCG@", "Recall@"))]
    head = "| " + " | ".join(([""] if title is not None else []) + cols + ["queries"]) + " |"
    sep = "|" + "|".join(["---"] * (len(cols) + 1 + (1 if title is not None else 0))) + "|"
    row = "| " + " | ".join(
        ([title] if title is not None else []) + [f"{results[c]:.4f}" for c in cols] + [str(results.get("queries", ""))]
    ) + " |"
    return f"{head}\n{sep}\n{row}"
