"""The one renderer of score tables: `distill train`'s printout, a run's results.md, an exported
model's card (distill/export.py) and `distill compare`'s table, CSV and plot (distill/compare.py
runs the trainings, this module shows them).

A run's report is built from its results.json (distill/training/loop.py writes it): the STS
table (Spearman x100; the teacher and the untrained student when `eval.baselines` scored them,
stage 1's row after a stage 2, a row per `eval.dims` width) and the retrieval table of
`eval.final_retrieval` (x100, with its baselines). The callers differ only in their labels and in
where the warnings go; each warning is shown once.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from distill.io import write_bytes_atomic, write_json_atomic, write_text_atomic
from distill.tasks import DEV_LABELS, DEV_TASK, DEV_TASKS, TEST_TASKS, ZH_TEST_TASK

# -------------------------------------------------------------------------------- one run


@dataclasses.dataclass(frozen=True)
class RunLabels:
    """The row names of one run's tables: the teacher's and the untrained student's (shown when the
    run scored them), stage 1's (shown after a stage 2) and the reported student's."""

    after: str
    teacher: str = "teacher"
    before: str = "student before"
    stage1: str | None = None

    @classmethod
    def of_recipe(cls, recipe, stage2: bool = False) -> RunLabels:
        """`distill train`'s names: "teacher T", "S before", "S after (loss)" (+ " + stage 2 (loss)")."""
        first = f"{recipe.student_name} after ({recipe.loss['name']})"
        after = f"{first} + stage 2 ({recipe.stage2.loss['name']})" if stage2 else first
        return cls(after=after, teacher=f"teacher {recipe.teacher_name}", before=f"{recipe.student_name} before", stage1=first if stage2 else None)


def sts_rows(results: Mapping, labels: RunLabels, best: Mapping | None = None, widths: bool = True) -> list[tuple[str, Mapping]]:
    """(label, scores) rows of the STS table; `best` replaces the reported student's scores (the
    model card's served width), `widths` adds a row per eval.dims width. The teacher's, the
    untrained student's and the reported student's rows carry the sentences/s each encoded the
    final tasks' sentences at in this run, when it was measured."""
    from distill.eval.sts import SPEED_COLUMN, by_width

    best = results.get("best") if best is None else best
    if not best:
        return []
    speeds = results.get("sts_sentences_per_s") or {}

    def timed(scores: Mapping, role: str) -> Mapping:
        return {**scores, SPEED_COLUMN: speeds[role]} if speeds.get(role) else scores

    base = results.get("baselines")
    rows = [(labels.teacher, timed(base["teacher"], "teacher")), (labels.before, timed(base["init"], "init"))] if base else []
    stage1 = results.get("stage1") or {}
    if labels.stage1 and stage1.get("best"):
        rows.append((labels.stage1, stage1["best"]))
    rows.append((labels.after, timed(best, "best")))
    if widths:
        rows += [(f"{labels.after} @{k}", scores) for k, scores in by_width(best)]
    return rows


def retrieval_rows(results: Mapping, labels: RunLabels) -> list[tuple[str, Mapping]]:
    """(label, metrics x100) rows of the eval.final_retrieval table; [] when the run has none."""
    ret = results.get("retrieval")
    if not ret:
        return []
    base = results.get("retrieval_baselines")
    rows = [(labels.teacher, base["teacher"]), (labels.before, base["init"])] if base else []
    stage1 = results.get("stage1") or {}
    if labels.stage1 and stage1.get("retrieval"):
        rows.append((labels.stage1, stage1["retrieval"]))
    return rows + [(labels.after, ret)]


def retrieval_heading(ret: Mapping) -> str:
    """What the retrieval table scores: the set, its split, its size."""
    return f"Retrieval: {ret.get('data')} {ret['split']} ({ret['queries']} queries, {ret['corpus']} passages), x100"


def run_tables(results: Mapping, labels: RunLabels) -> list[str]:
    """The STS table and the retrieval table (with its heading) of one run, those it has."""
    from distill.eval.retrieval import format_report
    from distill.eval.sts import format_rows

    parts = []
    rows = sts_rows(results, labels)
    if rows:
        parts.append(format_rows(rows))
    rows = retrieval_rows(results, labels)
    if rows:
        parts.append(f"{retrieval_heading(results['retrieval'])}\n\n{format_report(rows)}")
    return parts


def best_line(results: Mapping, run_dir) -> str:
    """Where the selection landed, how fast it trained, where the run is."""
    dev = results.get("dev_task", "STS-B-dev")
    return (f"best {DEV_LABELS.get(dev, dev)} {results['best_dev']:.2f} at step {results['best_step']} of {results['steps']}; "
            f"{results['train_sentences_per_s']:.0f} sentences/s on {results['device']}; run folder {run_dir}")


def train_printout(results: Mapping, labels: RunLabels, run_dir) -> str:
    """What `distill train` prints at the end: the tables, the best line, each warning once."""
    return "\n".join([*run_tables(results, labels), best_line(results, run_dir),
                      *(f"WARNING: {w}" for w in results.get("warnings", []))])


def results_markdown(results: Mapping, labels: RunLabels) -> str:
    """A run's results.md: the tables, then each warning."""
    return "\n\n".join(run_tables(results, labels)) + "\n" + "".join(f"\n**Warning:** {w}\n" for w in results.get("warnings", []))


# -------------------------------------------------------------------------------- compare

# Test sets a compare table can show: the English seven (averaged) and Chinese STS-B (never averaged).
REPORT_TASKS = (*TEST_TASKS, ZH_TEST_TASK)
CSV_COLUMNS = ["loss", "student", "teacher", "seed", *TEST_TASKS, "Avg", ZH_TEST_TASK, "dev_task", "params", "dim", "train_sentences_per_s", "best_dev", "steps", "best_step", "sentences", "device", "run_dir", "reused"]
# Added to the CSV when a row has eval.final_retrieval scores (x100), after the STS columns' run details.
RETRIEVAL_CSV_COLUMNS = ["retrieval_split", "nDCG@10", "MRR@10", "Recall@100"]


def fmt(x, digits: int = 2) -> str:
    """A score with `digits` decimals; "–" for a missing one."""
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _fmt_params(n) -> str:
    if n is None:
        return "–"
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.1f}k"


def _mean_sd(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, sd


def _cell(values: list) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "–"
    if len(values) == 1:
        return fmt(values[0])
    mean, sd = _mean_sd(values)
    return f"{mean:.2f} ± {sd:.2f}"


def format_compare_table(rows: Sequence[dict]) -> str:
    """The paper's table: teacher, student init, then each loss (runs of one loss over several seeds
    in one row: mean ± sample s.d., plus each seed's Avg). Rows of several students are labelled
    with the student's name."""
    from distill.eval.retrieval import REPORT_METRICS

    tasks = [t for t in TEST_TASKS if any(t in r["tasks"] for r in rows)]
    zh = [ZH_TEST_TASK] if any(ZH_TEST_TASK in r["tasks"] for r in rows) else []
    has_avg = any(r["avg"] is not None for r in rows)  # no English test set, no (English) average
    split = next((r["retrieval_split"] for r in rows if r.get("retrieval")), None)  # eval.final_retrieval's columns
    ret_cols = list(REPORT_METRICS) if split else []
    dev = next((r["dev_task"] for r in rows if r.get("dev_task")), DEV_TASK)
    students = list(dict.fromkeys(r["student"] for r in rows if r["loss"] != "teacher"))
    several = len(students) > 1
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        key = ("teacher", r.get("model") or r["teacher"]) if r["loss"] == "teacher" else (r["student"], r["loss"])
        groups.setdefault(key, []).append(r)
    multi_seed = any(len(g) > 1 for k, g in groups.items() if k[0] != "teacher")
    per_seed_name = "Avg" if has_avg else ZH_TEST_TASK if zh else f"{split} nDCG@10"

    head = (["model", *tasks] + (["Avg"] if has_avg else []) + zh + [f"{split} {m}" for m in ret_cols]
            + ["params", "dim", "train sentences/s", f"best {dev_label(dev)}"] + ([f"{per_seed_name} per seed"] if multi_seed else []))
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * (len(head) - 1)) + "|"]
    for (who, loss), group in groups.items():
        if who == "teacher":
            label = f"teacher ({loss})"
        elif loss == "init":
            label = f"{who} (init)" if several else f"student init ({who})"
        else:
            label = (f"{who} + {loss}" if several else loss) + (f" ({len(group)} seeds)" if len(group) > 1 else "")
        speeds = [r["train_sentences_per_s"] for r in group if r["train_sentences_per_s"] is not None]
        cells = [label, *[_cell([r["tasks"].get(t) for r in group]) for t in tasks],
                 *([_cell([r["avg"] for r in group])] if has_avg else []), *[_cell([r["tasks"].get(t) for r in group]) for t in zh],
                 *[_cell([(r.get("retrieval") or {}).get(m) for r in group]) for m in ret_cols],
                 _fmt_params(group[0]["params"]), str(group[0]["dim"] if group[0]["dim"] is not None else "–"),
                 f"{sum(speeds) / len(speeds):,.0f}" if speeds else "–", _cell([r["best_dev"] for r in group])]
        if multi_seed:
            per_seed = ((lambda r: r["avg"]) if has_avg else (lambda r: r["tasks"].get(ZH_TEST_TASK)) if zh
                        else (lambda r: (r.get("retrieval") or {}).get("nDCG@10")))
            cells.append(", ".join(f"{r['seed']}: {fmt(per_seed(r))}" for r in group) if len(group) > 1 else "")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def dev_label(dev: str) -> str:
    """"STS-B dev" for STS-B-dev; "dev nDCG@10" style for a retrieval selection key."""
    if dev.startswith("retrieval/"):
        return "dev " + dev.split("/", 1)[1]
    return DEV_LABELS.get(dev, dev)


def write_csv(rows: Sequence[dict], path: str | Path, extra: Sequence[str] = ()) -> None:
    """One row per run (teacher and init included); RETRIEVAL_CSV_COLUMNS too when a row has
    eval.final_retrieval scores."""
    buf = io.StringIO()
    has_retrieval = any(r.get("retrieval") for r in rows)
    cols = [*CSV_COLUMNS, *(RETRIEVAL_CSV_COLUMNS if has_retrieval else []), *extra]
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        flat = {**{k: v for k, v in r.items() if k not in ("tasks", "retrieval")}, **r["tasks"], **(r.get("retrieval") or {}), "Avg": r["avg"]}
        w.writerow({c: ("" if flat.get(c) is None else flat.get(c)) for c in cols})
    write_text_atomic(path, buf.getvalue())


def plot_dev_curves(curves: Sequence[tuple], path: str | Path, baselines: Sequence[dict] = (), title: str = "",
                    dev: str | None = None) -> None:
    """The selection metric against optimizer steps, one labelled line per (run, evals) of a loss
    and seed (Agg): `dev` (a run's dev_task, e.g. retrieval/nDCG@10), by default the STS selection
    set the evals hold (Spearman x100). Baselines: a dashed line at their `best_dev`."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(8, 5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    dev = dev or next((d for _, evals in curves for d in DEV_TASKS if any(d in e for e in evals)), DEV_TASK)
    seeds_of: dict[str, int] = {}
    for run, _ in curves:
        seeds_of[run.loss] = seeds_of.get(run.loss, 0) + 1
    for run, evals in curves:
        key = dev if any(dev in e for e in evals) else next((k for e in evals for k in e if k not in ("step", "epoch")), None)
        pts = [(e["step"], e[key]) for e in evals if key in e]
        if not pts:
            continue
        label = run.loss + (f" seed {run.seed}" if seeds_of[run.loss] > 1 else "")
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, linewidth=1.4, label=label)
    for b in baselines:
        if b.get("best_dev") is not None:
            ax.axhline(b["best_dev"], linestyle="--", linewidth=1, color="grey" if b["loss"] == "init" else "black",
                       label=f"{b['loss']} ({b.get('model')})")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"{dev} (dev split) x100" if dev.startswith("retrieval/") else f"{dev} Spearman x100")
    ax.set_title(title or f"{dev} during training")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    write_bytes_atomic(path, buf.getvalue())


def write_outputs(rows: Sequence[dict], out_dir: str | Path, curves: Sequence[tuple] = (), title: str = "",
                  dev: str | None = None) -> str:
    """OUT/compare.md, .csv, .json and (with curves) .png; returns the markdown table. `dev`: the
    selection key plotted (default: the rows' dev_task)."""
    out_dir = Path(out_dir)
    table = format_compare_table(rows)
    seeds_note = ""
    if any(sum(1 for r in rows if (r["student"], r["loss"]) == (x["student"], x["loss"])) > 1 for x in rows if x["loss"] not in ("teacher", "init")):
        seeds_note = "Rows over several seeds: mean ± sample standard deviation; \"Avg per seed\" lists each seed's Avg.\n"
    selected = dev or next((r["dev_task"] for r in rows if r.get("dev_task")), DEV_TASK)
    avg_note = "Avg over the English test sets shown" if any(r["avg"] is not None for r in rows) else "Chinese STS-B is never averaged"
    split = next((r["retrieval_split"] for r in rows if r.get("retrieval")), None)
    if split is None:  # STS only: the note as it always was
        note = f"Spearman x100 of the student selected on {selected}; {avg_note}. "
    else:
        sts = any(r["tasks"] for r in rows)
        note = (("STS: Spearman x100; " if sts else "") + f"retrieval: nDCG@10, MRR@10 and Recall@100 x100 on the {split} split; "
                f"of the student selected on {selected}" + (f"; {avg_note}. " if sts else ". "))
    md = f"# {title or 'compare'}\n\n{note}Runs in {out_dir}.\n{seeds_note}\n{table}\n"
    write_text_atomic(out_dir / "compare.md", md)
    write_csv(rows, out_dir / "compare.csv")
    write_json_atomic(out_dir / "compare.json", list(rows))
    if curves:
        plot_dev_curves(curves, out_dir / "compare.png", [r for r in rows if r["loss"] in ("teacher", "init")], title, dev=dev)
    return table
