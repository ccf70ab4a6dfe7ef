"""What a model folder must hold, and how many tokens the model takes, read from its files.

Tokenizer files: transformers 5 builds a tokenizer from config.json's model_type alone when a
folder has no tokenizer files (AutoTokenizer -> TOKENIZER_MAPPING[BertConfig] = BertTokenizer,
constructed with no vocabulary: its 5 special tokens only), so every word becomes [UNK] and the
model encodes silently wrong vectors. `check_tokenizer_files` refuses such a folder.

Damaged or foreign files: transformers, tokenizers, safetensors and torch report a cut-short
tokenizer.json, a damaged weights file or a pickle that weights-only loading refuses with their
own exceptions, most of them not naming the file. `explain_load_error` turns such an exception
into one line naming the file and what is wrong; `check_tokenizer_files` also refuses an empty
vocabulary, which loads without a word and fails at the first sentence.

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
from distill.io import try_read_json_object

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
        _check_vocabulary(folder, tokenizer, vocab)
        return
    wanted = [TOKENIZER_FILE, *vocab, "tokenizer_config.json"]
    missing = [n for n in wanted if not (folder / n).is_file()]
    model_type = try_read_json_object(folder / "config.json").get("model_type", "?")
    raise DistillError(
        f"{folder}: no tokenizer files (missing {', '.join(missing)}); transformers would build an empty "
        f"{type(tokenizer).__name__} from config.json's model_type {model_type!r} that reads every word as "
        "unknown. Copy the tokenizer files of the model it came from back into the folder"
    )


def _check_vocabulary(folder: Path, tokenizer, vocab_files: list[str]) -> None:
    """Refuse a tokenizer read from an empty vocabulary file, or a WordPiece one whose vocabulary
    lacks its unknown token: both load, and fail (or read every word as unknown) at the first sentence."""
    source = folder / TOKENIZER_FILE if (folder / TOKENIZER_FILE).is_file() else None
    if source is None:
        present = [folder / n for n in vocab_files if (folder / n).is_file()]
        empty = [f for f in present if not f.read_bytes().strip()]
        if empty:
            raise DistillError(f"{empty[0]}: empty, a tokenizer vocabulary with no token in it; copy the file again "
                               "from the model it came from")
        source = present[0] if present else folder
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return
    if backend.get_vocab_size(with_added_tokens=False) == 0:
        raise DistillError(f"{source}: a tokenizer vocabulary with no token in it; copy the file again from the model it came from")
    model = json.loads(backend.to_str()).get("model") or {}
    unk = model.get("unk_token")
    if model.get("type") == "WordPiece" and unk is not None and unk not in (model.get("vocab") or {}):
        raise DistillError(f"{source}: the vocabulary has no {unk} token, which WordPiece needs for any word it does not "
                           "know; the file is damaged or belongs to another model")


def explain_load_error(folder: str | Path, exc: BaseException) -> DistillError:
    """A library's exception while loading the model in `folder` -> a DistillError of one line
    naming the file and what is wrong (a DistillError is returned as it is). Use: `except
    Exception as exc: raise explain_load_error(folder, exc) from None` around the loads."""
    import pickle

    if isinstance(exc, DistillError):
        return exc
    folder = Path(folder)
    text = str(exc)
    first = (text.splitlines() or [type(exc).__name__])[0][:200]
    damaged = damaged_json(folder)
    if damaged is not None:
        return DistillError(damaged)
    if "contains custom code" in text or "trust_remote_code" in text:
        named = next((folder / n for n in ("config.json", "tokenizer_config.json") if "auto_map" in try_read_json_object(folder / n)), folder)
        return DistillError(f"{named}: its auto_map names the model's own code, which distill never runs (trust_remote_code is off); "
                            "use a model whose architecture transformers has")
    weights = sorted(folder.glob("pytorch_model*.bin")) or sorted(folder.glob("*.bin")) or [folder / "pytorch_model.bin"]
    if isinstance(exc, pickle.UnpicklingError) or "weights_only" in text:
        return DistillError(f"{weights[0]}: refused, not weights torch can read without unpickling code ({weights_only_reason(exc)}); "
                            "distill never runs what a pickle names. Use the model's model.safetensors, or re-save it "
                            "with save_pretrained(..., safe_serialization=True) where you trust it")
    if "PytorchStreamReader" in text or isinstance(exc, EOFError):
        return DistillError(f"{weights[0]}: not a complete PyTorch weights file ({first.split('. ')[0]}); it is damaged or cut short: "
                            "copy it again from where the model came from")
    if type(exc).__name__ == "SafetensorError":
        files = sorted(folder.glob("*.safetensors"))
        where = files[0] if len(files) == 1 else folder / "model.safetensors" if not files else f"{folder} (*.safetensors)"
        return DistillError(f"{where}: not a readable safetensors file ({first}); it is damaged or cut short: copy it again "
                            "from where the model came from")
    if type(exc).__module__ == "builtins" and type(exc) is Exception and (folder / TOKENIZER_FILE).is_file():
        return DistillError(f"{folder / TOKENIZER_FILE}: the tokenizers library cannot read it ({first})")  # the Rust tokenizer's errors
    if isinstance(exc, OSError):
        return DistillError(f"{folder}: cannot load a model from it ({first})")
    return DistillError(f"{folder}: cannot load the model ({type(exc).__name__}: {first})")


def damaged_json(folder: str | Path) -> str | None:
    """'FILE:LINE: not valid JSON (...)' for the first JSON file of a model folder (its module
    folders included) that does not parse, else None."""
    folder = Path(folder)
    for path in sorted(folder.rglob("*.json")):
        if "onnx" in path.relative_to(folder).parts[:-1] or path.name.startswith("."):
            continue
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            return f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}); the file is damaged or not the model's"
        except json.JSONDecodeError as exc:
            return (f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); the file is damaged or cut short: copy it again from "
                    "where the model came from")
        except OSError:
            continue
    return None


def weights_only_reason(exc: BaseException) -> str:
    """torch's weights-only refusal in a few words ("Unsupported global: GLOBAL posix.system ..."),
    without its advice to allowlist the global or load with weights_only=False."""
    text = str(exc).split("Check the documentation", 1)[0].replace("WeightsUnpickler error:", "\n")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else type(exc).__name__).split(" Please use", 1)[0][:200]


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
    return position_limit(try_read_json_object(Path(folder) / "config.json"))


def check_length(key: str, length: int, name, role: str, *, fetch: bool = False) -> None:
    """Refuse `length` tokens (the value of `key`) for the model `name` (a preset of `role`, a
    folder, a hub id, a mapping or a spec) when it takes fewer. `fetch=False`: only a model already
    on this machine is checked (nothing is downloaded when a recipe is read); `fetch=True` resolves it first."""
    from distill.presets import StaticStudentSpec, model_name, student_spec, teacher_spec
    from distill.resolve import local_model, resolve_model

    try:
        preset = teacher_spec(name) if role == "teacher" else student_spec(name)
    except DistillError:
        return  # not a model: the recipe's checks say so
    if isinstance(preset, StaticStudentSpec):
        return  # a token table has no positions: any length
    model, source = (preset.hub_id, preset.offline_source) if preset is not None else (str(name), None)
    name = model_name(name)
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
    from distill.presets import list_presets, repo_root, teacher_spec

    check_length("data.max_length", recipe.data.max_length, recipe.student, "student", fetch=fetch)
    try:
        teacher = teacher_spec(recipe.teacher)
    except DistillError:
        return  # the recipe's checks name it
    if not fetch:  # the cache may already exist: no teacher to fetch
        if recipe.data.teacher_max_length is not None:
            check_length("data.teacher_max_length", recipe.data.teacher_max_length, teacher, "teacher")
        elif teacher.max_length is not None:
            where = (f"{repo_root() / 'teachers' / f'{teacher.name}.yaml'}: max_length"
                     if isinstance(recipe.teacher, str) and recipe.teacher in list_presets("teachers") else "teacher.max_length")
            check_length(where, teacher.max_length, teacher, "teacher")
