"""Static students against model2vec, tokenlearn, the 3-layer transformer student and the teacher, in one run.

Same teacher (all-MiniLM-L6-v2), same offline corpus, same scoring: 7-set average STS (Spearman
x100, `evaluate_sts`, the model's own length limit) and sentences/s on the same 2,000 STS
sentences (drawn with a fixed seed, as benchmarks/cpu_serving.py does), on this machine's cores.
Rows:
  teacher all-MiniLM-L6-v2
  the 3-layer transformer student, InfoNCE, the CPU recipe (configs/cpu-minilm-l3.yaml)
  model2vec's distill at PCA 256 (a model folder made by --model2vec-python, a Python that has
      `model2vec[distill]`: a benchmark peer, never a dependency of distill)
  tokenlearn, when --tokenlearn-model names a folder it made (README/BENCHMARKS say whether it ran)
  ours, init: distill, no training (the static student's "before")
  ours, trained with each of --losses on the full corpus (configs/static-minilm-256.yaml), one
      seed each; then --seeds for the best two by STS-B dev (selection never looks at test sets)

Each trained row is a `distill train` run folder under --out (reused when its results.json exists),
scored on the 7 sets by the training run itself (its results.json). Speed: best of --repeats passes
after a warm-up, through distill's own encoder for every row (PyTorch, fp32, sorted batches) and,
for the static rows, through plain sentence-transformers too. Output: --json (one row per model:
name, avg, the 7 sets, sentences_per_s, params, seeds) and, unless --no-bench-md, a BENCHMARKS.md
section with date, device, command, commit.

    python benchmarks/static_students.py --model2vec-python /path/to/venv/bin/python
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_md import command_line, git_commit  # noqa: E402
from cpu_serving import speed, sts_sentences  # noqa: E402
from encode_speed import device_name  # noqa: E402

TEST = ("STS12", "STS13", "STS14", "STS15", "STS16", "STS-B", "SICK-R")
STATIC_RECIPE = "configs/static-minilm-256.yaml"
RECIPE_LOSS = "infonce"  # configs/static-minilm-256.yaml's loss
L3_RECIPE = "configs/cpu-minilm-l3.yaml"
M2V_SCRIPT = """
import sys, time
from model2vec.distill import distill
start = time.perf_counter()
m = distill(model_name=sys.argv[1], pca_dims=256)
m.save_pretrained(sys.argv[2])
print(f"model2vec distill took {time.perf_counter() - start:.1f} s", file=sys.stderr)
"""


def train_run(recipe: str, out: Path, overrides: list[str]) -> dict:
    """A `distill train` run in `out` (reused when finished, resumed when interrupted); its results.json."""
    if (out / "results.json").is_file():
        return json.loads((out / "results.json").read_text())
    cmd = [sys.executable, "-m", "distill.cli", "train", recipe, "--quiet", "--set", f"output.dir={out}"]
    for o in overrides:
        cmd += ["--set", o]
    if (out / "checkpoint.pt").is_file():
        cmd.append("--resume")
    out.parent.mkdir(parents=True, exist_ok=True)
    print(f"[static_students] {' '.join(cmd[2:])}", flush=True)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    with open(out.parent / f"{out.name}.log", "a", encoding="utf-8") as log:
        rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        sys.exit(f"[static_students] {out.name} failed (exit {rc}); see {out.parent / (out.name + '.log')}")
    return json.loads((out / "results.json").read_text())


def model2vec_folder(python: str, teacher_folder: Path, out: Path) -> Path:
    if not (out / "model.safetensors").is_file():
        print(f"[static_students] model2vec distill with {python}", flush=True)
        subprocess.run([python, "-c", M2V_SCRIPT, str(teacher_folder), str(out)], check=True)
    return out


def score(model, sts: dict) -> dict:
    from distill.eval.sts import evaluate_sts

    return evaluate_sts(model, tasks=list(TEST), data=sts, progress=False)


def st_speed(folder: Path, sentences: list[str], batch_size: int, repeats: int) -> float:
    """Plain sentence-transformers' encode of the same sentences (what a user of the export runs);
    a model2vec folder through sentence-transformers' StaticEmbedding."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import StaticEmbedding

    if (Path(folder) / "modules.json").is_file():
        m = SentenceTransformer(str(folder), device="cpu")
    else:
        m = SentenceTransformer(modules=[StaticEmbedding.load(str(folder))], device="cpu")
    m.encode(sentences[:batch_size], batch_size=batch_size)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        m.encode(sentences, batch_size=batch_size)
        best = max(best, len(sentences) / (time.perf_counter() - start))
    return best


def row(name: str, scores: dict, sent_s: float, params: int, seeds: list, **extra) -> dict:
    return {"name": name, "avg": round(scores["Avg"], 2), **{t: round(scores[t], 2) for t in TEST},
            "sentences_per_s": round(sent_s, 1), "params": int(params), "seeds": seeds, **extra}


def seeds_row(name: str, runs: dict[int, dict], sent_s: float, params: int, **extra) -> dict:
    """Mean over seeds; avg_sd the sample sd of the 7-set average."""
    seeds = sorted(runs)
    mean = {t: statistics.mean(runs[s]["best"][t] for s in seeds) for t in (*TEST, "Avg")}
    sd = statistics.stdev([runs[s]["best"]["Avg"] for s in seeds]) if len(seeds) > 1 else None
    return row(name, mean, sent_s, params, seeds, avg_sd=None if sd is None else round(sd, 2),
               best_dev=round(statistics.mean(runs[s]["best_dev"] for s in seeds), 2), **extra)


def vocabulary(static, cache_dir: Path, sts: dict, max_length: int) -> dict:
    """Which table rows training can move: the vocabulary ids that occur in the training corpus
    (its first `max_length` tokens, as training sees it), and how much of the STS sets' text is
    made of ids that never occur (those keep their distilled init). Decides whether pruning the
    table to the corpus' tokens is worth it: its size on disk against what it would lose."""
    import numpy as np

    from distill.data.cache import TeacherCache
    from distill.data.tokens import tokenize_corpus

    tok = static.tokenizer
    sentences = TeacherCache.open(cache_dir).sentences()  # read by row, never loaded whole
    seen = np.zeros(static.embedding.weight.shape[0], dtype=bool)
    # the run's own tokenization, stored in its cache folder (tokens/<fingerprint>/): read back, not redone
    ids = tokenize_corpus(tok, sentences, max_length, cache_dir, progress=False).ids
    for start in range(0, len(ids), 1 << 24):  # a memory map, read a block at a time
        seen[ids[start : start + (1 << 24)]] = True
    sts_ids = [i for p in sts.values() for s in (*p.sentences1, *p.sentences2) for i in tok(s)["input_ids"]]
    unseen = [i for i in sts_ids if not seen[i]]
    rows, dim = static.embedding.weight.shape
    return {"vocabulary": int(rows), "in_training_corpus": int(seen.sum()), "corpus_sentences": len(sentences),
            "sts_token_occurrences": len(sts_ids), "sts_occurrences_of_unseen": len(unseen),
            "sts_unseen_share_pct": round(100 * len(unseen) / max(1, len(sts_ids)), 2), "sts_distinct_unseen": len(set(unseen)),
            "table_mb_fp32": round(rows * dim * 4 / 1e6, 1), "pruned_table_mb_fp32": round(int(seen.sum()) * dim * 4 / 1e6, 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="runs/static-bench", help="run folders and model copies")
    ap.add_argument("--sts-dir", default=str(REPO.parent / "shared" / "data" / "sts"))
    ap.add_argument("--losses", default="mse,cosine,infonce,ibkd,crd")
    ap.add_argument("--seeds", default="42,43,44", help="seeds of the best two losses (the first is the one-seed run)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every static run")
    ap.add_argument("--model2vec-python", help="a Python with model2vec[distill] (a separate venv): adds model2vec's row")
    ap.add_argument("--tokenlearn-model", help="a static model folder tokenlearn made (adds its row)")
    ap.add_argument("--tokenlearn-label", default="tokenlearn", help="its row's name (say what it was trained on)")
    ap.add_argument("--n", type=int, default=2000, help="sentences for the speed rows")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default="benchmarks/static-students.json")
    ap.add_argument("--bench-md", default=str(REPO / "BENCHMARKS.md"))
    ap.add_argument("--no-bench-md", action="store_true")
    args = ap.parse_args(argv)

    import torch

    from distill.cli import quiet_third_party
    from distill.encoder import Encoder
    from distill.presets import load_teacher
    from distill.resolve import resolve_model
    from distill.saved_student import load_saved_student
    from distill.static_student import StaticStudent

    quiet_third_party()  # our lines only, as the CLI prints
    torch.set_num_threads(os.cpu_count() or 1)
    out = Path(args.out)
    sentences, sts = sts_sentences(args.sts_dir, args.n, seed=0)
    losses = [x for x in args.losses.split(",") if x]
    seeds = [int(s) for s in args.seeds.split(",") if s]
    rows: list[dict] = []

    def measure(model) -> float:
        return speed(model, sentences, args.batch_size, args.repeats)

    teacher_spec = load_teacher("all-minilm-l6-v2")
    teacher_folder = resolve_model(teacher_spec.hub_id, offline_source=teacher_spec.offline_source)
    teacher = Encoder.load(str(teacher_folder), device="cpu")
    rows.append(row("teacher all-MiniLM-L6-v2", score(teacher, sts), measure(teacher), teacher.num_parameters(), []))
    del teacher

    l3 = train_run(L3_RECIPE, out / "l3-infonce", [f"eval.sts_dir={args.sts_dir}"])
    l3_model, _, _ = load_saved_student(out / "l3-infonce" / "best", device="cpu")
    rows.append(row("3-layer transformer student (InfoNCE, CPU recipe)", l3["best"], measure(l3_model), l3_model.num_parameters(), [42]))
    del l3_model

    if args.model2vec_python:
        folder = model2vec_folder(args.model2vec_python, teacher_folder, out / "model2vec-pca256")
        m2v = StaticStudent.load_folder(folder, device="cpu")
        rows.append(row("model2vec distill, PCA 256", score(m2v, sts), measure(m2v), m2v.num_parameters(), [],
                        st_sentences_per_s=round(st_speed(folder, sentences, args.batch_size, args.repeats), 1)))
    if args.tokenlearn_model:
        tl = StaticStudent.load_folder(args.tokenlearn_model, device="cpu")
        rows.append(row(args.tokenlearn_label, score(tl, sts), measure(tl), tl.num_parameters(), []))

    common = [f"eval.sts_dir={args.sts_dir}", *args.set]

    def loss_set(name: str) -> str:
        # the recipe's own loss keeps its settings (tau 0.05); another gets its own defaults, as `distill compare` does
        return f"loss.name={name}" if name == RECIPE_LOSS else f"loss={{name: {name}}}"

    runs: dict[str, dict[int, dict]] = {}
    for loss in losses:
        runs[loss] = {seeds[0]: train_run(STATIC_RECIPE, out / f"static-{loss}-s{seeds[0]}", [*common, loss_set(loss), f"train.seed={seeds[0]}"])}
    first = runs[losses[0]][seeds[0]]
    best_two = sorted(losses, key=lambda n: -runs[n][seeds[0]]["best_dev"])[:2]  # by STS-B dev: selection, not test
    for loss in best_two:
        for seed in seeds[1:]:
            runs[loss][seed] = train_run(STATIC_RECIPE, out / f"static-{loss}-s{seed}", [*common, loss_set(loss), f"train.seed={seed}"])
    static, _, _ = load_saved_student(out / f"static-{best_two[0]}-s{seeds[0]}" / "best", device="cpu")
    static_speed = measure(static)
    import yaml

    from distill.presets import load_student

    recipe = yaml.safe_load((REPO / STATIC_RECIPE).read_text())
    data = recipe["data"]
    vocab = vocabulary(static, REPO / data["cache_dir"], sts, max_length=data["max_length"])
    # the untrained row: the preset's init (the distilled table the runs started from, read from the cache)
    untrained = StaticStudent.from_spec(load_student(recipe["student"]), recipe["teacher"], cache_dir=REPO / data["cache_dir"], device="cpu")
    init = {"scores": score(untrained, sts), "params": untrained.num_parameters()}
    rows.append(row("ours static-256, init: distill, no training", init["scores"], static_speed, init["params"], []))
    for loss in losses:
        rows.append(seeds_row(f"ours static-256 + {loss}", runs[loss], static_speed, first["params"],
                              train_sentences_per_s=round(statistics.mean(r["train_sentences_per_s"] for r in runs[loss].values()), 1)))

    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"rows": rows, "best_two": best_two, "vocabulary": vocab}, indent=2) + "\n")
    print(f"[static_students] vocabulary: {json.dumps(vocab)}")
    print("\n| model | avg | sentences/s | params | seeds |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {r['avg']:.2f}{' ± ' + format(r['avg_sd'], '.2f') if r.get('avg_sd') is not None else ''} | "
              f"{r['sentences_per_s']:,.0f} | {r['params'] / 1e6:.1f}M | {','.join(map(str, r['seeds'])) or '-'} |")
    if not args.no_bench_md:
        write_section(Path(args.bench_md), rows, best_two, vocab, argv if argv is not None else sys.argv[1:])
    return 0


def write_section(path: Path, rows: list[dict], best_two: list[str], vocab: dict, argv: list[str]) -> None:
    import torch

    from distill.io import write_text_atomic

    lines = [
        "", f"## Static students (benchmarks/static_students.py), {dt.date.today().isoformat()}", "",
        f"- device: {device_name(torch.device('cpu'))}",
        f"- command: `{command_line('static_students.py', argv)}`",
        f"- commit: {git_commit()}",
        f"- best two by STS-B dev (seeded): {', '.join(best_two)}", "",
        "| model | " + " | ".join(TEST) + " | Avg | sentences/s | params | seeds |",
        "|---|" + "---:|" * (len(TEST) + 4),
    ]
    for r in rows:
        avg = f"{r['avg']:.2f}" + (f" ± {r['avg_sd']:.2f}" if r.get("avg_sd") is not None else "")
        lines.append(f"| {r['name']} | " + " | ".join(f"{r[t]:.2f}" for t in TEST) + f" | {avg} | {r['sentences_per_s']:,.0f} | "
                     f"{r['params'] / 1e6:.1f}M | {','.join(map(str, r['seeds'])) or '-'} |")
    lines += ["", f"Vocabulary: {vocab['in_training_corpus']:,} of the {vocab['vocabulary']:,} table rows occur in the "
              f"{vocab['corpus_sentences']:,} training sentences; the other rows keep their distilled init. They make "
              f"{vocab['sts_unseen_share_pct']:.2f}% of the STS sets' token occurrences ({vocab['sts_distinct_unseen']:,} distinct ids). "
              f"Table {vocab['table_mb_fp32']} MB in fp32, {vocab['pruned_table_mb_fp32']} MB pruned to the corpus' tokens; "
              "a lookup's cost does not depend on the table's size."]
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmarks\n"
    write_text_atomic(path, text.rstrip("\n") + "\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
