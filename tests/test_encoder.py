import json

import numpy as np
import pytest
import torch

from distill.encoder import Encoder, keep_layers, pool
from distill.errors import DistillError

SENTENCES = [
    "A man is playing a guitar.",
    "Two dogs run across a snowy field while a child watches them from the porch.",
    "Hi.",
    "The stock market fell sharply on Monday after the announcement.",
    "A woman slices an onion.",
]


def test_mean_pooling_ignores_padding():
    hidden = torch.arange(2 * 3 * 2, dtype=torch.float64).reshape(2, 3, 2)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    out = pool("mean", hidden, mask)
    assert torch.allclose(out[0], hidden[0, :2].mean(0)) and torch.allclose(out[1], hidden[1, 0])
    assert torch.equal(pool("cls_before_pooler", hidden, mask), hidden[:, 0])
    with pytest.raises(DistillError, match="pooling 'cls' needs a model with a pooler"):
        pool("cls", hidden, mask, None)


def test_layer_cutting_first_k_and_list(tiny_bert_dir):
    full = Encoder.load(str(tiny_bert_dir), device="cpu")
    cut = Encoder.load(str(tiny_bert_dir), layers=2, device="cpu")
    assert len(cut.transformer.encoder.layer) == 2 and cut.transformer.config.num_hidden_layers == 2
    # keeping the first two layers = the full model's hidden state after layer 2, mean-pooled
    batch = full.tokenize(SENTENCES)
    with torch.no_grad():
        h2 = full(batch["input_ids"], batch["attention_mask"], output_hidden_states=True)["hidden_states"][2]
        expected = pool("mean", h2, batch["attention_mask"])
        got = cut(batch["input_ids"], batch["attention_mask"])["embedding"]
    assert torch.allclose(got, expected, atol=1e-5)
    picked = keep_layers(Encoder.load(str(tiny_bert_dir), device="cpu").transformer, [0, 3])
    assert picked.encoder.layer[1] is not None and picked.config.num_hidden_layers == 2
    with pytest.raises(DistillError, match=r"layers \[0, 7\] do not fit a model with 4 layers"):
        Encoder.load(str(tiny_bert_dir), layers=[0, 7], device="cpu")


def test_encode_keeps_input_order_and_matches_one_by_one(tiny_bert_dir):
    enc = Encoder.load(str(tiny_bert_dir), device="cpu", normalize=True)
    batched = enc.encode(SENTENCES, batch_size=2, progress=False)
    single = np.stack([enc.encode([s], progress=False)[0] for s in SENTENCES])
    assert batched.shape == (5, 32)
    np.testing.assert_allclose(batched, single, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(batched, axis=1), 1.0, atol=1e-5)
    with pytest.raises(DistillError, match="sentence 1 is a int"):
        enc.encode(["ok", 3], progress=False)


def test_sentence_transformers_folder_settings_are_read(minilm_path):
    enc = Encoder.load(str(minilm_path), device="cpu")
    assert (enc.pooling, enc.normalize, enc.dim) == ("mean", True, 384)
    assert enc.max_length == json.loads((minilm_path / "sentence_bert_config.json").read_text())["max_seq_length"]


def test_matches_sentence_transformers(minilm_path):
    from sentence_transformers import SentenceTransformer

    ours = Encoder.load(str(minilm_path), device="cpu").encode(SENTENCES, progress=False)
    ref = SentenceTransformer(str(minilm_path), device="cpu").encode(SENTENCES)
    np.testing.assert_allclose(ours, ref, atol=1e-5)


def test_student_preset_brings_layers_and_no_normalization():
    enc = Encoder.load("all-minilm-l3-v2", device="cpu")
    assert len(enc.transformer.encoder.layer) == 3 and enc.normalize is False and enc.pooling == "mean"
    norms = np.linalg.norm(enc.encode(SENTENCES, progress=False), axis=1)
    assert norms.min() > 1.5  # un-normalized mean-pooled vectors, as the losses receive them


def test_skip_preset_keeps_the_teachers_first_and_last_two_layers():
    """students/all-minilm-l3-skip.yaml: three blocks that are the teacher's blocks 0, 4 and 5, weight for weight."""
    import torch

    skip, whole = Encoder.load("all-minilm-l3-skip", device="cpu"), Encoder.load("all-minilm-l6-v2", device="cpu")
    assert len(skip.transformer.encoder.layer) == 3 == skip.transformer.config.num_hidden_layers
    for mine, theirs in zip(skip.transformer.encoder.layer, [whole.transformer.encoder.layer[i] for i in (0, 4, 5)]):
        for (name, a), (_, b) in zip(mine.state_dict().items(), theirs.state_dict().items()):
            assert torch.equal(a, b), name
    assert not np.allclose(skip.encode(SENTENCES, progress=False), Encoder.load("all-minilm-l3-v2", device="cpu").encode(SENTENCES, progress=False))


def test_max_positions_is_the_models_own_limit(tiny_bert_dir, minilm_path):
    """Evaluation encodes at the model's own limit: the tokenizer's, capped by the position
    embeddings (RoBERTa-style models reserve padding_idx + 1 of them)."""
    from transformers import AutoTokenizer, RobertaConfig, RobertaModel

    assert Encoder.load(str(minilm_path), device="cpu").max_positions == 512
    tiny = Encoder.load(str(tiny_bert_dir), max_length=16, device="cpu")
    assert (tiny.max_length, tiny.max_positions) == (16, 128)
    tok = AutoTokenizer.from_pretrained(str(minilm_path))
    tok.model_max_length = int(1e30)  # "unset", as many tokenizers ship
    cfg = RobertaConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=66, pad_token_id=1)
    roberta = Encoder(RobertaModel(cfg), tok, max_length=16)
    assert roberta.max_positions == 64
    # and the model really takes that many tokens
    long = " ".join(["word"] * 200)
    assert roberta.encode([long], max_length=roberta.max_positions, progress=False).shape == (1, 16)


def test_autocast_precision_names_are_checked():
    import torch

    from distill.encoder import autocast_for
    from distill.errors import DistillError

    with pytest.raises(DistillError, match="precision must be one of auto, bf16, fp16, fp32, got 'fp8'"):
        autocast_for(torch.device("cpu"), "fp8")
    with autocast_for(torch.device("cpu"), "bf16"):  # CPU always runs plain fp32
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


@pytest.mark.parametrize("bf16_ok", [True, False])
def test_autocast_for_serves_the_trainer(monkeypatch, bf16_ok):
    """`autocast_for(device, tcfg.precision)` is the trainer's autocast: no autocast on CPU or for
    fp32, bf16 where the GPU supports it and fp16 otherwise, fp16 when asked."""
    import contextlib
    import warnings

    import torch

    from distill.encoder import autocast_for

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_ok)
    expected = {"fp32": None, "bf16": torch.bfloat16 if bf16_ok else torch.float16, "fp16": torch.float16}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available": the context is only built, never entered
        for precision, dtype in expected.items():
            for device in (torch.device("cpu"), torch.device("cuda"), "cuda:0"):
                ctx = autocast_for(device, precision)
                if torch.device(device).type == "cuda" and dtype is not None:
                    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == dtype
                else:
                    assert isinstance(ctx, contextlib.nullcontext)


def test_load_honours_the_length_and_pooling_sentence_transformers_6_saves(tmp_path, tiny_bert_dir):
    """sentence-transformers 6 keeps max_seq_length in tokenizer_config.json (model_max_length), not in
    sentence_bert_config.json, and names the pooling "pooling_mode": "cls"; Encoder.load read neither
    (it encoded at 128 tokens with mean pooling)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers import __version__ as st_version

    from distill.export import st_module_classes

    models = st_module_classes()
    folder = tmp_path / "st"
    st = SentenceTransformer(modules=[models.Transformer(str(tiny_bert_dir), max_seq_length=40),
                                      models.Pooling(32, pooling_mode="cls")], device="cpu")
    st.save(str(folder))
    enc = Encoder.load(str(folder), device="cpu")
    assert (enc.max_length, enc.pooling) == (40, "cls_before_pooler"), st_version
    np.testing.assert_allclose(enc.encode(SENTENCES, progress=False), st.encode(SENTENCES), atol=1e-5)
    assert Encoder.load(str(folder), max_length=16, device="cpu").max_length == 16  # an explicit length still wins

    # sentence_bert_config.json's max_seq_length (sentence-transformers up to 5) comes first
    sbert = folder / "sentence_bert_config.json"
    sbert.write_text(json.dumps({**json.loads(sbert.read_text()), "max_seq_length": 24}))
    assert Encoder.load(str(folder), device="cpu").max_length == 24
    # and a tokenizer_config "unset" placeholder (VERY_LARGE_INTEGER) is not a length
    sbert.write_text(json.dumps({"do_lower_case": False}))
    tok_cfg = folder / "tokenizer_config.json"
    tok_cfg.write_text(json.dumps({**json.loads(tok_cfg.read_text()), "model_max_length": int(1e30)}))
    assert Encoder.load(str(folder), device="cpu").max_length == 128


def test_an_fp16_folder_loads_with_float32_weights(tmp_path, tiny_bert_dir):
    """The GPU run stages fp16 copies of its models (benchmarks/gpu_stage.sh); transformers 5 would load
    them as fp16 (its dtype "auto": config.json names no dtype in the hub's all-MiniLM-L6-v2 or
    all-mpnet-base-v2, so the files' dtype wins) and a student would train fp16 weights. They load as
    float32, and embed like the float32 model whose weights were rounded to fp16."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path / "fp16"
    shutil.copytree(tiny_bert_dir, folder)
    weights = load_file(folder / "model.safetensors")
    save_file({k: v.half() for k, v in weights.items()}, folder / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((folder / "config.json").read_text())
    config.pop("dtype", None), config.pop("torch_dtype", None)
    (folder / "config.json").write_text(json.dumps(config))
    enc = Encoder.load(str(folder), device="cpu")
    assert {p.dtype for p in enc.transformer.parameters()} == {torch.float32}
    rounded = Encoder.load(str(tiny_bert_dir), device="cpu")
    rounded.transformer.load_state_dict({k: v.half().float() for k, v in rounded.transformer.state_dict().items()})
    assert np.allclose(enc.encode(SENTENCES, progress=False), rounded.encode(SENTENCES, progress=False), atol=1e-6)
