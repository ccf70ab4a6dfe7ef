"""Does IBKD's information-bottleneck term act? Settings x seeds on the CPU-sized recipe.

Each run is `distill train RECIPE --set ...` (configs/cpu-minilm-l3.yaml by default:
all-MiniLM-L6-v2 -> its first three layers, 16,384 sentences, 1 epoch of batch 64) in
OUT/<setting>-s<seed>, one after the other. A run whose results.json exists is reused; one with a
checkpoint continues with --resume; so an interrupted ablation just starts again. Then a table per
setting: seeds finished, mean +- sample sd of the 7-set avg STS and of STS-B dev, and the mean
share of the IB term in the gradient on the student vector (results.json "ib"; 0 for InfoNCE-only)
is printed and, unless --no-bench-md, appended to BENCHMARKS.md with date, device, command, commit.

    python benchmarks/ib_ablation.py --runs infonce=1,2,3 --runs authors=1,2,3
    python benchmarks/ib_ablation.py --runs nhsic-med-lam1=1 --set data.max_sentences=4096 --out runs/ib/screen
    python benchmarks/ib_ablation.py --list
    python benchmarks/ib_ablation.py --runs mine=1 --define "mine=loss.name=ibkd loss.lam=0.5"

--set applies to every run (a screen: fewer sentences); --define adds a setting (space-separated
key=value overrides of the recipe).
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

DEFAULT_RECIPE = "configs/cpu-minilm-l3.yaml"
SECTION = "## Does the IB term act? (benchmarks/ib_ablation.py)"
INTRO = (
    "CPU-sized recipe (configs/cpu-minilm-l3.yaml unless the command says otherwise). avg = mean Spearman x100 over the 7 STS "
    "test sets of the student selected on STS-B dev; mean +- sample sd over the seeds; IB share = mean over training of "
    "||grad of lam*HSIC wrt s|| / ||grad of InfoNCE wrt s|| (0 for InfoNCE-only). Settings are defined in benchmarks/ib_ablation.py."
)
COLUMNS = ["setting", "overrides", "seeds", "avg (mean ± sd)", "STS-B dev (mean ± sd)", "IB share", "nHSIC", "date", "device", "command", "commit"]

_IBKD = ["loss.name=ibkd"]
# name -> recipe overrides. The recipe itself is InfoNCE-only at tau 0.05 with length-grouped batches.
SETTINGS: dict[str, list[str]] = {
    "infonce": [],
    # the authors' stage-1 IBKD at this scale: lam 0.2, gamma 1.0 fixed, tau 1.0, X = layer 0, random batches
    "authors": _IBKD + ["loss.tau=1.0", "loss.lam=0.2", "loss.gamma=1.0", "loss.bandwidth=fixed", "loss.hsic_layer=0", "data.batching=random"],
    "infonce-tau1-random": ["loss.tau=1.0", "data.batching=random"],
    "infonce-random": ["data.batching=random"],
}
# point-2 settings over lam (tau 0.05 as the recipe): scale-free HSIC with median bandwidth
# (absolute lam), and the IB term held at a fixed share of InfoNCE's gradient (relative lam).
for _lam in ("0.2", "1", "3", "10", "30"):
    SETTINGS[f"nhsic-med-lam{_lam}"] = _IBKD + ["loss.hsic_estimator=normalized", "loss.bandwidth=median", f"loss.lam={_lam}"]
    SETTINGS[f"nhsic-med-lam{_lam}-random"] = SETTINGS[f"nhsic-med-lam{_lam}"] + ["data.batching=random"]
for _share in ("0.03", "0.1", "0.3"):
    SETTINGS[f"rel{_share}-med"] = _IBKD + ["loss.lam_mode=relative", "loss.bandwidth=median", f"loss.lam={_share}"]
    SETTINGS[f"rel{_share}-med-random"] = SETTINGS[f"rel{_share}-med"] + ["data.batching=random"]
    SETTINGS[f"rel{_share}-nhsic-med-random"] = SETTINGS[f"rel{_share}-med-random"] + ["loss.hsic_estimator=normalized"]
    SETTINGS[f"rel{_share}-med-layer2-random"] = SETTINGS[f"rel{_share}-med-random"] + ["loss.hsic_layer=2"]
    SETTINGS[f"rel{_share}-gamma1-random"] = _IBKD + ["loss.lam_mode=relative", "loss.gamma=1.0", f"loss.lam={_share}", "data.batching=random"]


def parse_runs(items: list[str], settings: dict[str, list[str]]) -> list[tuple[str, list[int]]]:
    """["infonce=1,2,3", "authors=1"] -> [("infonce", [1, 2, 3]), ("authors", [1])]; unknown names are errors."""
    from distill.errors import DistillError

    out = []
    for item in items:
        name, _, seeds = item.partition("=")
        if name not in settings:
            raise DistillError(f"--runs {item}: unknown setting {name!r} (see --list, or add one with --define)")
        try:
            out.append((name, [int(s) for s in seeds.split(",") if s.strip()] or [1, 2, 3]))
        except ValueError:
            raise DistillError(f"--runs {item}: seeds must be integers, e.g. {name}=1,2,3") from None
    return out


def run_one(recipe: str, overrides: list[str], run_dir: Path, seed: int, quiet: bool = True) -> dict | None:
    """Train one (setting, seed) unless its results.json exists; returns results.json's dict or None on failure."""
    done = run_dir / "results.json"
    if done.is_file():
        return json.loads(done.read_text())
    cmd = [sys.executable, "-m", "distill.cli", "train", recipe, "--quiet"]
    for o in [*overrides, f"train.seed={seed}", f"output.dir={run_dir}"]:
        cmd += ["--set", o]
    if (run_dir / "checkpoint.pt").is_file():
        cmd.append("--resume")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    print(f"[ib_ablation] {run_dir.name}: {shlex.join(cmd)}", flush=True)
    with open(run_dir.parent / f"{run_dir.name}.log", "a", encoding="utf-8") as log:
        log.write(f"$ {shlex.join(cmd)}\n")
        log.flush()
        rc = subprocess.run(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, check=False).returncode
    if rc != 0 or not done.is_file():
        print(f"[ib_ablation] {run_dir.name} failed (exit {rc}); see {run_dir.parent / (run_dir.name + '.log')}", flush=True)
        return None
    return json.loads(done.read_text())


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.2f} ± {sd:.2f}" if len(values) > 1 else f"{values[0]:.2f} (1 seed)"


def _share(x: float) -> str:
    # the authors' setting sits near 1e-4: a percentage with two decimals would print it as 0.00%
    return f"{x:.2%}" if x == 0 or x >= 1e-3 else f"{x:.1e}"


def summarize(name: str, overrides: list[str], seeds: list[int], results: dict[int, dict]) -> dict:
    """One table row; seeds asked but not finished are named (an incomplete row says so)."""
    done = sorted(results)
    avgs = [results[s]["best"]["Avg"] for s in done if "Avg" in results[s]["best"]]  # a screen may score STS-B dev only
    devs = [results[s]["best_dev"] for s in done]
    shares = [results[s].get("ib", {}).get("ib_share", 0.0) for s in done]
    nh = [results[s]["ib"]["nhsic"] for s in done if "nhsic" in results[s].get("ib", {})]
    missing = [s for s in seeds if s not in results]
    return {
        "setting": name, "overrides": " ".join(overrides) or "(recipe)",
        "seeds": ",".join(map(str, done)) + (f" (not finished: {','.join(map(str, missing))})" if missing else ""),
        "avg (mean ± sd)": _mean_sd(avgs), "STS-B dev (mean ± sd)": _mean_sd(devs),
        "IB share": _share(statistics.mean(shares)) if done else "-", "nHSIC": f"{statistics.mean(nh):.3f}" if nh else "-",
        "_avgs": avgs, "_devs": devs,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default=DEFAULT_RECIPE)
    p.add_argument("--runs", action="append", default=[], metavar="SETTING=SEEDS", help="e.g. infonce=1,2,3 (repeatable)")
    p.add_argument("--define", action="append", default=[], metavar='NAME="k=v k=v"', help="add a setting")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override for every run (e.g. a shorter screen)")
    p.add_argument("--out", default="runs/ib", help="run folders OUT/<setting>-s<seed>")
    p.add_argument("--bench-md", default=str(REPO / "BENCHMARKS.md"))
    p.add_argument("--no-bench-md", action="store_true")
    p.add_argument("--device-label", default=None, help="device column (default: '2-core CPU machine' style from the host)")
    p.add_argument("--list", action="store_true", help="print the known settings and exit")
    p.add_argument("--report-only", action="store_true", help="train nothing: tabulate the finished runs (unfinished seeds are named)")
    args = p.parse_args(argv)

    from distill.errors import DistillError

    settings = dict(SETTINGS)
    try:
        for d in args.define:
            name, _, text = d.partition("=")
            if not name or not text:
                raise DistillError(f'--define {d!r}: expected NAME="key=value key=value"')
            settings[name] = shlex.split(text)
        if args.list:
            for name, o in settings.items():
                print(f"{name:32s} {' '.join(o) or '(recipe)'}")
            return 0
        if not args.runs:
            raise DistillError("--runs: name at least one SETTING=SEEDS (see --list)")
        plan = parse_runs(args.runs, settings)
    except DistillError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    commit = git_commit()  # the code that runs: read before training, not after
    # absolute: the runs execute with the repository root as working directory (the recipe's
    # relative paths, ../shared, are relative to it), while --out is relative to the caller's
    out = Path(args.out).resolve()
    rows = []
    for name, seeds in plan:
        overrides = [*settings[name], *args.set]
        results = {}
        for seed in seeds:
            run_dir = out / f"{name}-s{seed}"
            if args.report_only:
                r = json.loads((run_dir / "results.json").read_text()) if (run_dir / "results.json").is_file() else None
            else:
                r = run_one(args.recipe, overrides, run_dir, seed)
            if r is not None:
                results[seed] = r
        rows.append(summarize(name, overrides, seeds, results))

    device = args.device_label or (f"{os.cpu_count()}-core CPU machine" if not _cuda() else _cuda())
    from bench_md import command_line

    command = command_line("ib_ablation.py", sys.argv[1:] if argv is None else argv)
    stamp = {"date": dt.date.today().isoformat(), "device": device, "command": f"`{command}`", "commit": commit}
    print("\n| " + " | ".join(COLUMNS[:7]) + " |")
    for row in rows:
        row.update(stamp)
        print("| " + " | ".join(str(row[c]) for c in COLUMNS[:7]) + " |")
    if not args.no_bench_md:
        from bench_md import add_row

        for row in rows:
            add_row(Path(args.bench_md), SECTION, INTRO, COLUMNS, {c: row[c] for c in COLUMNS})
    return 0


def _cuda() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # noqa: BLE001 - a label only
        return None


if __name__ == "__main__":
    sys.exit(main())
