"""`distill compare`: the same recipe under several losses (and seeds), collected into one table."""

from __future__ import annotations


def _seeds(text: str | None) -> list[int] | None:
    from distill.errors import DistillError

    if not text:
        return None
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise DistillError(f"--seeds {text!r}: expected integers separated by commas, e.g. 42,43,44") from None


def _cmd_compare(args) -> int:
    from distill.compare import (
        compare,
        default_losses,
        format_compare_table,
        parse_loss_overrides,
        parse_losses,
    )
    from distill.config import load_recipe
    from distill.errors import DistillError

    if args.seed_losses and not args.seeds:
        raise DistillError("--seed-losses needs --seeds (the seeds those losses run over)")
    losses = parse_losses(default_losses() if args.losses is None else args.losses)  # checked before any model is loaded
    overrides = parse_loss_overrides(args.loss_set)
    recipe = load_recipe(args.config, [*args.set, *([f"student={args.student}"] if args.student else [])])
    out = args.out or f"{recipe.output.dir}-compare"
    rows = compare(recipe, losses, out, overrides, _seeds(args.seeds), progress=not args.quiet,
                   seed_losses=parse_losses(args.seed_losses) if args.seed_losses else None)
    print(f"wrote {out}/compare.md, compare.csv, compare.json, compare.png\n")
    print(format_compare_table(rows))
    return 0


def register(sub) -> None:
    p = sub.add_parser("compare", help="run one recipe under several losses and tabulate them (STS, speed, dev curves)")
    p.add_argument("config", help="recipe YAML (teacher, student, data, schedule; its loss params are kept for that loss)")
    # the default comes from the loss registry when the command runs: `--help` must not import torch
    p.add_argument("--losses", help="comma-separated losses, e.g. mse,ibkd (default: every distillation loss of distill.losses.LOSSES, "
                                    "in its order; not IBKD's stage 2)")
    p.add_argument("--student", help="the student preset or folder to compare the losses on (e.g. static-256), instead of the recipe's")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe value, e.g. train.max_steps=200")
    p.add_argument("--loss-set", action="append", default=[], metavar="LOSS.KEY=VALUE",
                   help="override one loss's parameter, e.g. hpd.k=64 (others keep the recipe's or the defaults)")
    p.add_argument("--out", help="folder of the runs and tables (default: the recipe's output.dir + '-compare')")
    p.add_argument("--seeds", help="comma-separated seeds, e.g. 42,43,44: runs go to OUT/<loss>-seed<N> (default: the recipe's seed)")
    p.add_argument("--seed-losses", help="only these losses run over --seeds; the others once with the recipe's seed")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_compare)
