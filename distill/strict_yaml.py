"""The strict YAML reader of recipes and `--set` values: UTF-8, no key given twice, errors that
name the file and the line. distill/config.py turns what it reads into a Recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from distill.errors import DistillError


def yaml11_float(text: str):
    """A string PyYAML left as text because YAML 1.1 wants a dot ("3e-5"): its float, else the text."""
    try:
        return float(text)
    except ValueError:
        return text


def parse_override(text: str) -> tuple[str, Any]:
    """`--set KEY=VALUE`: the key and its value read as YAML (text that is not YAML stays text)."""
    if "=" not in text:
        raise DistillError(f"--set {text!r}: expected key=value, e.g. loss.lam=0.2")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError as exc:
        if raw.lstrip()[:1] in ("[", "{"):  # meant as a list or mapping: kept as text it would fail later, far from here
            problem = " ".join(str(getattr(exc, "problem", None) or exc).split())
            raise DistillError(f"--set {text!r}: the value is not a valid YAML list or mapping ({problem}); quote an item "
                               "that holds ':' or '?' (e.g. data.corpus=['beir:DIR?queries=dev', 'more.txt'])") from None
        value = raw
    return key.strip(), value


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error (plain
    PyYAML keeps the last one silently: `lr` written twice would train at the second value)."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.setdefault(key, key_node.start_mark.line + 1)
                except TypeError:  # an unhashable key: PyYAML reports it itself
                    continue
                if first != key_node.start_mark.line + 1:
                    raise DistillError(f"line {key_node.start_mark.line + 1}: duplicate key {key!r} (first given on line {first})")
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path):
    """A YAML file's data: UTF-8, no duplicate keys; errors name the file and line."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DistillError(f"{path}:{line}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        return yaml.load(text, Loader=UniqueKeyLoader)
    except DistillError as exc:
        raise DistillError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise DistillError(f"{path}: not valid YAML: {exc}") from None
