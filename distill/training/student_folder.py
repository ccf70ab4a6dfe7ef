"""Moved: a saved student is distill/saved_student.py (kept importable from here)."""

from distill.embedding import StudentEmbedder  # noqa: F401
from distill.losses.base import head_out_dim  # noqa: F401
from distill.saved_student import META, load_saved_student, save_student, saved_embedding_head, stage_meta  # noqa: F401
