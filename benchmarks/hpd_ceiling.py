"""HPD's ceiling on a retrieval recipe: the teacher's own test scores at its full width, and
through HPD's target (its L2-normalized vectors times the cache's PCA-k components, uncentered, as
`pca_projection` makes the targets HPD's head regresses). A student trained with HPD serves a k-d
vector that at best equals that target, so the second row bounds what HPD can reach.

    python benchmarks/hpd_ceiling.py configs/scifact-minilm-l3.yaml
    python benchmarks/hpd_ceiling.py configs/cmrc2018-m3e-l2.yaml configs/dureader-m3e-l2.yaml

Reads the recipe's teacher cache (built when missing, as `distill train` would) and its
eval.final_retrieval split. A text the cache holds (the passages, here) takes its cached vector,
the teacher's at the same length; the others (the test queries) are encoded by the teacher at
data.teacher_max_length. Adds its rows to BENCHMARKS.md unless --no-bench-md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_md import add_row, command_line, git_commit  # noqa: E402

SECTION = "## HPD's ceiling on retrieval (benchmarks/hpd_ceiling.py)"
INTRO = ("The teacher's test scores x100 at its full width and through HPD's k-d target (its unit vectors times the cache's PCA "
         "components, uncentered): what an HPD student can reach at best. Passages at the recipe's teacher_max_length.")
COLUMNS = ["recipe", "set", "vectors", "nDCG@10", "MRR@10", "Recall@100", "share of full nDCG@10", "date", "device", "command", "commit"]


def ceiling(recipe_path: str) -> list[dict]:
    from distill.config import load_recipe
    from distill.data.cache import pca_projection
    from distill.encoder import Encoder
    from distill.eval.retrieval import evaluate_retrieval
    from distill.eval.retrieval.data import load_retrieval_data
    from distill.training.stages import open_or_build_cache

    recipe = load_recipe(recipe_path)
    final = recipe.eval.final_retrieval
    if final is None:
        raise SystemExit(f"{recipe_path}: no eval.final_retrieval to score")
    k = int(recipe.loss.get("k", 128)) if recipe.loss["name"] == "hpd" else 128  # HPD's k, else the authors' 128
    cache = open_or_build_cache(recipe, progress=True)
    if not cache.has_pca(k):
        raise SystemExit(f"{cache.path}: no PCA-{k} (a run of an HPD recipe adds it)")
    components = np.load(cache.path / cache.manifest["pca"]["file"])["components"]
    rows_of = {s: i for i, s in enumerate(cache.sentences())}
    teacher = Encoder.load(recipe.teacher, role="teacher", max_length=recipe.data.teacher_max_length)

    def full(texts: list[str]) -> np.ndarray:
        out = np.empty((len(texts), cache.embeddings.shape[1]), dtype=np.float32)
        todo = [i for i, t in enumerate(texts) if t not in rows_of]
        for i, t in enumerate(texts):
            if t in rows_of:
                out[i] = cache.embeddings[rows_of[t]]  # float16 in the cache, as training reads it
        if todo:
            out[todo] = teacher.encode([texts[i] for i in todo], progress=False)
        return out

    data = load_retrieval_data(beir=final.beir, split=final.split)
    rows = []
    for label, fn in ((f"teacher, full width ({cache.embeddings.shape[1]})", full), (f"teacher through HPD's target (PCA-{k})", lambda texts: pca_projection(full(texts), components))):
        r = evaluate_retrieval(fn, data.queries, data.corpus, data.qrels, k=(100,))
        rows.append({"recipe": recipe_path, "set": f"{Path(final.beir).name} {final.split}", "vectors": label,
                     "nDCG@10": 100 * float(r["nDCG@10"]), "MRR@10": 100 * float(r["MRR@10"]), "Recall@100": 100 * float(r["Recall@100"])})
    for r in rows:
        r["share of full nDCG@10"] = f"{100 * r['nDCG@10'] / rows[0]['nDCG@10']:.1f}%"
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("recipes", nargs="+")
    ap.add_argument("--no-bench-md", action="store_true")
    ap.add_argument("--bench-md", default=str(REPO / "BENCHMARKS.md"))
    args = ap.parse_args(argv)
    commit = git_commit()
    command = command_line("hpd_ceiling.py", sys.argv[1:] if argv is None else argv)
    stamp = {"date": dt.date.today().isoformat(), "device": f"{os.cpu_count()}-core CPU machine", "command": f"`{command}`", "commit": commit}
    for recipe in args.recipes:
        for r in ceiling(recipe):
            shown = {**r, **{m: f"{r[m]:.2f}" for m in ("nDCG@10", "MRR@10", "Recall@100")}}
            print(" | ".join(str(shown[c]) for c in COLUMNS[:7]), flush=True)
            if not args.no_bench_md:
                add_row(Path(args.bench_md), SECTION, INTRO, COLUMNS, {**shown, **stamp})
    return 0


if __name__ == "__main__":
    sys.exit(main())
