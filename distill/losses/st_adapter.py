"""Use any distill loss inside sentence-transformers' own training loop (SentenceTransformerTrainer)."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from distill.errors import DistillError
from distill.losses.base import DistillLoss


def _hf_config(model: nn.Module):
    """The transformers config of the SentenceTransformer's (first) Transformer module."""
    hf = getattr(model, "transformers_model", None)  # sentence-transformers >= 5
    if hf is None:
        first = model[0] if isinstance(model, nn.Sequential) and len(model) else None
        hf = getattr(first, "auto_model", None)
    config = getattr(hf, "config", None)
    if config is None:
        raise DistillError("this SentenceTransformer has no transformers model to take hidden states from")
    return config


class STDistillLoss(nn.Module):
    """A distill loss as a sentence-transformers loss: `forward(sentence_features, labels)`.

    Like sentence_transformers.losses.MSELoss, the teacher vectors are the `labels` (a "label"
    column of pre-computed teacher embeddings, n x d_t; for HPD the PCA-reduced n x k targets).
    Several text columns with 2-D labels each regress the same teacher vector (averaged); 3-D labels
    (n x columns x d_t) give one teacher vector per column. A stage-2 loss (ibkd_supervised, mnrl)
    instead takes (anchor, positive, negative_1, ..., negative_k) columns, k >= 0, and ignores labels.

    Hidden states (IBKD's HSIC term) are obtained the sentence-transformers way: the Transformer
    module copies the model's `hidden_states` into features["all_layer_embeddings"] when its
    config has output_hidden_states set, which this adapter switches on around the forward pass
    only (as AdaptiveLayerLoss does), so plain encoding stays cheap.

    The loss's heads are submodules here, so the trainer's optimizer trains them with the model.
    For HPD, append `st_embedding_modules()` to the model after training (its Dense+Tanh head is
    the embedding). HPD's default head start is a least-squares fit (`init="lstsq"`), which
    `distill train` does itself; here, before training, call
    `loss.loss.prepare(model.encode(sample, convert_to_tensor=True), sample_targets)`, or build
    with `init="random"` for the paper's start. `forward` returns the scalar loss (the trainer
    would sum a dict's values).

        loss = STDistillLoss.build(model, "ibkd", teacher_dim=768, bandwidth="median")
        trainer = SentenceTransformerTrainer(model=model, train_dataset=ds, loss=loss)
    """

    def __init__(self, model: nn.Module, loss: DistillLoss):
        super().__init__()
        self.model = model  # the name the trainer looks for when it wraps the model (DDP, compile)
        self.loss = loss
        # A plain object, not a module: survives the trainer swapping self.model for a DDP wrapper.
        self._config = _hf_config(model)

    @classmethod
    def build(cls, model: nn.Module, name: str, teacher_dim: int | None = None, **params: Any) -> STDistillLoss:
        """Build the named distill loss (see distill.losses.LOSSES) for this model's output width."""
        from distill.losses.registry import build_loss

        # get_embedding_dimension in sentence-transformers >= 6; the older name before.
        get_dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        dim = get_dim()
        return cls(model, build_loss(name, int(dim), teacher_dim, **params))

    @contextmanager
    def _hidden_states(self):
        if not self.loss.needs_hidden_states:
            yield
            return
        previous = self._config.output_hidden_states
        self._config.output_hidden_states = True
        try:
            yield
        finally:
            self._config.output_hidden_states = previous

    def _student(self, features: dict[str, Tensor]) -> dict:
        with self._hidden_states():
            out = self.model(features)
        student = {"embedding": out["sentence_embedding"], "attention_mask": out.get("attention_mask")}
        if "token_embeddings" in out:
            student["token_embeddings"] = out["token_embeddings"]
        if self.loss.needs_hidden_states:
            if out.get("all_layer_embeddings") is None:
                raise DistillError("the model returned no all_layer_embeddings although output_hidden_states was set")
            student["hidden_states"] = out["all_layer_embeddings"]
        return student

    def compute(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None) -> dict:
        """The inner loss's full dict (for logging its parts)."""
        features = list(sentence_features)
        outs = [self._student(f) for f in features]
        if self.loss.stage == 2:
            if len(outs) < 2:
                raise DistillError(f"{self.loss.name} takes (anchor, positive, negatives...) columns: two or more, got {len(outs)}")
            return self.loss(*outs)
        if labels is None:
            raise DistillError(f"{self.loss.name}: needs the teacher embeddings as labels")
        labels = labels.detach()
        if labels.dim() == 3:
            if labels.shape[1] != len(outs):
                raise DistillError(f"{labels.shape[1]} label columns for {len(outs)} text columns")
            targets = [labels[:, i] for i in range(len(outs))]
        elif labels.dim() == 2:
            targets = [labels] * len(outs)
        else:
            raise DistillError(f"labels must be n x d or n x columns x d teacher embeddings, got shape {tuple(labels.shape)}")
        results = [self.loss(out, t) for out, t in zip(outs, targets)]
        if len(results) == 1:
            return results[0]
        return {k: torch.stack([r[k] for r in results]).mean() for k in results[0]}

    def forward(self, sentence_features: Iterable[dict[str, Tensor]], labels: Tensor | None) -> Tensor:
        return self.compute(sentence_features, labels)["loss"]

    def st_embedding_modules(self) -> list[nn.Module]:
        """sentence-transformers modules to append to the model for inference (HPD's Dense+Tanh)."""
        head = self.loss.embedding_head()
        if head is None:
            return []
        linear = head[0] if isinstance(head, nn.Sequential) else head
        if not isinstance(linear, nn.Linear) or not (isinstance(head, nn.Sequential) and isinstance(head[-1], nn.Tanh)):
            raise DistillError(f"cannot express {type(head).__name__} as a sentence-transformers Dense module")
        try:
            from sentence_transformers.base.modules import Dense
        except ImportError:  # sentence-transformers < 5
            from sentence_transformers.models import Dense
        dense = Dense(
            linear.in_features,
            linear.out_features,
            bias=linear.bias is not None,
            activation_function=nn.Tanh(),
        )
        dense.linear.load_state_dict(linear.state_dict())
        return [dense.to(linear.weight.device)]

    def get_config_dict(self) -> dict[str, Any]:
        return {"loss": self.loss.name, **self.loss.get_config_dict()}

    @property
    def citation(self) -> str:
        return self.loss.citation
