"""`distill train`: run a recipe (cache -> train, scored by the STS or retrieval evaluator callback -> best student)."""

from __future__ import annotations


def _cmd_train(args) -> int:
    from distill.config import load_recipe
    from distill.io import write_errors
    from distill.training.run import train

    recipe = load_recipe(args.config, args.set)
    # A full or read-only disk: its reason in one line; the checkpoint is written atomically, so
    # --resume continues from the last complete one.
    with write_errors(recipe.output.dir, "output.dir", "; the last complete checkpoint, if any, is kept: continue with --resume"):
        results = train(recipe, resume=args.resume, progress=not args.quiet)
    if results:
        print_report(recipe, results)
    return 0


def print_report(recipe, results: dict) -> None:
    """The end-of-run tables (distill/report.py): STS with the baselines, retrieval; after a stage 2,
    stage 1's row comes first and the final row is labelled with both stages' losses. Each warning
    is printed once."""
    from distill.report import RunLabels, train_printout

    print(train_printout(results, RunLabels.of_recipe(recipe, stage2=bool(results.get("stage1"))), recipe.output.dir))


def register(sub) -> None:
    p = sub.add_parser("train", help="distill a student as a recipe says (configs/*.yaml)")
    p.add_argument("config", help="recipe YAML")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe value, e.g. loss.lam=0.2")
    p.add_argument("--resume", action="store_true", help="continue the run in output.dir from its last checkpoint")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_train)
