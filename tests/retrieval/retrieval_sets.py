"""A small retrieval set (six queries, eight passages, graded qrels with the model's own order
against it), its hand-computed metrics for all-MiniLM-L6-v2, and writers of it in each file
format: TSV + TREC qrels, JSONL (gzipped corpus), a BEIR folder. Shared by the retrieval tests."""

from __future__ import annotations

import gzip
import json
from math import log2

QUERIES = {
    "q1": "How tall is Mount Everest?",
    "q2": "What do pandas eat?",
    "q3": "How do I bake sourdough bread?",
    "q4": "When did the Berlin Wall fall?",
    "q6": "What is the capital of France?",
    "q7": "Who wrote Hamlet?",
}
CORPUS = {
    "d1": "Mount Everest is 8,849 metres tall, the highest mountain on Earth.",
    "d2": "Climbers reach the summit of Everest in the Himalayas mostly in May.",
    "d3": "Giant pandas eat almost nothing but bamboo, up to 38 kg a day.",
    "d4": "Pandas live in the mountain forests of central China.",
    "d5": "Sourdough bread is baked from a starter of wild yeast and flour.",
    "d6": "The Berlin Wall fell on 9 November 1989.",
    "d7": "The stock market closed higher on Friday.",
    "d8": "A guitar has six strings.",
}
# Graded on purpose against the model's obvious order, so the values are not all 1.
QRELS = {
    "q1": {"d2": 2, "d1": 1},  # the model ranks d1 (grade 1) first, d2 (grade 2) second
    "q2": {"d4": 1},  # the model ranks d3 first, d4 second
    "q3": {"d5": 1, "d99": 1},  # d99 is not in the corpus: never retrieved
    "q4": {"d6": 1},
    "q5": {"d1": 1},  # not among the queries: dropped with a warning
    "q6": {"d7": 0},  # nothing relevant: not evaluated
}
EXPECTED_TOP2 = {"q1": ["d1", "d2"], "q2": ["d3", "d4"], "q3": ["d5"], "q4": ["d6"]}
NDCG = {
    "q1": (1 / log2(2) + 2 / log2(3)) / (2 / log2(2) + 1 / log2(3)),
    "q2": (1 / log2(3)) / 1,
    "q3": 1 / (1 + 1 / log2(3)),
    "q4": 1.0,
}
EXPECTED = {
    "MRR@10": (1 + 1 / 2 + 1 + 1) / 4,
    "Recall@1": (1 / 2 + 0 + 1 / 2 + 1) / 4,
    "Recall@2": (1 + 1 + 1 / 2 + 1) / 4,
    "Recall@10": (1 + 1 + 1 / 2 + 1) / 4,
    "nDCG@10": sum(NDCG.values()) / 4,
    "queries": 4,
}


def write_tsv_set(folder):
    (folder / "queries.tsv").write_text("".join(f"{q}\t{t}\n" for q, t in QUERIES.items()), encoding="utf-8")
    (folder / "corpus.tsv").write_text("id\ttext\n" + "".join(f"{d}\t{t}\n" for d, t in CORPUS.items()), encoding="utf-8")
    # TREC format: query id, iteration, doc id, relevance
    (folder / "qrels.trec").write_text("".join(f"{q} 0 {d} {g}\n" for q, j in QRELS.items() for d, g in j.items()))
    return folder / "queries.tsv", folder / "corpus.tsv", folder / "qrels.trec"


def write_jsonl_set(folder):
    with gzip.open(folder / "corpus.jsonl.gz", "wt", encoding="utf-8") as f:
        for d, t in CORPUS.items():
            f.write(json.dumps({"id": d, "contents": t}) + "\n")
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t}) + "\n" for q, t in QUERIES.items()))
    (folder / "qrels.tsv").write_text("".join(f"{q}\t{d}\t{g}\n" for q, j in QRELS.items() for d, g in j.items()))
    return folder / "queries.jsonl", folder / "corpus.jsonl.gz", folder / "qrels.tsv"


def write_beir(folder):
    folder.mkdir()
    (folder / "qrels").mkdir()
    (folder / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": d, "title": "", "text": t, "metadata": {}}) + "\n" for d, t in CORPUS.items())
    )
    (folder / "queries.jsonl").write_text("".join(json.dumps({"_id": q, "text": t, "metadata": {}}) + "\n" for q, t in QUERIES.items()))
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{g}\n" for q, j in QRELS.items() for d, g in j.items())
    )
    return folder
