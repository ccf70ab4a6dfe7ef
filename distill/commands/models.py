"""`distill models`: list presets, pull models into the cache."""

from __future__ import annotations

import sys

from distill.errors import DistillError


def _cmd_models(args) -> int:
    from distill.presets import find_preset, list_presets
    from distill.resolve import COMPLETE_MARKER, PYPI_MODELS, cache_root, resolve_model

    if args.action == "list":
        print("teachers: " + ", ".join(list_presets("teachers")))
        print("students: " + ", ".join(list_presets("students")))
        for key, spec in PYPI_MODELS.items():
            cached = (cache_root() / "models" / key / COMPLETE_MARKER).is_file()
            print(f"offline copy {key}: {spec.hub_id} from PyPI {spec.packages[0]}"
                  f"{'..' + spec.packages[-1][-3:] if len(spec.packages) > 1 else ''}"
                  f" [{'cached' if cached else 'not pulled'}]")
        return 0
    if not args.name:
        raise DistillError(f"distill models {args.action}: give a model name")
    preset = find_preset(args.name)
    if args.action == "path":  # a question, never a download
        from distill.resolve import local_model

        path = local_model(args.name, offline_source=preset.offline_source if preset else None)
        if path is None:
            print(f"distill: {args.name} is not on this machine; `distill models pull {args.name}` fetches it", file=sys.stderr)
            return 1
        print(path)
        return 0
    if preset is None and (args.name.startswith("{") or args.revision):
        # a teacher mapping ({model: ..., revision: ...}) or a pinned revision: the same spec train and cache read
        import yaml

        from distill.presets import teacher_spec

        value = yaml.safe_load(args.name) if args.name.startswith("{") else args.name
        spec = teacher_spec({"model": value, "revision": args.revision} if isinstance(value, str) else value)
        print(resolve_model(spec.hub_id, offline_source=spec.offline_source, revision=spec.revision))
        return 0
    path = resolve_model(args.name, offline_source=preset.offline_source if preset else None)
    print(path)
    return 0



def register(sub) -> None:
    mo = sub.add_parser("models", help="list presets, or pull a model into the local cache")
    mo.add_argument("action", choices=["list", "pull", "path"])
    mo.add_argument("name", nargs="?", help="a preset, a hub id (owner/name), a PyPI model key, or a teacher mapping "
                                             "in YAML ('{model: owner/name, revision: v1}')")
    mo.add_argument("--revision", help="a hub commit, branch or tag (pull)")
    mo.set_defaults(func=_cmd_models)
