"""distill: knowledge distillation for sentence-embedding models.

    from distill import evaluate_sts, Encoder
    scores = evaluate_sts("all-minilm-l6-v2", sts_dir="../shared/data/sts")
"""

from distill.errors import DistillError

__version__ = "0.1.0"
__all__ = ["DistillError", "Encoder", "evaluate_sts", "load_recipe", "pipeline", "resolve_model"]


def __getattr__(name):  # lazy: `import distill` must not import torch
    if name == "Encoder":
        from distill.encoder import Encoder

        return Encoder
    if name == "evaluate_sts":
        from distill.eval.sts import evaluate_sts

        return evaluate_sts
    if name == "load_recipe":
        from distill.config import load_recipe

        return load_recipe
    if name == "pipeline":
        from distill.eval.similarity import pipeline

        return pipeline
    if name == "resolve_model":
        from distill.resolve import resolve_model

        return resolve_model
    raise AttributeError(name)
