"""distill: knowledge distillation for sentence-embedding models.

    from distill import evaluate_sts, Encoder
    scores = evaluate_sts("all-minilm-l6-v2", sts_dir="../shared/data/sts")
"""

from .errors import DistillError

__version__ = "0.1.0"
__all__ = ["DistillError", "Encoder", "evaluate_sts", "load_recipe", "pipeline", "resolve_model"]


def __getattr__(name):  # lazy: `import distill` must not import torch
    if name == "Encoder":
        from .encoder import Encoder

        return Encoder
    if name == "evaluate_sts":
        from .sts_eval import evaluate_sts

        return evaluate_sts
    if name == "load_recipe":
        from .config import load_recipe

        return load_recipe
    if name == "pipeline":
        from .pipeline import pipeline

        return pipeline
    if name == "resolve_model":
        from .models import resolve_model

        return resolve_model
    raise AttributeError(name)
