"""`distill train`: run a recipe (cache -> train, scored by the STS or retrieval evaluator callback -> best student)."""

from __future__ import annotations

import sys


def _cmd_train(args) -> int:
    from distill.config import load_recipe
    from distill.io import write_errors
    from distill.training.trainer import train

    recipe = load_recipe(args.config, args.set)
    # A full or read-only disk: its reason in one line; the checkpoint is written atomically, so
    # --resume continues from the last complete one.
    with write_errors(recipe.output.dir, "output.dir", "; the last complete checkpoint, if any, is kept: continue with --resume"):
        results = train(recipe, resume=args.resume, progress=not args.quiet)
    if results:
        print_report(recipe, results)
    return 0


def print_report(recipe, results: dict) -> None:
    """The end-of-run tables: STS (with the baselines) and retrieval; after a stage 2, stage 1's row
    comes first and the final row is labelled with both stages' losses."""
    from distill.eval.retrieval import format_report
    from distill.eval.sts import DEV_LABELS, by_width, format_rows

    stage1 = results.get("stage1")
    first = f"{recipe.student_name} after ({recipe.loss['name']})"
    after = f"{first} + stage 2 ({recipe.stage2.loss['name']})" if stage1 else first
    if results["best"]:  # STS, Spearman x100 (none when eval.final_tasks is [])
        rows = [("teacher " + recipe.teacher_name, results["baselines"]["teacher"]), (recipe.student_name + " before", results["baselines"]["init"])] if "baselines" in results else []
        if stage1 and stage1.get("best"):
            rows.append((first, stage1["best"]))
        rows.append((after, results["best"]))
        rows += [(f"{after} @{k}", scores) for k, scores in by_width(results["best"])]  # eval.dims
        print(format_rows(rows))
    ret = results.get("retrieval")
    if ret:  # eval.final_retrieval, x100
        base = results.get("retrieval_baselines")
        rows = [("teacher " + recipe.teacher_name, base["teacher"]), (recipe.student_name + " before", base["init"])] if base else []
        if stage1 and stage1.get("retrieval"):
            rows.append((first, stage1["retrieval"]))
        rows.append((after, ret))
        print(f"retrieval: {ret['data']} {ret['split']}, {ret['queries']} queries, {ret['corpus']} passages (x100)")
        print(format_report(rows))
    dev = results.get("dev_task", "STS-B-dev")
    print(f"best {DEV_LABELS.get(dev, dev)} {results['best_dev']:.2f} at step {results['best_step']} of {results['steps']}; "
          f"{results['train_sentences_per_s']:.0f} sentences/s on {results['device']}; run folder {recipe.output.dir}")
    for warning in results.get("warnings", []):
        print(f"WARNING: {warning}")
        print(f"distill: warning: {warning}", file=sys.stderr)


def register(sub) -> None:
    p = sub.add_parser("train", help="distill a student as a recipe says (configs/*.yaml)")
    p.add_argument("config", help="recipe YAML")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe value, e.g. loss.lam=0.2")
    p.add_argument("--resume", action="store_true", help="continue the run in output.dir from its last checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_train)
