"""What a model folder must hold, and how many tokens the model takes, read from its files.

Tokenizer files: transformers 5 builds a tokenizer from config.json's model_type alone when a
folder has no tokenizer files (AutoTokenizer -> TOKENIZER_MAPPING[BertConfig] = BertTokenizer,
constructed with no vocabulary: its 5 special tokens only), so every word becomes [UNK] and the
model encodes silently wrong vectors. `check_tokenizer_files` refuses such a folder.

Positions: the hard length limit is the position embeddings, max_position_embeddings less
padding_idx + 1 for RoBERTa-like models (their positions start after the padding index), the
rule of `Encoder.max_positions`. The tokenizer's model_max_length is left out here: it is a
default truncation (sentence-transformers 6 writes an export's max_seq_length there), not what
the model can take.
"""

from __future__ import annotations

import json
from pathlib import Path

from distill.errors import DistillError

# Models whose position ids start at padding_idx + 1 (fairseq's convention).
RESERVES_PADDING = ("roberta", "xlm-roberta", "camembert", "mpnet")
TOKENIZER_FILE = "tokenizer.json"


def check_tokenizer_files(folder: str | Path, tokenizer) -> None:
    """Refuse a tokenizer loaded from a folder that holds none of its vocabulary files.

    Enough: tokenizer.json (a fast tokenizer's whole definition), or every vocabulary file the
    tokenizer's class reads (vocab.txt for BERT; vocab.json and merges.txt for RoBERTa; ...).
    """
    folder = Path(folder)
    names = dict(getattr(type(tokenizer), "vocab_files_names", None) or {})
    names.pop("tokenizer_file", None)
    vocab = sorted(set(names.values()))
    if (folder / TOKENIZER_FILE).is_file() or (vocab and all((folder / n).is_file() for n in vocab)):
        return
    wanted = [TOKENIZER_FILE, *vocab, "tokenizer_config.json"]
    missing = [n for n in wanted if not (folder / n).is_file()]
    model_type = _read_json(folder / "config.json").get("model_type", "?")
    raise DistillError(
        f"{folder}: no tokenizer files (missing {', '.join(missing)}); transformers would build an empty "
        f"{type(tokenizer).__name__} from config.json's model_type {model_type!r} that reads every word as "
        "unknown. Copy the tokenizer files of the model it came from back into the folder"
    )


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def position_limit(config) -> int | None:
    """The most tokens a model takes (a config object or config.json's dict), None when it has no
    absolute position embeddings to count."""
    get = config.get if isinstance(config, dict) else (lambda key: getattr(config, key, None))
    positions = get("max_position_embeddings")
    if not isinstance(positions, int) or isinstance(positions, bool) or positions <= 0:
        return None
    reserved = (get("pad_token_id") or 0) + 1 if get("model_type") in RESERVES_PADDING else 0
    return positions - reserved


def folder_position_limit(folder: str | Path) -> int | None:
    """`position_limit` of a model folder's config.json, without loading anything else."""
    return position_limit(_read_json(Path(folder) / "config.json"))


def check_length(key: str, length: int, name: str, role: str, *, fetch: bool = False) -> None:
    """Refuse `length` tokens (the value of `key`) for the model `name` (a folder, or a preset of
    `role`) when it takes fewer. `fetch=False`: only a model already on this machine is checked
    (nothing is downloaded when a recipe is read); `fetch=True` resolves it first."""
    from distill.presets import StaticStudentSpec, find_preset
    from distill.resolve import local_model, resolve_model

    preset = find_preset(name, role) if not Path(name).expanduser().is_dir() else None
    if isinstance(preset, StaticStudentSpec):
        return  # a token table has no positions: any length
    model, source = (preset.hub_id, preset.offline_source) if preset is not None else (name, None)
    try:
        folder = resolve_model(model, offline_source=source) if fetch else local_model(model, offline_source=source)
    except DistillError:
        if fetch:
            raise
        return  # not a model, or unknown: loading it says so, with its own message
    limit = folder_position_limit(folder) if folder is not None else None
    if limit is not None and length > limit:
        raise DistillError(f"{key} {length}: the {role} {name} takes at most {limit} tokens "
                           f"(max_position_embeddings in {folder / 'config.json'}); use at most {limit}")


def check_recipe_lengths(recipe, *, fetch: bool = False) -> None:
    """data.max_length against the student, and the length the cache encodes at (data.teacher_max_length,
    else the teacher preset's max_length) against the teacher; see `check_length` for `fetch`."""
    from distill.presets import find_preset, repo_root

    check_length("data.max_length", recipe.data.max_length, recipe.student, "student", fetch=fetch)
    teacher = find_preset(recipe.teacher, "teacher")
    if teacher is not None and not fetch:  # the cache may already exist: no teacher to fetch
        if recipe.data.teacher_max_length is not None:
            check_length("data.teacher_max_length", recipe.data.teacher_max_length, recipe.teacher, "teacher")
        else:
            where = repo_root() / "teachers" / f"{recipe.teacher}.yaml"
            check_length(f"{where}: max_length", teacher.max_length, recipe.teacher, "teacher")
