"""`distill config`: validate a recipe and show it with overrides applied."""

from __future__ import annotations


def _cmd_config(args) -> int:
    import yaml

    from distill.config import load_recipe

    recipe = load_recipe(args.config, args.set)
    print(yaml.safe_dump(recipe.to_dict(), sort_keys=False), end="")
    return 0



def register(sub) -> None:
    co = sub.add_parser("config", help="validate a recipe and print it with overrides applied")
    co.add_argument("config")
    co.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a value, e.g. loss.lam=0.2")
    co.set_defaults(func=_cmd_config)
