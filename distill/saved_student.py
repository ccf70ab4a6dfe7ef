"""A trained student on disk: its own files (the Student protocol's `save`) + how to use it.

    DIR/...                    a transformer: model.safetensors, config.json, tokenizer files
                               (plain transformers: AutoModel loads it); a static student:
                               modules.json, model.safetensors, tokenizer.json (a
                               sentence-transformers StaticEmbedding folder)
    DIR/distill_student.json   kind, pooling, normalize, max length, loss, head kind, dims
    DIR/heads.safetensors      the loss's trainable heads (HPD's Dense+tanh, IBKD's decoder, ...)

Written to a temp folder and renamed, so a reader never sees half a student.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from distill.encoder import Encoder
from distill.errors import DistillError
from distill.io import atomic_dir, os_error_text
from distill.losses.base import head_out_dim
from distill.student import EmbeddingModel

META = "distill_student.json"


def save_student(path: str | Path, encoder: EmbeddingModel, loss: nn.Module | None, meta: dict) -> None:
    """Write atomically; a full disk (OSError, or safetensors' SafetensorError naming the os error)
    is a DistillError, and the previous student in `path`, if any, is kept."""
    try:
        _save_student(Path(path), encoder, loss, meta)
    except (OSError, SafetensorError) as exc:
        text = os_error_text(exc) if isinstance(exc, OSError) else str(exc)
        raise DistillError(f"{path}: student not written, {text}; the previous one, if any, is kept as it was") from None


def _save_student(path: Path, encoder: EmbeddingModel, loss: nn.Module | None, meta: dict) -> None:
    with atomic_dir(path) as tmp:  # best/ and final/ get the umask's modes, not mkdtemp's 0700
        encoder.save(tmp)
        head = loss.embedding_head() if loss is not None else None
        info = {
            **meta,
            "kind": encoder.kind,
            "pooling": encoder.pooling,
            "normalize": encoder.normalize,
            "max_length": encoder.max_length,
            "dim": encoder.dim,
            "embedding_head": type(head).__name__ if head is not None else None,
            "embedding_dim": head_out_dim(head) if head is not None else encoder.dim,
        }
        if loss is not None:
            state = {k: v.detach().contiguous().cpu() for k, v in loss.state_dict().items()}
            if state:
                save_file(state, str(tmp / "heads.safetensors"))
        (tmp / META).write_text(json.dumps(info, indent=2) + "\n")


def saved_embedding_head(path: str | Path) -> nn.Module | None:
    """The embedding head a saved student holds (HPD's k-d layer, the Matryoshka PCA head), with its
    trained weights, in eval mode; None when its vectors are the student's own, or `path` is not a
    saved student (a name, a hub id, another folder)."""
    meta_file = Path(path) / META
    if not meta_file.is_file():
        return None
    meta = json.loads(meta_file.read_text())
    if not meta.get("embedding_head"):
        return None
    from distill.losses import load_loss

    state = load_file(str(Path(path) / "heads.safetensors"))
    return load_loss(meta["loss"], int(meta["dim"]), state).embedding_head().eval()


def load_saved_student(path: str | Path, device=None) -> tuple[EmbeddingModel, dict, dict]:
    """(student, meta, loss head state) of a saved student, of the kind its meta names."""
    path = Path(path)
    meta_file = path / META
    if not meta_file.is_file():
        raise DistillError(f"{path}: not a saved student (no {META})")
    meta = json.loads(meta_file.read_text())
    if meta.get("kind", "transformer") == "static":
        from distill.static_student import StaticStudent

        enc = StaticStudent.load_folder(path, max_length=meta["max_length"], device=device)
    else:
        enc = Encoder.from_folder(path, pooling=meta["pooling"], normalize=meta["normalize"], max_length=meta["max_length"], device=device)
    heads = load_file(str(path / "heads.safetensors")) if (path / "heads.safetensors").is_file() else {}
    return enc, meta, heads


# Keys save_student adds (the student's format) or that describe one saved step, not the stage.
_STEP_KEYS = ("step", "selected_by", "score", "kind", "pooling", "normalize", "max_length", "dim", "embedding_head", "embedding_dim")


def stage_meta(path: str | Path) -> dict:
    """The stage description a saved student was trained under (teacher, student, loss, cache,
    recipe...), without what describes that one saved step: what stage 2 starts its own from,
    also when stage 1 is not set up again (a resume of stage 2)."""
    meta_file = Path(path) / META
    if not meta_file.is_file():
        raise DistillError(f"{path}: not a saved student (no {META})")
    return {k: v for k, v in json.loads(meta_file.read_text()).items() if k not in _STEP_KEYS}
