"""The names of the STS evaluation sets, and which of them select and which report.

Data-free and dependency-free, so that recipes (config.py, recipe_checks.py) can check task
names without importing the evaluation code (scipy, the readers); eval/sts_data.py reads the
sets, eval/sts.py scores them.
"""

from __future__ import annotations

from collections.abc import Sequence

from distill.errors import DistillError

TEST_TASKS = ("STS12", "STS13", "STS14", "STS15", "STS16", "STS-B", "SICK-R")  # the English average
DEV_TASK = "STS-B-dev"
# Chinese STS-B: a test set and a selection set of their own, outside the English seven.
ZH_TEST_TASK = "STS-B-zh"
ZH_DEV_TASK = "STS-B-zh-dev"
ZH_TASKS = (ZH_TEST_TASK, ZH_DEV_TASK)
DEV_TASKS = (DEV_TASK, ZH_DEV_TASK)  # selection sets: never in an average, never reported as a test
ALL_TASKS = TEST_TASKS + (DEV_TASK,) + ZH_TASKS
DEV_LABELS = {DEV_TASK: "STS-B dev", ZH_DEV_TASK: "STS-B-zh dev"}


def normalize_task(name: str) -> str:
    """Accept 'sts12', 'STS-B', 'stsb', 'sickr', 'stsb-dev'... and return the canonical name."""
    key = name.lower().replace("_", "").replace("-", "")
    aliases = {t.lower().replace("-", ""): t for t in ALL_TASKS}
    aliases.update({"stsbenchmark": "STS-B", "sick": "SICK-R", "sickrelatedness": "SICK-R", "stsbdev": DEV_TASK, "dev": DEV_TASK,
                    "stsbzhtest": ZH_TEST_TASK, "stsbzhvalid": ZH_DEV_TASK, "stsbzhvalidation": ZH_DEV_TASK})
    if key not in aliases:
        raise DistillError(f"unknown STS task {name!r} (known: {', '.join(ALL_TASKS)})")
    return aliases[key]


def resolve_tasks(tasks: Sequence[str] | None) -> list[str]:
    """Canonical task names, in order, without repeats; None, [] or ["all"] = the English seven.
    Comma-separated names inside one item are split."""
    if not tasks or list(tasks) == ["all"]:
        return list(TEST_TASKS)
    out = []
    for t in tasks:
        for part in str(t).split(","):
            if part.strip():
                name = normalize_task(part.strip())
                if name not in out:
                    out.append(name)
    return out


def recipe_tasks(tasks: Sequence[str]) -> list[str]:
    """A recipe's eval.tasks / eval.final_tasks: [] is no STS set at all (allowed where retrieval
    stands in, see recipe_checks), anything else as `resolve_tasks` reads it."""
    return resolve_tasks(tasks) if tasks else []


def selection_task(tasks) -> str:
    """The task a run selects its best student on: the first selection set among `tasks`
    (STS-B-dev or STS-B-zh-dev), else the first task."""
    tasks = list(tasks)
    return next((t for t in tasks if t in DEV_TASKS), tasks[0])
