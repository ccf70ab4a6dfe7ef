"""Every `distill` command written in README.md and docs/*.md still parses, and every recipe such
a command names, with its `--set` overrides, is accepted by `distill config`'s reader.

A command is taken from the ```bash blocks, continuation lines joined, comments dropped. An
optional part written `[--resume]` or `[--dims 128 | --pca 128]` is checked both left out and
put in (each alternative). Nothing is run: argparse parses the words, load_recipe reads the
recipe."""

from __future__ import annotations

import itertools
import re
import shlex
from pathlib import Path

import pytest

from distill.cli import build_parser
from distill.config import load_recipe

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
_BLOCK = re.compile(r"^ *```bash\n(.*?)^ *```", re.S | re.M)
_OPTIONAL = re.compile(r"(?<=\s)\[([^\[\]]*)\]")  # ` [--resume]`, not `--set k=[1,2]`
_PLACEHOLDERS = {"RECIPE": "configs/smoke.yaml", "N": "64"}


def _lines(text: str) -> list[str]:
    """The shell lines of a page's bash blocks, continuation lines joined, comments dropped."""
    lines = []
    for block in _BLOCK.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"(^|\s)#.*", "", line).strip()
            if line:
                lines.append(line)
    return lines


def _distill_argv(line: str) -> str | None:
    """The arguments after `distill` (or `torchrun ... -m distill.cli`), else None."""
    if line.startswith("distill "):
        return line[len("distill "):]
    match = re.search(r"-m distill\.cli (.*)", line)
    return match.group(1) if match and line.startswith("torchrun ") else None


def _variants(args: str) -> list[list[str]]:
    """Each way of writing the command: every optional part left out or put in (each of its `|`
    alternatives), the placeholders RECIPE and N given a real value."""
    groups = _OPTIONAL.findall(args)
    choices = [[""] + [alt.strip() for alt in group.split(" | ")] for group in groups]
    out = []
    for picked in itertools.product(*choices):
        it = iter(picked)
        text = _OPTIONAL.sub(lambda _m, it=it: next(it), args)
        out.append([_PLACEHOLDERS.get(word, word) for word in shlex.split(text)])
    return out


def _commands() -> list[tuple[str, str]]:
    found = []
    for page in PAGES:
        for line in _lines(page.read_text(encoding="utf-8")):
            args = _distill_argv(line)
            if args is not None:
                found.append((f"{page.relative_to(ROOT)}: distill {args}", args))
    return found


COMMANDS = _commands()


def test_the_pages_have_commands():
    # README's "Use" block and every docs page with a bash block contribute; a broken extraction
    # that found nothing would make the test below vacuous.
    pages = {label.split(":")[0] for label, _ in COMMANDS}
    assert "README.md" in pages and len(pages) >= 8, pages
    assert len(COMMANDS) >= 30


@pytest.mark.parametrize("label,args", COMMANDS, ids=[label for label, _ in COMMANDS])
def test_command_parses(label, args):
    parser = build_parser()
    for argv in _variants(args):
        try:
            parsed = parser.parse_args(argv)
        except SystemExit as exc:  # argparse's way of saying no
            pytest.fail(f"{label}\n  does not parse as {argv} (exit {exc.code})")
        recipe = getattr(parsed, "config", None) or getattr(parsed, "recipe", None)
        if isinstance(recipe, str) and recipe.startswith("configs/"):
            load_recipe(ROOT / recipe, getattr(parsed, "set", None) or [])
