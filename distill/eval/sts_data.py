"""The seven standard STS sets (and STS-B dev), from a local folder or the hub.

Folder layout (as SentEval ships them, see ../shared/data/sts):
  sts12..sts16/STS.input.<subset>.txt + STS.gs.<subset>.txt   (STS12-16: subsets concatenated,
                                                              pairs with an empty gold skipped)
  stsb/sts-{dev,test}.csv      genre, file, year, id, score, sentence1, sentence2 (tab separated)
  sick/SICK_test_annotated.txt pair_ID, sentence_A, sentence_B, relatedness_score, entailment

Chinese STS-B (`STS-B-zh` test, `STS-B-zh-dev` valid; never part of the English average):
  STS-B.{test,valid}.data      sentence1, sentence2, integer score 0-5 (tab separated, no header),
                               read from the folder itself (point eval.sts_dir / --sts-dir at
                               ../shared/data/sts-zh) or from its sts-zh/ subfolder (one folder
                               holding both languages). Hub: C-MTEB/STSB.

Every sentence is whitespace-normalized as SentEval does (it splits each sentence on white space
and joins the tokens back with single spaces before encoding): 672 of the 26,845 distinct
sentences change, most of them in STS14 (double spaces, tabs, trailing blanks). The scores then
refer to exactly the text SentEval and SimCSE score.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from distill.errors import DistillError

# The task names live in distill/tasks.py (recipes check them without importing this module).
from distill.tasks import ALL_TASKS, DEV_TASK, DEV_TASKS, TEST_TASKS, ZH_DEV_TASK, ZH_TASKS, ZH_TEST_TASK, normalize_task  # noqa: F401

# SentEval's subsets, in SentEval's order (STS13 without SMT, which is not redistributed).
STS_SUBSETS = {
    "STS12": ("MSRpar", "MSRvid", "SMTeuroparl", "surprise.OnWN", "surprise.SMTnews"),
    "STS13": ("FNWN", "headlines", "OnWN"),
    "STS14": ("deft-forum", "deft-news", "headlines", "images", "OnWN", "tweet-news"),
    "STS15": ("answers-forums", "answers-students", "belief", "headlines", "images"),
    "STS16": ("answer-answer", "headlines", "plagiarism", "postediting", "question-question"),
}
ZH_FILES = {ZH_TEST_TASK: "STS-B.test.data", ZH_DEV_TASK: "STS-B.valid.data"}

# Hub copies, for users without a local folder.
HUB_DATASETS = {
    "STS12": ("mteb/sts12-sts", "test"),
    "STS13": ("mteb/sts13-sts", "test"),
    "STS14": ("mteb/sts14-sts", "test"),
    "STS15": ("mteb/sts15-sts", "test"),
    "STS16": ("mteb/sts16-sts", "test"),
    "STS-B": ("mteb/stsbenchmark-sts", "test"),
    "STS-B-dev": ("mteb/stsbenchmark-sts", "validation"),
    "SICK-R": ("mteb/sickr-sts", "test"),
    ZH_TEST_TASK: ("C-MTEB/STSB", "test"),
    ZH_DEV_TASK: ("C-MTEB/STSB", "validation"),
}
SICK_TEST_PAIRS = 4927


@dataclass
class STSPairs:
    """Sentence pairs and their gold scores; the sentences are already SentEval-normalized."""

    task: str
    sentences1: list[str]
    sentences2: list[str]
    scores: np.ndarray  # gold similarity, float64

    def __len__(self) -> int:
        return len(self.scores)


def senteval_text(sentence: str) -> str:
    """SentEval's view of a sentence: `sentence.split()` joined back with single spaces."""
    return " ".join(sentence.split())


def _pairs(task: str, s1: list[str], s2: list[str], gold) -> STSPairs:
    return STSPairs(task, [senteval_text(s) for s in s1], [senteval_text(s) for s in s2], np.asarray(gold, dtype=np.float64))


def _read_lines(path: Path) -> list[str]:
    if not path.is_file():
        raise DistillError(f"missing STS file: {path}")
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise DistillError(f"{path}:{line}: not valid UTF-8") from None


def _parse_score(text: str, path: Path, lineno: int) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DistillError(f"{path}:{lineno}: gold score {text!r} is not a number") from None
    if not np.isfinite(value):  # float() reads "nan" and "inf": a Spearman over them is NaN
        raise DistillError(f"{path}:{lineno}: gold score {text!r} is not a finite number")
    return value


def _nonempty(pairs: STSPairs, where: str) -> STSPairs:
    if not len(pairs):
        raise DistillError(f"{where}: no scored sentence pair in it (empty, or every gold score blank)")
    return pairs


def _load_senteval_year(folder: Path, task: str) -> STSPairs:
    s1, s2, gold = [], [], []
    for subset in STS_SUBSETS[task]:
        inp = folder / f"STS.input.{subset}.txt"
        gs = folder / f"STS.gs.{subset}.txt"
        pairs, scores = _read_lines(inp), _read_lines(gs)
        if len(pairs) != len(scores):
            raise DistillError(f"{inp} has {len(pairs)} lines but {gs} has {len(scores)}: they must pair up line by line")
        if not any(score.strip() for score in scores):
            raise DistillError(f"{gs}: no gold score on any of its {len(scores)} lines (empty or all blank)")
        for lineno, (pair, score) in enumerate(zip(pairs, scores), start=1):
            if not score.strip():
                continue  # no gold score for this pair (STS16 and others): skipped, as SentEval does
            cols = pair.split("\t")
            if len(cols) < 2:
                raise DistillError(f"{inp}:{lineno}: expected two tab-separated sentences, found {len(cols)} column")
            s1.append(cols[0])
            s2.append(cols[1])  # STS16 lines carry two extra source columns: ignored
            gold.append(_parse_score(score.strip(), gs, lineno))
    return _nonempty(_pairs(task, s1, s2, gold), f"{folder} ({task})")


def _load_stsb(path: Path, task: str) -> STSPairs:
    s1, s2, gold = [], [], []
    for lineno, line in enumerate(_read_lines(path), start=1):
        cols = line.split("\t")
        if len(cols) < 7:
            raise DistillError(f"{path}:{lineno}: expected 7 tab-separated columns, found {len(cols)}")
        gold.append(_parse_score(cols[4], path, lineno))
        s1.append(cols[5])
        s2.append(cols[6])  # some lines carry extra trailing columns: ignored
    return _nonempty(_pairs(task, s1, s2, gold), str(path))


def _load_sick(path: Path) -> STSPairs:
    s1, s2, gold = [], [], []
    for lineno, line in enumerate(_read_lines(path), start=1):
        cols = line.split("\t")
        if lineno == 1 and cols[0] == "pair_ID":
            continue  # the original release has a header line; the shared copy does not
        if len(cols) < 4:
            raise DistillError(f"{path}:{lineno}: expected pair_ID, sentence_A, sentence_B, score; found {len(cols)} columns")
        s1.append(cols[1])
        s2.append(cols[2])
        gold.append(_parse_score(cols[3], path, lineno))
    return _nonempty(_pairs("SICK-R", s1, s2, gold), str(path))


def _load_zh(root: Path, task: str) -> STSPairs:
    """Chinese STS-B: sentence1 TAB sentence2 TAB integer score 0-5, no header."""
    name = ZH_FILES[task]
    path = root / name if (root / name).is_file() or not (root / "sts-zh" / name).is_file() else root / "sts-zh" / name
    if not path.is_file():
        raise DistillError(f"missing STS file for {task}: {root / name} (nor {root / 'sts-zh' / name}); "
                           f"point --sts-dir / eval.sts_dir at a folder like ../shared/data/sts-zh")
    s1, s2, gold = [], [], []
    for lineno, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if len(cols) != 3:
            raise DistillError(f"{path}:{lineno}: expected sentence1, sentence2, score (3 tab-separated columns), found {len(cols)}")
        score = _parse_score(cols[2].strip(), path, lineno)
        if not 0.0 <= score <= 5.0:
            raise DistillError(f"{path}:{lineno}: gold score {cols[2].strip()!r} is outside 0-5")
        s1.append(cols[0])
        s2.append(cols[1])
        gold.append(score)
    return _pairs(task, s1, s2, gold)


def load_local(task: str, sts_dir: str | Path) -> STSPairs:
    root = Path(sts_dir)
    if not root.is_dir():
        raise DistillError(f"STS folder not found: {root}")
    task = normalize_task(task)
    if task in ZH_TASKS:
        return _load_zh(root, task)
    if task in STS_SUBSETS:
        return _load_senteval_year(root / task.lower(), task)
    if task == "STS-B":
        return _load_stsb(root / "stsb" / "sts-test.csv", task)
    if task == DEV_TASK:
        return _load_stsb(root / "stsb" / "sts-dev.csv", task)
    return _load_sick(root / "sick" / "SICK_test_annotated.txt")


def load_hub(task: str) -> STSPairs:
    """The same sets from the hub (needs `datasets` and network)."""
    try:
        from datasets import load_dataset
    except ImportError:
        raise DistillError("loading STS from the hub needs the 'datasets' package (pip install 'distill[hub]'), or pass --sts-dir") from None
    task = normalize_task(task)
    repo, split = HUB_DATASETS[task]
    try:
        ds = load_dataset(repo, split=split)
    except Exception as exc:
        raise DistillError(f"cannot load {repo} ({split}) from the hub: {str(exc).splitlines()[0]}; pass --sts-dir DIR") from None
    if task == "SICK-R" and len(ds) != SICK_TEST_PAIRS:
        # mteb/sickr-sts holds all 9,927 SICK pairs; the standard test set is the 4,927 marked TEST.
        marker = next((c for c in ("SemEval_set", "semeval_set", "split") if c in ds.column_names), None)
        if marker is None:
            raise DistillError(
                f"{repo} has {len(ds)} pairs and no column that marks the {SICK_TEST_PAIRS} SICK test pairs; "
                "pass --sts-dir with SICK_test_annotated.txt instead of scoring the wrong set"
            )
        ds = ds.filter(lambda row: str(row[marker]).upper().startswith("TEST"))
        if len(ds) != SICK_TEST_PAIRS:
            raise DistillError(f"{repo}: {len(ds)} pairs are marked TEST, expected {SICK_TEST_PAIRS}")
    return _pairs(task, list(ds["sentence1"]), list(ds["sentence2"]), ds["score"])


def load_sts(task: str, sts_dir: str | Path | None = None) -> STSPairs:
    return load_local(task, sts_dir) if sts_dir is not None else load_hub(task)
