"""Retrieval data checked against itself: queries, corpus and qrels given as mappings or pairs,
unknown ids named (see the package docstring). Reading them from files, a BEIR folder or the hub is
distill/data/beir.py's.
"""

from __future__ import annotations

from collections.abc import Mapping

# The readers are distill/data/beir.py's; their names stay importable from here.
from distill.data.beir import (  # noqa: F401
    RetrievalData,
    load_beir,
    load_hub,
    load_qrels,
    load_retrieval_data,
    load_texts,
)
from distill.data.readers import join_title
from distill.errors import DistillError

# ---------------------------------------------------------------------------------------------
# Checking loaded data against itself


def as_text_map(items, what: str) -> dict[str, str]:
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
            value = join_title(value.get("title"), value["text"])
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
