"""Smaller vectors: one student served at 384 / 256 / 128 / 64 dimensions, four ways, on the CPU recipe.

Rows (7-set avg STS, Spearman x100, of the student each run selects on STS-B dev at full width):
  (a) infonce, truncated   the recipe as it is (InfoNCE), its vector cut to the first k and
                           re-normalized: eval.dims makes the run score every width itself
  (b) infonce + PCA        the same runs exported with `distill export --pca 384` (a Dense layer
                           fitted on the student's vectors of the training sentences), that folder
                           scored at --dims k (PCA coordinates are ordered: the same vectors as
                           --pca k); k = 128 also from a literal `--pca 128` folder, as a check
  (c) matryoshka           the recipe with loss.matryoshka_dims [384, 256, 128, 64], truncated
  (c') matryoshka + PCA head the same with loss.matryoshka_head pca: the prefixes are of a trained
                           384 x 384 layer started at the PCA of the untrained student's vectors
                           (first seed only)
  (c'') ... detached       the same with loss.matryoshka_detach true: the student learns from the
                           full width only, the smaller prefixes train the head and their decoders
  (d) hpd k=128            loss hpd, k 128: the compact head of Zhao et al., at its one width
and, with --static (students/static-256.yaml on the same 16,384 sentences: configs/static-minilm-256.yaml
with the CPU recipe's cache, one seed): the static student truncated and Matryoshka-trained at 256/128/64.

Each run is a `distill train` folder under --out, reused when its results.json exists (an
interrupted benchmark just starts again). Output: --json (one row per method and width: method,
dim, avg, seeds, values, sd), the targets of the smaller-vectors issue (met or not, by how much),
and unless --no-bench-md a BENCHMARKS.md block (date, device, command, commit).

    python benchmarks/dims.py --seeds 1,2,3 --static
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_md import git_commit  # noqa: E402

RECIPE = "configs/cpu-minilm-l3.yaml"
STATIC_RECIPE = "configs/static-minilm-256.yaml"
DIMS = [384, 256, 128, 64]
STATIC_DIMS = [256, 128, 64]
SECTION = "## Smaller vectors: Matryoshka vs truncation vs PCA vs HPD (benchmarks/dims.py)"


def dims_set(dims: list[int]) -> str:
    return "[" + ",".join(map(str, dims)) + "]"


def run(cmd: list[str], log: Path) -> int:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    print(f"[dims] {shlex.join(cmd)}", flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"$ {shlex.join(cmd)}\n")
        f.flush()
        return subprocess.run(cmd, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT, check=False).returncode


def train(recipe: str, overrides: list[str], run_dir: Path) -> dict:
    """One `distill train` unless its results.json exists (a checkpoint without one: --resume)."""
    done = run_dir / "results.json"
    if not done.is_file():
        cmd = [sys.executable, "-m", "distill.cli", "train", recipe, "--quiet"]
        for o in [*overrides, f"output.dir={run_dir}"]:
            cmd += ["--set", o]
        if (run_dir / "checkpoint.pt").is_file():
            cmd.append("--resume")
        rc = run(cmd, run_dir.parent / f"{run_dir.name}.log")
        if rc != 0 or not done.is_file():
            raise SystemExit(f"[dims] {run_dir.name} failed (exit {rc}); see {run_dir.parent / (run_dir.name + '.log')}")
    return json.loads(done.read_text())


def export(run_dir: Path, out: Path, *flags: str) -> Path:
    if not (out / ".distill-export.json").is_file():
        rc = run([sys.executable, "-m", "distill.cli", "export", str(run_dir), "--out", str(out), *flags], out.parent / f"{out.name}.log")
        if rc != 0:
            raise SystemExit(f"[dims] export {out.name} failed (exit {rc})")
    return out


def scored(folder: Path, sts_dir: str, prefix_dims: list[int]) -> dict:
    """evaluate_sts of an exported folder (what it serves: its Dense PCA included), every width from one encoding; cached beside it."""
    cache = folder.parent / f"{folder.name}.scores.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    from distill.eval.sts import evaluate_sts

    scores = evaluate_sts(str(folder), sts_dir=sts_dir, progress=False, prefix_dims=prefix_dims)
    cache.write_text(json.dumps(scores, indent=1))
    return scores


def at(scores: dict, k: int, full: int) -> float:
    return scores["Avg"] if k == full else scores[f"Avg@{k}"]


def row(method: str, dim: int, values: dict[int, float], note: str = "") -> dict:
    v = [values[s] for s in sorted(values)]
    return {"method": method, "dim": dim, "avg": round(statistics.mean(v), 2), "seeds": sorted(values),
            "values": [round(x, 2) for x in v], "sd": round(statistics.stdev(v), 2) if len(v) > 1 else None, **({"note": note} if note else {})}


MRL_PCA = "matryoshka + PCA head"
MRL_DETACH = "matryoshka + PCA head, detached"


def targets(rows: list[dict]) -> list[str]:
    """The issue's targets, for each Matryoshka variant."""
    return [line for method in ("matryoshka", MRL_PCA, MRL_DETACH) for line in _targets(rows, method)]


def _targets(rows: list[dict], method: str) -> list[str]:
    def get(method, dim):
        return next((r["avg"] for r in rows if r["method"] == method and r["dim"] == dim), None)

    m384, m128, m64 = get(method, 384), get(method, 128), get(method, 64)
    p128, a384, h128 = get("infonce + PCA", 128), get("infonce, truncated", 384), get("hpd k=128", 128)
    out = []
    if None not in (m128, p128, m384):
        out.append(f"[{method}] Matryoshka@128 {m128:.2f} >= PCA-128 {p128:.2f}: {'met' if m128 >= p128 else f'not met, short by {p128 - m128:.2f}'}; "
                   f"within 1.5 of Matryoshka@384 {m384:.2f}: {'met' if m384 - m128 <= 1.5 else 'not met'} (gap {m384 - m128:.2f})")
    if None not in (m384, a384):
        out.append(f"[{method}] Matryoshka@384 {m384:.2f} within 0.5 of the plain student@384 {a384:.2f}: "
                   f"{'met' if m384 >= a384 - 0.5 else 'not met'} (difference {m384 - a384:+.2f})")
    if None not in (m64, h128):
        out.append(f"[{method}] Matryoshka@64 {m64:.2f} >= HPD@128 {h128:.2f}: {'met' if m64 >= h128 else f'not met, short by {h128 - m64:.2f}'}")
    return out


def markdown(rows: list[dict], stamp: dict, goals: list[str]) -> str:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    dims = sorted({r["dim"] for r in rows}, reverse=True)
    lines = [f"### {stamp['date']}, {stamp['device']}, commit {stamp['commit']}", "", f"`{stamp['command']}`", "",
             "| method | " + " | ".join(str(d) for d in dims) + " | seeds |", "|---|" + "---:|" * len(dims) + "---|"]
    for m in methods:
        cells, seeds = [], ""
        for d in dims:
            r = next((r for r in rows if r["method"] == m and r["dim"] == d), None)
            cells.append("–" if r is None else (f"{r['avg']:.2f} ± {r['sd']:.2f}" if r["sd"] is not None else f"{r['avg']:.2f}"))
            seeds = seeds or (",".join(map(str, r["seeds"])) if r else "")
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {seeds} |")
    return "\n".join(lines + [""] + [f"- {g}" for g in goals]) + "\n"


def add_block(path: Path, block: str, intro: str) -> None:
    from distill.io import write_text_atomic

    text = path.read_text(encoding="utf-8").rstrip("\n") if path.is_file() else "# Benchmarks"
    if SECTION not in text:
        text += f"\n\n{SECTION}\n\n{intro}\n"
    head, _, tail = text.partition(SECTION)
    nxt = tail.find("\n## ")  # the next section: the block goes at the end of ours
    body, rest = (tail, "") if nxt < 0 else (tail[:nxt], tail[nxt:])
    write_text_atomic(path, head + SECTION + body.rstrip("\n") + "\n\n" + block + rest + ("\n" if rest else ""))


INTRO = ("7-set avg STS (Spearman x100) of the student each run selected on STS-B dev, served at k dimensions: "
         "truncated = its first k, re-normalized (`--dims k`); PCA = `distill export --pca 384` (fitted on the student's "
         "vectors of the 16,384 training sentences) served at `--dims k` (the same vectors as `--pca k`); Matryoshka = "
         "`loss.matryoshka_dims: [384, 256, 128, 64]`, truncated; HPD = `loss: {name: hpd, k: 128}`. CPU recipe "
         "(configs/cpu-minilm-l3.yaml: all-MiniLM-L6-v2 into its first three layers, InfoNCE, 256 steps of 64). "
         "mean ± sample sd over seeds.")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="1,2,3", help="seeds of the truncated / PCA / Matryoshka rows (HPD: the first)")
    p.add_argument("--out", default="runs/dims")
    p.add_argument("--static", action="store_true", help="also the static student's rows (one seed)")
    p.add_argument("--sts-dir", default=str(REPO.parent / "shared" / "data" / "sts"))
    p.add_argument("--json", default=str(REPO / "benchmarks" / "dims.json"))
    p.add_argument("--bench-md", default=str(REPO / "BENCHMARKS.md"))
    p.add_argument("--no-bench-md", action="store_true")
    p.add_argument("--device-label", default=None)
    args = p.parse_args(argv)
    from distill.cli import quiet_third_party

    quiet_third_party()  # the folders it scores in-process load quietly, as the CLI's do
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    out = Path(args.out).resolve()
    commit = git_commit()  # the code that runs, read before anything trains
    every = [f"eval.dims={dims_set(DIMS)}"]

    plain = {s: train(RECIPE, [*every, f"train.seed={s}"], out / f"infonce-s{s}") for s in seeds}
    mrl = {s: train(RECIPE, [*every, f"loss.matryoshka_dims={dims_set(DIMS)}", f"train.seed={s}"], out / f"matryoshka-s{s}") for s in seeds}
    # the head trained jointly with the student: one seed (it lost to the detached head on the screen)
    mrl_pca = {s: train(RECIPE, [*every, f"loss.matryoshka_dims={dims_set(DIMS)}", "loss.matryoshka_head=pca", f"train.seed={s}"],
                        out / f"matryoshka-pca-s{s}") for s in seeds[:1]}
    mrl_detach = {s: train(RECIPE, [*every, f"loss.matryoshka_dims={dims_set(DIMS)}", "loss.matryoshka_head=pca",
                                    "loss.matryoshka_detach=true", f"train.seed={s}"], out / f"matryoshka-pca-detach-s{s}") for s in seeds}
    hpd = train(RECIPE, ["loss={name: hpd, k: 128}", f"train.seed={seeds[0]}"], out / f"hpd-k128-s{seeds[0]}")
    pca = {}
    for s in seeds:
        folder = export(out / f"infonce-s{s}", out / f"infonce-s{s}-pca384", "--pca", "384")
        pca[s] = scored(folder, args.sts_dir, DIMS[1:])
        literal = scored(export(out / f"infonce-s{s}", out / f"infonce-s{s}-pca128", "--pca", "128"), args.sts_dir, [])
        pca[s]["Avg@128 (literal --pca 128)"] = literal["Avg"]

    rows = []
    for k in DIMS:
        rows.append(row("infonce, truncated", k, {s: at(r["best"], k, 384) for s, r in plain.items()}))
    for k in DIMS:
        rows.append(row("infonce + PCA", k, {s: at(v, k, 384) for s, v in pca.items()}))
    for name, runs in (("matryoshka", mrl), (MRL_PCA, mrl_pca), (MRL_DETACH, mrl_detach)):
        for k in DIMS:
            rows.append(row(name, k, {s: at(r["best"], k, 384) for s, r in runs.items()}))
    rows.append(row("hpd k=128", 128, {seeds[0]: hpd["best"]["Avg"]}))
    check = [abs(v["Avg@128"] - v["Avg@128 (literal --pca 128)"]) for v in pca.values()]
    print(f"[dims] PCA-384 at --dims 128 vs a literal --pca 128 export: largest difference {max(check):.4f} avg points")

    if args.static:
        base = [f"data.cache_dir={REPO / 'runs' / 'cache' / 'cpu-minilm-l6-16k'}", "data.max_sentences=16384",
                f"eval.dims={dims_set(STATIC_DIMS)}", f"train.seed={seeds[0]}"]
        st_plain = train(STATIC_RECIPE, base, out / f"static-infonce-s{seeds[0]}")
        st_mrl = train(STATIC_RECIPE, [*base, f"loss.matryoshka_dims={dims_set(STATIC_DIMS)}"], out / f"static-matryoshka-s{seeds[0]}")
        st_detach = train(STATIC_RECIPE, [*base, f"loss.matryoshka_dims={dims_set(STATIC_DIMS)}", "loss.matryoshka_head=pca",
                                           "loss.matryoshka_detach=true"], out / f"static-matryoshka-pca-detach-s{seeds[0]}")
        for name, r in (("static-256, truncated", st_plain), ("static-256 matryoshka", st_mrl),
                        ("static-256 " + MRL_DETACH, st_detach)):
            for k in STATIC_DIMS:
                rows.append(row(name, k, {seeds[0]: at(r["best"], k, 256)}, "16,384 sentences, 64 steps of 256"))

    goals = targets(rows)
    device = args.device_label or f"{os.cpu_count()}-core CPU machine"
    from bench_md import command_line

    stamp = {"date": dt.date.today().isoformat(), "device": device, "commit": commit,
             "command": command_line("dims.py", sys.argv[1:] if argv is None else argv)}
    Path(args.json).write_text(json.dumps({**stamp, "rows": rows, "targets": goals,
                                           "pca_check_max_diff": round(max(check), 4)}, indent=1) + "\n", encoding="utf-8")
    block = markdown(rows, stamp, goals)
    print(block)
    if not args.no_bench_md:
        add_block(Path(args.bench_md), block, INTRO)
    return 0


if __name__ == "__main__":
    sys.exit(main())
