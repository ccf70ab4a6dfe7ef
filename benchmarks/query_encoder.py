"""Keep your index (issue 34): query encoders in the teacher's space against the teacher's own documents, one run.

On one BEIR split (SciFact test by default: report only; the runs selected on dev), for the
teacher and each student run given (`--run NAME=RUN_FOLDER`, RUN/best as the run selected it):

  teacher / teacher          queries and documents by the teacher (the index as it is)
  student / student          queries and documents by the student (a re-embedded index)
  student query / teacher doc   the student encodes only the queries, against the teacher's
                             document vectors (what the index already holds)

with nDCG@10, MRR@10, Recall@100 (x100) and each model's query speed: queries per second on the
set's own queries (every query in queries.jsonl, batch --batch-size, best of --repeats passes
after a warm-up, fp32, this machine's CPU cores), all in the same process. The teacher's document
vectors are computed once and shared by every asymmetric row (eval/retrieval/asymmetric.py).

With --router, each run is also exported as one sentence-transformers folder (`distill export
RUN --asymmetric`) and scored by plain sentence-transformers in a process that never imports
distill (encode_query / encode_document, exact cosine search), to check it gives the student
query / teacher doc figure (target: within 0.01).

`--mix NAME=RUN` adds the dev selection score (results.json "best_dev": student queries against
teacher documents, SciFact dev) and the same test row for runs that differ only in their training
data (documents only against documents plus dev queries, issue 34's "training data for a query
encoder"); the test figure is reported, never selected on.

Output: --json (default benchmarks/query-encoder.json: one report per retrieval set, a run
replaces its own set's and keeps the others) and, unless --bench-md '', a BENCHMARKS.md section
with a table per set, each with date, device, commands and commit.

    python benchmarks/query_encoder.py --teacher m3e-small --beir ../shared/data/retrieval/cmrc2018 --max-length 512 \
        --run skip-l2=runs/cmrc2018-query-l2 --run static-256=runs/cmrc2018-query-static --router

    python benchmarks/query_encoder.py --run skip-l3=runs/scifact-query-l3 --run static-256=runs/scifact-query-static --router
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_md import command_line, git_commit  # noqa: E402

METRICS = ("nDCG@10", "MRR@10", "Recall@100")
SECTION = "## Keep your index: query encoders in the teacher's space (issue 34)"


def _named(values: list[str], flag: str) -> list[tuple[str, Path]]:
    out = []
    for v in values:
        name, eq, path = v.partition("=")
        if not eq or not name or not path:
            sys.exit(f"{flag} {v!r}: expected NAME=RUN_FOLDER")
        run = Path(path)
        if not (run / "best").is_dir():
            sys.exit(f"{flag} {v!r}: {run}/best is not there (a finished `distill train` run folder)")
        out.append((name, run))
    return out


def qps(embed, queries: list[str], batch_size: int, repeats: int) -> float:
    """Queries per second through `embed` (an Embedder), best of `repeats` passes after a warm-up."""
    embed(queries[:batch_size], batch_size=batch_size, role="query")
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        embed(queries, batch_size=batch_size, role="query")
        best = max(best, len(queries) / (time.perf_counter() - start))
    return best


def scores(r: dict) -> dict:
    return {m: round(100.0 * float(r[m]), 2) for m in METRICS}


ROUTER_SCRIPT = """
import json, sys
import numpy as np
from sentence_transformers import SentenceTransformer
folder, texts, out, docs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
t = json.load(open(texts))
m = SentenceTransformer(folder, device="cpu")
np.save(out + "-q.npy", m.encode_query(t["queries"], batch_size=64))
if docs:
    np.save(out + "-d.npy", m.encode_document(t["docs"], batch_size=64))
assert not any(k.startswith("distill") for k in sys.modules), "plain sentence-transformers imported distill"
"""


def start_router(folders: dict[str, Path], data, work: Path, docs_file: Path | None = None) -> dict:
    """Start one plain sentence-transformers process per Router folder (no distill in it; they run
    while this process scores the other rows): encode_query of the set's queries, and for the first
    folder encode_document of the corpus (the document route is the same teacher in every folder)."""
    qids = [q for q in data.queries if q in data.qrels]
    doc_ids = list(data.corpus)
    texts = work / "texts.json"
    texts.write_text(json.dumps({"queries": [data.queries[q] for q in qids], "docs": [data.corpus[d] for d in doc_ids]}))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    procs = {}
    for i, (name, folder) in enumerate(folders.items()):
        prefix = work / f"router-{name}"
        with_docs = i == 0 and docs_file is None
        procs[name] = (subprocess.Popen([sys.executable, "-c", ROUTER_SCRIPT, str(folder), str(texts), str(prefix), "1" if with_docs else "0"],
                                        cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), prefix, folder)
    first = next(iter(folders))
    return {"procs": procs, "qids": qids, "doc_ids": doc_ids,
            "docs": str(docs_file) if docs_file is not None else f"{procs[first][1]}-d.npy"}


def finish_router(started: dict, data) -> dict[str, dict]:
    """Wait for `start_router`'s processes; each folder's scores by exact cosine search of its query
    vectors against the document vectors plain sentence-transformers gave."""
    import numpy as np

    from distill.eval.retrieval import compute_metrics

    qids, doc_ids = started["qids"], started["doc_ids"]
    for proc, _prefix, folder in started["procs"].values():
        _out, err = proc.communicate()
        if proc.returncode != 0:
            sys.exit(f"[query_encoder] plain sentence-transformers failed on {folder}:\n{err[-3000:]}")
    docs = np.load(started["docs"])
    dn = docs / np.maximum(np.linalg.norm(docs, axis=1, keepdims=True), 1e-12)
    out = {}
    for name, (_proc, prefix, _folder) in started["procs"].items():
        q = np.load(f"{prefix}-q.npy")
        qn = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        top = np.argsort(-(qn @ dn.T), axis=1, kind="stable")[:, :100]
        run = {qid: [doc_ids[j] for j in row] for qid, row in zip(qids, top)}
        out[name] = scores(compute_metrics(run, {qid: data.qrels[qid] for qid in qids}, (100,)))
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", action="append", default=[], metavar="NAME=RUN", help="a student run folder (repeatable)")
    ap.add_argument("--mix", action="append", default=[], metavar="NAME=RUN",
                    help="a run of the training-data comparison: its dev selection score and test row (repeatable)")
    ap.add_argument("--teacher", default="all-minilm-l6-v2")
    ap.add_argument("--beir", default=str(REPO.parent / "shared" / "data" / "retrieval" / "scifact"))
    ap.add_argument("--split", default="test")
    ap.add_argument("--max-length", type=int, default=256, help="tokens per query and document (the recipes' eval length)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--router", action="store_true", help="also export each run --asymmetric and score it with plain sentence-transformers")
    ap.add_argument("--router-docs", metavar="NPY",
                    help="with --router: the document vectors a previous run's Router folder gave through plain sentence-transformers "
                         "(WORK/router-NAME-d.npy; the document route is the same teacher in every folder), instead of encoding them again")
    ap.add_argument("--merge", action="store_true",
                    help="add this run's student rows to --json's earlier rows (each row keeps the teacher speed of its own run)")
    ap.add_argument("--work", default="runs/query-encoder", help="export folders and scratch files")
    ap.add_argument("--json", default=str(REPO / "benchmarks" / "query-encoder.json"))
    ap.add_argument("--bench-md", default=str(REPO / "BENCHMARKS.md"), help="the BENCHMARKS.md section ('' to skip)")
    ap.add_argument("--label", default="", help="a note on the machine (e.g. 'shared, 2 cores, other jobs running')")
    args = ap.parse_args(argv)
    runs, mix = _named(args.run, "--run"), _named(args.mix, "--mix")
    if not runs:
        sys.exit("give at least one --run NAME=RUN_FOLDER")
    commit, started = git_commit(), dt.datetime.now(dt.timezone.utc)

    import torch
    from encode_speed import device_name

    from distill.embedding import OWN, Embedder
    from distill.eval.retrieval import evaluate_retrieval, load_beir, load_texts
    from distill.eval.retrieval.asymmetric import doc_embedder, trained_teacher

    data = load_beir(args.beir, args.split)
    all_queries = list(load_texts(Path(args.beir) / "queries.jsonl", "queries").values())
    common = {"k": (100,), "batch_size": args.batch_size, "max_length": args.max_length, "corpus_source": args.beir}
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)

    def timed(what: str, fn, *a, **kw):
        t0 = time.perf_counter()
        out = fn(*a, **kw)
        print(f"[query_encoder] {what}: {time.perf_counter() - t0:.0f} s", flush=True)
        return out

    # speeds first, all under the same conditions (before the Router processes start)
    teacher_embed = doc_embedder(args.teacher, batch_size=args.batch_size, max_length=args.max_length)
    teacher_qps = timed("teacher speed", qps, teacher_embed, all_queries, args.batch_size, args.repeats)
    speeds = {}
    for name, run in runs:
        taught = trained_teacher(run / "best")
        if taught is not None and taught != args.teacher:
            print(f"[query_encoder] warning: {run} was distilled from {taught}, not {args.teacher}", file=sys.stderr)
        student = Embedder(str(run / "best"), full_length=True, max_length=OWN, batch_size=args.batch_size)
        speeds[name] = timed(f"{name} speed", qps, student, all_queries, args.batch_size, args.repeats)
        del student
    router_jobs = None
    if args.router:
        from distill.router import export_asymmetric

        folders = {}
        for name, run in runs:
            folders[name] = work / f"router-{name}"
            if not (folders[name] / "modules.json").is_file():
                export_asymmetric(run, folders[name])
        router_jobs = start_router(folders, data, work, Path(args.router_docs) if args.router_docs else None)
    t = timed("teacher/teacher", evaluate_retrieval, teacher_embed.model, data.queries, data.corpus, data.qrels,
              doc_model=args.teacher, **common)
    teacher_row = {"model": args.teacher, "queries": "teacher", "documents": "teacher", **scores(t), "queries_per_s": round(teacher_qps, 1),
                   "speedup": 1.0}
    rows = [teacher_row]
    for name, run in runs:
        best = run / "best"
        results = json.loads((run / "results.json").read_text()) if (run / "results.json").is_file() else {}
        meta = json.loads((best / "distill_student.json").read_text())
        ss = timed(f"{name}/{name}", evaluate_retrieval, str(best), data.queries, data.corpus, data.qrels,
                   **{**common, "corpus_source": None})
        st = timed(f"{name}/teacher", evaluate_retrieval, str(best), data.queries, data.corpus, data.qrels,
                   doc_model=args.teacher, **common)
        base = {"model": name, "run": run.name, "student": meta.get("student"), "loss": meta.get("loss"),
                "best_step": results.get("best_step"), "dev_selection": results.get("best_dev"),
                "queries_per_s": round(speeds[name], 1), "speedup": round(speeds[name] / teacher_qps, 1),
                "teacher_queries_per_s": round(teacher_qps, 1), "measured": started.isoformat(timespec="minutes")}
        rows.append({**base, "queries": "student", "documents": "student", **scores(ss)})
        rows.append({**base, "queries": "student", "documents": "teacher", **scores(st),
                     "of_teacher": round(100.0 * st["nDCG@10"] / t["nDCG@10"], 1)})
    if router_jobs is not None:
        router = timed("router folders (plain sentence-transformers)", finish_router, router_jobs, data)
        for row in rows:
            if row["queries"] == "student" and row["documents"] == "teacher":
                row["router_nDCG@10"] = router[row["model"]]["nDCG@10"]
    mix_rows = []
    for name, run in mix:
        results = json.loads((run / "results.json").read_text())
        r = timed(f"mix {name}", evaluate_retrieval, str(run / "best"), data.queries, data.corpus, data.qrels,
                  doc_model=args.teacher, **common)
        recipe = json.loads((run / "best" / "distill_student.json").read_text())
        mix_rows.append({"name": name, "run": run.name, "dev_selection": round(results["best_dev"], 2), "best_step": results.get("best_step"),
                         "corpus": (recipe.get("recipe") or {}).get("data", {}).get("corpus"), **scores(r),
                         "of_teacher": round(100.0 * r["nDCG@10"] / t["nDCG@10"], 1)})
    mix_rows = list(mix_rows)
    sets = read_sets(Path(args.json))
    data_name = f"{Path(args.beir).name} {args.split}"
    if args.merge and data_name in sets:
        earlier = sets[data_name]
        names = {name for name, _ in runs}
        earlier_teacher = next(r for r in earlier["rows"] if r["queries"] == "teacher")
        kept = [{"teacher_queries_per_s": earlier_teacher["queries_per_s"], "measured": earlier["date"], **r}
                for r in earlier["rows"] if r["queries"] != "teacher" and r["model"] not in names]
        rows = [rows[0], *kept, *rows[1:]]
        mix_rows = [m for m in earlier.get("mix", []) if m["name"] not in {n for n, _ in mix}] + mix_rows
        commands = [*(earlier.get("commands") or [earlier["command"]]), command_line("query_encoder.py", argv)]
    else:
        commands = [command_line("query_encoder.py", argv)]
    device = device_name(torch.device("cpu"))
    report = {"date": started.date().isoformat(), "device": device, "threads": torch.get_num_threads(), "label": args.label,
              "commands": commands, "commit": commit, "data": data_name, "teacher": args.teacher,
              "queries_timed": len(all_queries), "max_length": args.max_length, "rows": rows, "mix": mix_rows}
    sets[data_name] = report  # the other sets' reports are kept as they were measured
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    from distill.io import write_json_atomic

    write_json_atomic(args.json, {"sets": sets})
    print(json.dumps(report, indent=2))
    if args.bench_md:
        write_section(Path(args.bench_md), sets)
    return 0


def read_sets(path: Path) -> dict[str, dict]:
    """--json's reports by retrieval set ("scifact test": report); a file of one report (before the
    Chinese sets) is read as that set's."""
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    if "sets" in data:
        return data["sets"]
    return {data["data"]: {**data, "commands": data.get("commands") or [data["command"]]}}


def table(report: dict) -> str:
    lines = ["| model | queries | documents | nDCG@10 | % of teacher | MRR@10 | Recall@100 | queries/s | x teacher |"
             + (" plain-ST Router nDCG@10 |" if any("router_nDCG@10" in r for r in report["rows"]) else ""),
             "|---|---|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if any("router_nDCG@10" in r for r in report["rows"]) else "")]
    has_router = any("router_nDCG@10" in r for r in report["rows"])
    for r in report["rows"]:
        of = r.get("of_teacher", 100.0 if r["queries"] == "teacher" else None)
        cells = [r["model"], r["queries"], r["documents"], f"{r['nDCG@10']:.2f}", f"{of:.1f}" if of is not None else "–",
                 f"{r['MRR@10']:.2f}", f"{r['Recall@100']:.2f}", f"{r['queries_per_s']:.0f}", f"{r['speedup']:.1f}"]
        if has_router:
            cells.append(f"{r['router_nDCG@10']:.2f}" if "router_nDCG@10" in r else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_section(path: Path, sets: dict[str, dict]) -> None:
    """Replace (or add) this script's section of BENCHMARKS.md: one table per retrieval set."""
    from distill.io import write_text_atomic

    body = [SECTION, "",
            "Student queries against the teacher's own document vectors (the index kept), beside the teacher and the student "
            "alone, on each set's test split (the runs selected on dev). Each student row's queries/s and x teacher are "
            "against the teacher timed in the same run as it (teacher_queries_per_s in benchmarks/query-encoder.json). "
            "How each run was trained (recipe and overrides) and how it was chosen on dev: docs/keep-your-index.md, \"Measured\"."]
    for report in sets.values():
        body += ["", f"### {report['data']} (teacher {report.get('teacher', report['rows'][0]['model'])})", "",
                 f"{report['date']}, {report['device']} ({report['threads']} threads{', ' + report['label'] if report['label'] else ''}), "
                 f"commit {report['commit']}, {report['max_length']} tokens, exact cosine search; "
                 f"queries/s on the set's {report['queries_timed']} queries (batch 64, fp32, best of 3, same process).", "",
                 *(f"    {c}" for c in report["commands"]), "", table(report)]
        if report["mix"]:
            body += ["", "Training data for the query encoder (the same recipe, only the corpus differs; selected on dev, test reported):", "",
                     "| run | training corpus (the cache's sources) | dev nDCG@10 (selection) | test nDCG@10 | % of teacher |",
                     "|---|---|---:|---:|---:|"]
            for m in report["mix"]:
                corpus = ", ".join(f"`{c.rsplit('/', 1)[-1]}`" for c in m.get("corpus") or []) or m["run"]
                body.append(f"| {m['name']} | {corpus} | {m['dev_selection']:.2f} | {m['nDCG@10']:.2f} | {m['of_teacher']:.1f} |")
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmarks\n"
    if SECTION in text:
        start = text.index(SECTION)
        nxt = text.find("\n## ", start + len(SECTION))
        text = text[:start] + "\n".join(body) + "\n" + (text[nxt:] if nxt != -1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + "\n".join(body) + "\n"
    write_text_atomic(path, text)


if __name__ == "__main__":
    sys.exit(main())
