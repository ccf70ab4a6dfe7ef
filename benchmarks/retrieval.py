"""Retrieval: distill all-MiniLM-L6-v2 into three of its layers for BEIR SciFact, fine-tune the
student on the dev claims with teacher-mined hard negatives (with and without IBKD's IB term),
and distill m3e-small into two of its layers for the two Chinese sets; tabulate test scores.
The students are the recipes' (layers 0, 4, 5 and 0, 3 since 2026-12-03; rows name them).

Every step is a `distill` command run in the repository root, one after the other; a step whose
output exists is reused (a run folder with results.json, a rows file, a json), one with a
checkpoint is resumed, so an interrupted benchmark just starts again. Parts (--parts, default all):

    untrained  the recipe's untrained student on SciFact test (distill eval-retrieval, 256 tokens)
    stage1     configs/scifact-minilm-l3.yaml, stage 1 only (the distilled student), with its loss L or
               --stage1-loss L                                                     -> OUT/stage1-L
    mine       distill mine: 4 negatives per dev (claim, abstract) pair           -> OUT/mined-dev.jsonl
    stage2     for loss in (ibkd_supervised, mnrl), seed in --seeds: a copy of that stage 1
               resumed with that stage 2                      -> OUT/s2-<loss>-s<seed>-from-L
    static     configs/scifact-static-256.yaml (the static student, same corpus and cache) -> OUT/static
    compare    distill compare of the six objectives on the same recipe, reduced budget
               (--compare-steps steps, one evaluation at the end)               -> OUT/compare
    zh         configs/cmrc2018-m3e-l2.yaml, configs/dureader-m3e-l2.yaml (--zh-sets) -> OUT/zh-<set>-L

The teacher's SciFact row is the recorded measurement (BENCHMARKS.md: `distill eval-retrieval --model
all-minilm-l6-v2 --beir ../shared/data/retrieval/scifact`, 2026-12-02, commit ff18e23: 64.51 /
60.47 / 92.50, = MTEB's 64.51), not re-run (~30 CPU minutes); --teacher-json FILE reads another
eval-retrieval json instead. The Chinese teachers are scored by their runs (eval.baselines).

Writes OUT/retrieval.json and benchmarks/retrieval.json (rows: name, stage, set, ndcg@10, mrr@10,
recall@100 (test, x100), seeds, sd, dev ndcg@10; the IB decision and the targets), prints the
table and, unless --no-bench-md, adds its new rows to BENCHMARKS.md with date, device, command and
commit. A row of the previous benchmarks/retrieval.json whose run is not under OUT (another
machine's, or a lost folder) is carried over with its own date and commit under "recorded", never
re-stamped; it is in BENCHMARKS.md already. Targets and the IB decisions are taken over all rows.

    python benchmarks/retrieval.py                       # everything (many CPU hours on 2 cores)
    python benchmarks/retrieval.py --parts stage1,mine,stage2 --seeds 1,2,3
    python benchmarks/retrieval.py --parts stage1,mine,stage2 --stage1-loss mse --seeds 1
    python benchmarks/retrieval.py --report-only         # tabulate what is finished
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_md import git_commit  # noqa: E402

RECIPE = "configs/scifact-minilm-l3.yaml"
STATIC_RECIPE = "configs/scifact-static-256.yaml"
ZH_RECIPES = {"cmrc2018": "configs/cmrc2018-m3e-l2.yaml", "dureader-robust": "configs/dureader-m3e-l2.yaml"}
SCIFACT = "../shared/data/retrieval/scifact"
PARTS = ("untrained", "stage1", "mine", "stage2", "static", "compare", "zh")
STAGE2_LOSSES = {"ibkd_supervised": "with the IB term (ibkd_supervised, head none)", "mnrl": "without (mnrl)"}
COMPARE_LOSSES = "mse,cosine,crd,hpd,infonce,ibkd"
# The stage-1 loss of reports before 2026-12-03 (OUT/stage1, OUT/s2-<loss>-s<seed>, OUT/zh-<set>): their carried
# rows have no "stage1_loss" and are that loss's. Runs now name their stage-1 loss in every folder.
EARLIER_LOSS = "infonce"
# The students of reports before 2026-12-03 (the recipes' first-k layer cuts): carried rows without a
# "student" are theirs. A row now names its student (read from its run's recipe.yaml), so runs of
# another student (a recipe changed, or --set student=...) stand beside them, not over them.
EARLIER_STUDENT = {"scifact": "all-minilm-l3-v2", "cmrc2018": "m3e-small-l2", "dureader-robust": "m3e-small-l2"}
# Stage 2 of the reports before 2026-12-03 was one pass over the mined rows, 48 steps: carried
# stage-2 rows without "stage2_steps" are those. A row now names its step count, so a longer stage 2
# (the recipe's two passes) stands beside a shorter one, and the IB term is judged within one budget.
EARLIER_STAGE2_STEPS = 48
# The teacher on SciFact test at its own 256 tokens, as recorded (BENCHMARKS.md, "Retrieval"): x100.
TEACHER_RECORD = {"nDCG@10": 64.51, "MRR@10": 60.47, "Recall@100": 92.50,
                  "source": "recorded: distill eval-retrieval --model all-minilm-l6-v2 --beir ../shared/data/retrieval/scifact "
                            "(2026-12-02, commit ff18e23; = MTEB's published 64.51)"}
# The teacher on SciFact dev (independent sentence-transformers scorer, ../shared/data/retrieval/README.md).
TEACHER_DEV_NDCG = 66.02
SECTION = "## Retrieval: distill and fine-tune on SciFact (benchmarks/retrieval.py)"
INTRO = (
    "Test split scores x100 (SciFact: 300 claims, 5,183 abstracts; cmrc2018 / dureader-robust: their test qrels) of the student "
    "selected on the dev split's nDCG@10; stage 2 rows: mean ± sample sd over seeds (stage 1 shared). Queries and passages at 256 "
    "tokens (SciFact) / 512 (Chinese). The SciFact teacher row is the recorded measurement (BENCHMARKS.md), not re-run."
)
COLUMNS = ["set", "model", "stage", "nDCG@10", "MRR@10", "Recall@100", "best dev nDCG@10", "seeds", "date", "device", "command", "commit"]


class Runner:
    """Runs `distill` subcommands in the repository root, logging each to OUT/<name>.log with its wall time."""

    def __init__(self, out: Path, dry: bool = False):
        self.out, self.dry, self.seconds = out, dry, {}

    def distill(self, name: str, *args: str) -> bool:
        cmd = [sys.executable, "-m", "distill.cli", *args]
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), "HF_HUB_OFFLINE": "1"}
        print(f"[retrieval] {name}: {shlex.join(cmd[1:])}", flush=True)
        if self.dry:
            return False
        self.out.mkdir(parents=True, exist_ok=True)
        start = time.time()
        with open(self.out / f"{name}.log", "a", encoding="utf-8") as log:
            log.write(f"$ {shlex.join(cmd)}\n")
            log.flush()
            rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
        self.seconds[name] = round(time.time() - start)
        if rc != 0:
            print(f"[retrieval] {name} failed (exit {rc}); see {self.out / (name + '.log')}", flush=True)
        return rc == 0

    def train(self, name: str, recipe: str, run_dir: Path, sets: list[str], done: Path | None = None) -> None:
        """`distill train` unless `done` (default RUN/results.json) exists; --resume when a checkpoint does."""
        if (run_dir / "recipe.yaml").is_file() and run_student(run_dir) != recipe_student(recipe):
            raise SystemExit(f"{run_dir}: trained {run_student(run_dir)}, the recipe {recipe} now names {recipe_student(recipe)}: "
                             "give another --out (the report carries the earlier rows from benchmarks/retrieval.json)")
        if (done or run_dir / "results.json").is_file():
            return
        args = ["train", recipe, "--quiet", "--set", f"output.dir={run_dir}"]
        for s in sets:
            args += ["--set", s]
        if (run_dir / "checkpoint.pt").is_file():
            args.append("--resume")
        self.distill(name, *args)


def copy_stage1(stage1: Path, run_dir: Path) -> None:
    """A finished stage-1 folder copied for one stage-2 run (without stage2/: a fresh stage 2)."""
    if run_dir.exists():
        return
    tmp = run_dir.with_name(run_dir.name + ".copying")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(stage1, tmp, ignore=shutil.ignore_patterns("stage2", ".distill.lock"))
    tmp.rename(run_dir)


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _test(scores: dict | None) -> dict:
    """{ndcg@10, mrr@10, recall@100} x100 of a run's results["retrieval"] (already x100)."""
    if not scores:
        return {"ndcg@10": None, "mrr@10": None, "recall@100": None}
    return {"ndcg@10": scores.get("nDCG@10"), "mrr@10": scores.get("MRR@10"), "recall@100": scores.get("Recall@100")}


def _mean_row(name: str, stage: str, runs: dict[int, dict], seeds: list[int], extra: dict) -> dict:
    """One row over seeds: means, sample sds, the per-seed test nDCG@10; unfinished seeds named."""
    done = sorted(runs)
    row = {"name": name, "stage": stage, **extra, "seeds": done, "missing_seeds": [s for s in seeds if s not in runs]}
    for key, metric in (("ndcg@10", "nDCG@10"), ("mrr@10", "MRR@10"), ("recall@100", "Recall@100")):
        values = [runs[s]["retrieval"][metric] for s in done]
        row[key] = statistics.mean(values) if values else None
        row[f"{key}_sd"] = statistics.stdev(values) if len(values) > 1 else None
    row["per_seed_ndcg@10"] = {str(s): runs[s]["retrieval"]["nDCG@10"] for s in done}
    devs = [runs[s]["best_dev"] for s in done]
    row["dev_ndcg@10"] = statistics.mean(devs) if devs else None
    row["dev_ndcg@10_sd"] = statistics.stdev(devs) if len(devs) > 1 else None
    row["stage2_epochs_best_step"] = {str(s): runs[s].get("best_step") for s in done}  # the best step of each seed
    return row


def ib_decision(with_ib: dict, without: dict) -> dict:
    """With beats without only if by more than 2 sd (the larger of the two seed sds) and by at least 0.5 nDCG@10."""
    a, b = with_ib.get("ndcg@10"), without.get("ndcg@10")
    if a is None or b is None or len(with_ib["seeds"]) < 2 or len(without["seeds"]) < 2:
        return {"verdict": "not decided: fewer than 2 finished seeds on a side"}
    sd = max(with_ib["ndcg@10_sd"], without["ndcg@10_sd"])
    diff = a - b
    beats = diff > 2 * sd and diff >= 0.5
    return {"with_minus_without": diff, "sd": sd, "threshold": max(2 * sd, 0.5), "with_beats_without": beats,
            "verdict": (f"with the IB term {'beats' if beats else 'does not beat'} without: {diff:+.2f} nDCG@10 "
                        f"(rule: > 2 sd = {2 * sd:.2f} and >= 0.5)")}


def collect(out: Path, seeds: list[int], teacher_json: str | None) -> list[dict]:
    """Every finished result under OUT as rows."""
    rows = []
    if teacher_json:
        t = _json(Path(teacher_json))
        teacher = {"ndcg@10": 100 * t["nDCG@10"], "mrr@10": 100 * t["MRR@10"], "recall@100": 100 * t["Recall@100"], "source": teacher_json}
    else:
        teacher = {"ndcg@10": TEACHER_RECORD["nDCG@10"], "mrr@10": TEACHER_RECORD["MRR@10"], "recall@100": TEACHER_RECORD["Recall@100"],
                   "source": TEACHER_RECORD["source"]}
    rows.append({"name": "all-MiniLM-L6-v2 (teacher)", "stage": "teacher", "set": "scifact", **teacher, "seeds": [],
                 "dev_ndcg@10": TEACHER_DEV_NDCG})
    for path in sorted(out.glob("untrained-*-test.json")):
        u, student = _json(path), path.name.removeprefix("untrained-").removesuffix("-test.json")
        student = "all-minilm-l3-v2" if student == "l3" else student  # the file's name before students were named
        rows.append({"name": f"{student} untrained", "stage": "untrained", "set": "scifact", "student": student, "ndcg@10": 100 * u["nDCG@10"],
                     "mrr@10": 100 * u["MRR@10"], "recall@100": 100 * u["Recall@100"], "seeds": [], "dev_ndcg@10": None})
    for stage1_loss in _stage1_losses(out):
        s1 = _json(stage1_dir(out, stage1_loss) / "results.json")
        if not s1:  # unfinished (maybe without its recipe.yaml yet); stage 2 copies only a finished stage 1
            continue
        student = run_student(stage1_dir(out, stage1_loss))
        rows.append({"name": f"{student} distilled (stage 1, {stage1_loss})", "stage": "distilled", "set": "scifact", "student": student,
                     **_test(s1.get("retrieval")), "stage1_loss": stage1_loss, "seeds": [42], "dev_ndcg@10": s1["best_dev"],
                     "dev_ndcg@10_untrained": s1.get("init_dev"), "sts_avg": (s1.get("best") or {}).get("Avg"),
                     "best_step": s1.get("best_step"), "steps": s1.get("steps")})
        for loss, label in STAGE2_LOSSES.items():
            runs = {s: r for s in seeds if (r := _json(stage2_dir(out, loss, s, stage1_loss) / "stage2" / "results.json"))}
            if runs:
                origin = f" (from the {stage1_loss} stage 1)"
                steps = _steps(runs.values())
                rows.append(_mean_row(f"{student} + stage 2, mined negatives, {label}{origin}, {steps} steps", "supervised", runs, seeds,
                                      {"set": "scifact", "loss": loss, "stage1_loss": stage1_loss, "student": student, "stage2_steps": steps,
                                       "sts_avg": statistics.mean([r["best"]["Avg"] for r in runs.values() if "Avg" in r.get("best", {})]
                                                                  or [float("nan")])}))
    st = _json(out / "static" / "results.json")
    if st:
        rows.append({"name": "static-256 (static student, infonce)", "stage": "distilled (static)", "set": "scifact", **_test(st.get("retrieval")),
                     "seeds": [42], "dev_ndcg@10": st["best_dev"], "sts_avg": (st.get("best") or {}).get("Avg")})
    cmp_rows = _json(out / "compare" / "compare.json")
    if cmp_rows:
        for r in cmp_rows if isinstance(cmp_rows, list) else cmp_rows.get("rows", []):
            if r["loss"] in ("teacher", "init"):
                continue
            ret = r.get("retrieval") or {}
            rows.append({"name": f"compare: {r['loss']} (reduced budget)", "stage": "distilled (compare)", "set": "scifact",
                         **_test(ret), "seeds": [r["seed"]], "dev_ndcg@10": r.get("best_dev"), "steps": r.get("steps")})
    for name in ZH_RECIPES:
        baselines, distilled = [], []  # a set's teacher and untrained rows first, from whichever run scored them
        for loss in _stage1_losses(out, f"zh-{name}"):
            z = _json(zh_dir(out, name, loss) / "results.json")
            if not z:
                continue
            base = z.get("retrieval_baselines") or {}
            student = run_student(zh_dir(out, name, loss))
            if base and not any(r["stage"] == "teacher" for r in baselines):  # once per set, from its first run that has them
                baselines.append({"name": "m3e-small (teacher)", "stage": "teacher", "set": name, **_test(base["teacher"]), "seeds": []})
            if base and not any(r["stage"] == "untrained" and r["student"] == student for r in baselines):
                baselines.append({"name": f"{student} untrained", "stage": "untrained", "set": name, "student": student,
                                  **_test(base["init"]), "seeds": []})
            distilled.append({"name": f"{student} distilled ({loss}, {z.get('steps')} steps)", "stage": "distilled", "set": name,
                              **_test(z.get("retrieval")), "student": student, "stage1_loss": loss, "seeds": [42], "steps": z.get("steps"),
                              "dev_ndcg@10": z["best_dev"], "dev_ndcg@10_untrained": z.get("init_dev")})
        rows += baselines + distilled

    return rows


def _steps(results) -> str:
    """The training steps of runs that should share a budget: "96", or "48/96" if the seeds differ."""
    return "/".join(str(n) for n in sorted({r.get("steps") for r in results}, key=lambda n: (n is None, n or 0)))


def _stage1_losses(out: Path, base: str = "stage1") -> list[str]:
    """The stage-1 losses with a folder OUT/<base>-<loss>."""
    return sorted(p.name.removeprefix(f"{base}-") for p in out.glob(f"{base}-*") if p.is_dir() and not p.name.endswith(".copying"))


def _recipe(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text(encoding="utf-8"))


def recipe_loss(recipe: str) -> str:
    """The stage-1 loss a recipe file names."""
    return str(_recipe(REPO / recipe)["loss"]["name"])


def recipe_student(recipe: str) -> str:
    return str(_recipe(REPO / recipe)["student"])


def run_student(run_dir: Path) -> str:
    """The student a run folder trained (its recipe.yaml, as the run resolved it)."""
    return str(_recipe(run_dir / "recipe.yaml")["student"])


def loss_override(recipe: str, loss: str) -> list[str]:
    """--set arguments that train `recipe` with `loss` at its defaults (none when it is the recipe's own)."""
    return [] if loss == recipe_loss(recipe) else [f"loss={{name: {loss}}}"]


def zh_dir(out: Path, name: str, loss: str) -> Path:
    return out / f"zh-{name}-{loss}"


def stage1_dir(out: Path, loss: str) -> Path:
    return out / f"stage1-{loss}"


def stage2_dir(out: Path, loss: str, seed: int, stage1_loss: str) -> Path:
    return out / f"s2-{loss}-s{seed}-from-{stage1_loss}"


def merge_recorded(rows: list[dict], previous: dict | None) -> list[dict]:
    """`rows` plus each row of the previous report that `rows` lacks (same set and name): carried
    with the date and commit it was recorded under (its own "recorded", else the old report's)."""
    if not previous:
        return rows
    have = {(r["set"], r["name"]) for r in rows}
    stamp = {"date": previous.get("date"), "commit": previous.get("commit"), "device": previous.get("device")}
    carried = [{**r, "recorded": r.get("recorded") or stamp} for r in previous.get("rows", []) if (r["set"], r["name"]) not in have]
    for r in carried:  # rows of the earlier reports were all of the infonce stage 1 (the recipes' loss then), first-k cuts
        if r["stage"] in ("distilled", "supervised") and "stage1_loss" not in r:
            r["stage1_loss"] = EARLIER_LOSS
        if r["stage"] in ("untrained", "distilled", "supervised") and "student" not in r and r["set"] in EARLIER_STUDENT:
            r["student"] = EARLIER_STUDENT[r["set"]]
        if r["stage"] == "supervised" and "stage2_steps" not in r:
            r["stage2_steps"] = str(EARLIER_STAGE2_STEPS)
    return rows + carried


def summarize(rows: list[dict]) -> dict:
    """The targets (each on the best row that stands for it) and the IB decision of each stage 1's stage-2 pair."""

    def best(stage, set_="scifact", **match):
        # "Best" on the dev split's nDCG@10, the split that selects: ranking the rows on test would pick a
        # recipe on the split it reports. Rows without a dev score (teachers, rows of old reports) come last.
        pick = [r for r in rows if r["stage"] == stage and r["set"] == set_ and r.get("ndcg@10") is not None
                and all(r.get(k) == v for k, v in match.items())]
        return max(pick, key=lambda r: (r.get("dev_ndcg@10") is not None, r.get("dev_ndcg@10") or 0.0, r["ndcg@10"]), default=None)

    targets = {}
    t, d = best("teacher"), best("distilled")
    if d:
        targets["distilled >= 95% of the teacher (scifact test nDCG@10)"] = _target(d, 0.95 * t["ndcg@10"])
    for loss in STAGE2_LOSSES:
        s2 = best("supervised", loss=loss)
        if s2:
            targets[f"stage 2 ({loss}) >= the teacher"] = _target(s2, t["ndcg@10"])
            targets[f"stage 2 ({loss}) >= 70 (stretch)"] = _target(s2, 70.0)
    for name in ZH_RECIPES:
        zt, zd = best("teacher", name), best("distilled", name)
        if zt and zd:
            targets[f"{name}: distilled >= 90% of the teacher (test nDCG@10)"] = _target(zd, 0.9 * zt["ndcg@10"])
    # one decision per stage 1 (its student and loss) and stage-2 budget: "all-minilm-l3-v2 infonce, 48 steps"
    decisions, origins = {}, {}
    for r in rows:
        if r["stage"] == "supervised":
            origins.setdefault(f"{r.get('student')} {r.get('stage1_loss')}, {r.get('stage2_steps')} steps",
                               {"student": r.get("student"), "stage1_loss": r.get("stage1_loss"), "stage2_steps": r.get("stage2_steps")})
    for key, origin in origins.items():
        pair = [best("supervised", loss=loss, **origin) for loss in STAGE2_LOSSES]
        decisions[key] = ib_decision(*pair) if all(pair) else {"verdict": "not run"}
    # the decision on record: the stage 1 whose pair has the most seeds
    pairs = [o for o, d in decisions.items() if "with_beats_without" in d]
    most = max(pairs, key=lambda o: min(len(best("supervised", loss=x, **origins[o])["seeds"]) for x in STAGE2_LOSSES), default=None)
    decision = {**decisions[most], **origins[most]} if most else {"verdict": "not run"}
    return {"ib_decision": decision, "ib_decisions_by_stage1": decisions, "targets": targets}


def _target(row: dict, goal: float) -> dict:
    """A target on the row that stands for it: its test nDCG@10 against the goal, and the row's name."""
    return {"value": round(row["ndcg@10"], 2), "goal": round(goal, 2), "met": row["ndcg@10"] >= goal, "row": row["name"]}


def _fmt(x, sd=None) -> str:
    if x is None:
        return "–"
    return f"{x:.2f} ± {sd:.2f}" if sd is not None else f"{x:.2f}"


def table_rows(report: dict) -> list[dict]:
    out = []
    for r in report["rows"]:
        seeds = r.get("seeds") or []
        out.append({"set": r["set"], "model": r["name"], "stage": r["stage"], "nDCG@10": _fmt(r["ndcg@10"], r.get("ndcg@10_sd")),
                    "MRR@10": _fmt(r["mrr@10"], r.get("mrr@10_sd")), "Recall@100": _fmt(r["recall@100"], r.get("recall@100_sd")),
                    "best dev nDCG@10": _fmt(r.get("dev_ndcg@10"), r.get("dev_ndcg@10_sd")),
                    "seeds": ",".join(map(str, seeds)) + (f" (missing {','.join(map(str, r['missing_seeds']))})" if r.get("missing_seeds") else "")
                    if seeds else ("recorded" if r["stage"] == "teacher" and r["set"] == "scifact" else "–")})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, any of {', '.join(PARTS)} (default: all)")
    p.add_argument("--seeds", default="1,2,3", help="stage-2 seeds (default 1,2,3)")
    p.add_argument("--out", default="runs/retrieval", help="run folders and logs (default runs/retrieval)")
    p.add_argument("--compare-steps", type=int, default=32, help="the compare's training steps per objective (default 32: a reduced budget)")
    p.add_argument("--stage1-loss", help="stage 1's loss for the stage1, stage2 and zh parts (default: each recipe's own); "
                                         "runs in OUT/stage1-LOSS, OUT/s2-*-from-LOSS, OUT/zh-SET-LOSS")
    p.add_argument("--zh-sets", help=f"the zh part's sets, comma-separated (default all: {','.join(ZH_RECIPES)})")
    p.add_argument("--stage2-losses", default=",".join(STAGE2_LOSSES),
                   help=f"the stage-2 losses the stage2 part runs (default {','.join(STAGE2_LOSSES)}: with and without the IB term)")
    p.add_argument("--teacher-json", help="an eval-retrieval --json of the teacher on SciFact test, instead of the recorded numbers")
    p.add_argument("--report-only", action="store_true", help="run nothing: tabulate the finished outputs")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument("--bench-md", default=str(REPO / "BENCHMARKS.md"))
    p.add_argument("--no-bench-md", action="store_true")
    p.add_argument("--json", default=str(REPO / "benchmarks" / "retrieval.json"), help="the report's copy in the repository")
    args = p.parse_args(argv)
    parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    unknown = [x for x in parts if x not in PARTS]
    if unknown:
        p.error(f"--parts: unknown {', '.join(unknown)} (known: {', '.join(PARTS)})")
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    stage2_losses = [x.strip() for x in args.stage2_losses.split(",") if x.strip()]
    if not stage2_losses or any(x not in STAGE2_LOSSES for x in stage2_losses):
        p.error(f"--stage2-losses {args.stage2_losses}: a comma-separated subset of {', '.join(STAGE2_LOSSES)}")
    commit = git_commit()  # the code that runs: read before training, not after
    out = Path(args.out).resolve()  # the commands run in the repository root
    run = Runner(out, dry=args.dry_run)
    rows_file = out / "mined-dev.jsonl"
    if not args.report_only:
        student = recipe_student(RECIPE)
        if "untrained" in parts and not (out / f"untrained-{student}-test.json").is_file():
            run.distill(f"untrained-{student}-test", "eval-retrieval", "--model", student, "--beir", SCIFACT, "--split", "test",
                        "--max-length", "256", "--quiet", "--json", str(out / f"untrained-{student}-test.json"))
        s1_loss = args.stage1_loss or recipe_loss(RECIPE)
        s1_dir = stage1_dir(out, s1_loss)
        if "stage1" in parts or "stage2" in parts:
            run.train(s1_dir.name, RECIPE, s1_dir, ["stage2.rows=[]", *loss_override(RECIPE, s1_loss)])
        if ("mine" in parts or "stage2" in parts) and not rows_file.is_file():
            run.distill("mine", "mine", "--teacher", "all-minilm-l6-v2", "--beir", SCIFACT, "--split", "dev", "--negatives", "4",
                        "--out", str(rows_file), "--embeddings-cache", str(out / "mine-embeddings"))
        if "stage2" in parts and (s1_dir / "results.json").is_file() and rows_file.is_file():
            loss1 = loss_override(RECIPE, s1_loss)
            for seed in seeds:
                for loss in stage2_losses:
                    run_dir = stage2_dir(out, loss, seed, s1_loss)
                    if (run_dir / "stage2" / "results.json").is_file():
                        continue
                    if not run.dry:  # a dry run prints the command and leaves OUT as it was
                        copy_stage1(s1_dir, run_dir)
                    loss_set = "stage2.loss={name: ibkd_supervised, head: none}" if loss == "ibkd_supervised" else "stage2.loss={name: mnrl}"
                    run.train(run_dir.name, RECIPE, run_dir, [*loss1, f"stage2.rows=[{rows_file}]", loss_set, f"stage2.train.seed={seed}"],
                              done=run_dir / "stage2" / "results.json")
        if "static" in parts:
            run.train("static", STATIC_RECIPE, out / "static", [])
        if "zh" in parts:
            for name, recipe in ZH_RECIPES.items():
                if args.zh_sets and name not in args.zh_sets.split(","):
                    continue
                z_loss = args.stage1_loss or recipe_loss(recipe)
                z_dir = zh_dir(out, name, z_loss)
                run.train(z_dir.name, recipe, z_dir, loss_override(recipe, z_loss))
        if "compare" in parts:
            n = str(args.compare_steps)
            cmd = ["compare", RECIPE, "--losses", COMPARE_LOSSES, "--out", str(out / "compare"), "--quiet",
                   "--set", "stage2.rows=[]", "--set", f"train.max_steps={n}", "--set", f"eval.every_steps={n}"]
            if not (out / "compare" / "compare.json").is_file():
                run.distill("compare", *cmd)

    fresh = collect(out, seeds, args.teacher_json)
    rows_all = merge_recorded(fresh, _json(Path(args.json)))
    report = {"rows": rows_all, **summarize(rows_all)}
    from bench_md import command_line

    command = command_line("retrieval.py", sys.argv[1:] if argv is None else argv)
    device = f"{os.cpu_count()}-core CPU machine"
    try:
        import torch

        if torch.cuda.is_available():
            device = torch.cuda.get_device_name(0)
    except Exception:  # noqa: BLE001 - a label only
        pass
    report.update({"date": dt.date.today().isoformat(), "device": device, "command": command, "commit": commit,
                   "compare_steps": args.compare_steps, "stage2_seeds": seeds, "seconds": run.seconds})
    if args.dry_run:
        return 0
    from distill.io import write_json_atomic

    write_json_atomic(out / "retrieval.json", report)
    write_json_atomic(args.json, report)
    rows = table_rows(report)
    print("\n| " + " | ".join(COLUMNS[:8]) + " | recorded |\n|" + "|".join("---" for _ in range(9)) + "|")
    for r, raw in zip(rows, rows_all):
        old = raw.get("recorded")
        print("| " + " | ".join(str(r[c]) for c in COLUMNS[:8]) + f" | {old['date'] + ' ' + old['commit'] if old else 'now'} |")
    for origin, d in report["ib_decisions_by_stage1"].items():
        print(f"\nIB term in stage 2 ({origin}): {d['verdict']}")
    for k, v in report["targets"].items():
        print(f"target {k}: {v['value']} vs {v['goal']}: {'met' if v['met'] else 'NOT met'}" + (f" ({v['row']})" if "row" in v else ""))
    if not args.no_bench_md:
        from bench_md import add_row

        stamp = {"date": report["date"], "device": device, "command": f"`{command}`", "commit": commit}
        for r, raw in zip(rows, rows_all):
            if not raw.get("recorded"):  # a carried row is in BENCHMARKS.md already, under its own date and commit
                add_row(Path(args.bench_md), SECTION, INTRO, COLUMNS, {**r, **stamp})
    return 0


if __name__ == "__main__":
    sys.exit(main())
