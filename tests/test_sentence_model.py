"""A teacher is encoded exactly as sentence-transformers encodes it (issue 33, part 3): for every
folder kind, SentenceModel's vectors equal SentenceTransformer(folder).encode_query /
encode_document / encode in fp32 on CPU to 1e-5. Tiny real models (tests/tiny_models.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tiny_models import QUERY_INSTRUCTION, TEXTS, bert_dir, decoder_dir, reference, st_folder

from distill.errors import DistillError
from distill.presets import TeacherSpec, teacher_spec
from distill.sentence_model import SentenceModel, describe

TOL = 1e-5


@pytest.fixture(scope="module")
def bert(tmp_path_factory, minilm_path):
    return bert_dir(tmp_path_factory.mktemp("bert"), minilm_path)


@pytest.fixture(scope="module")
def decoder(tmp_path_factory, minilm_path):
    return decoder_dir(tmp_path_factory.mktemp("qwen3"), minilm_path)


def ours(folder, role=None, batch_size=3, **spec):
    model = SentenceModel.load(teacher_spec({"model": str(folder), **spec}), device="cpu")
    return model.encode(TEXTS, batch_size=batch_size, progress=False, role=role)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("pooling", ["mean", "cls", "max", "weightedmean", "lasttoken"])
def test_every_pooling_with_and_without_normalize(tmp_path, bert, pooling, normalize):
    folder = st_folder(tmp_path / "st", bert, pooling=pooling, normalize=normalize)
    got = ours(folder)
    np.testing.assert_allclose(got, reference(folder, TEXTS), atol=TOL, rtol=0)
    if normalize:
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    assert describe(teacher_spec(str(folder)), folder)["pooling"] == ("cls_before_pooler" if pooling == "cls" else pooling)


def test_cls_dense_tanh_normalize(tmp_path, bert):
    """bge/LaBSE-like: CLS, a Dense(tanh) to another width, Normalize."""
    folder = st_folder(tmp_path / "st", bert, pooling="cls", dense=24, normalize=True)
    got = ours(folder)
    assert got.shape == (len(TEXTS), 24)
    np.testing.assert_allclose(got, reference(folder, TEXTS), atol=TOL, rtol=0)
    ident = describe(teacher_spec(str(folder)), folder)
    assert ident["modules"] == ["Transformer", "Pooling", "Dense", "Normalize"] and ident["dim"] == 24


def test_decoder_lasttoken_left_padding_and_a_query_only_instruction(tmp_path, decoder):
    """A Qwen3-Embedding-like teacher: last-token pooling over left-padded batches, Normalize, an
    instruction on queries only; query and document rows differ as sentence-transformers makes them."""
    folder = st_folder(tmp_path / "st", decoder, pooling="lasttoken", normalize=True,
                       prompts={"query": QUERY_INSTRUCTION, "document": ""})
    model = SentenceModel.load(str(folder), device="cpu")
    assert model.tokenizer.padding_side == "left"
    for role in ("query", "document"):
        got = model.encode(TEXTS, batch_size=3, progress=False, role=role)
        np.testing.assert_allclose(got, reference(folder, TEXTS, role), atol=TOL, rtol=0)
    q = model.encode(TEXTS[:2], progress=False, role="query")
    d = model.encode(TEXTS[:2], progress=False, role="document")
    assert np.abs(q - d).max() > 1e-3  # the instruction changes the vector
    assert describe(teacher_spec(str(folder)), folder)["prompts"] == {"query": QUERY_INSTRUCTION}


def test_include_prompt_false_pools_without_the_prompt_tokens(tmp_path, bert):
    folder = st_folder(tmp_path / "st", bert, pooling="mean", include_prompt=False, prompts={"query": "query: ", "passage": "passage: "})
    for role in ("query", "document"):  # document takes "passage", as encode_document does
        np.testing.assert_allclose(ours(folder, role), reference(folder, TEXTS, role), atol=TOL, rtol=0)
    assert describe(teacher_spec(str(folder)), folder)["include_prompt"] is False


def test_truncate_dim_serves_a_matryoshka_teacher_at_its_first_k(tmp_path, bert):
    folder = st_folder(tmp_path / "st", bert, pooling="mean", normalize=True)
    got = ours(folder, truncate_dim=8)
    np.testing.assert_allclose(got, reference(folder, TEXTS, truncate_dim=8), atol=TOL, rtol=0)
    assert got.shape[1] == 8


def test_the_mappings_prompts_replace_the_folders(tmp_path, bert):
    folder = st_folder(tmp_path / "st", bert, prompts={"query": "folder query: "})
    got = ours(folder, "query", prompts={"query": "query: ", "document": "passage: "})
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(folder), device="cpu")
    np.testing.assert_allclose(got, st.encode_query(TEXTS, prompt="query: "), atol=TOL, rtol=0)
    got_doc = ours(folder, "document", prompts={"query": "query: ", "document": "passage: "})
    np.testing.assert_allclose(got_doc, st.encode_document(TEXTS, prompt="passage: "), atol=TOL, rtol=0)


def test_prompt_names_pick_a_folder_prompt_and_an_unknown_name_is_refused(tmp_path, bert):
    folder = st_folder(tmp_path / "st", bert, prompts={"s2p_query": "Represent this question: ", "query": "q: "})
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(folder), device="cpu")
    got = ours(folder, "query", prompt_names={"query": "s2p_query"})
    np.testing.assert_allclose(got, st.encode_query(TEXTS, prompt_name="s2p_query"), atol=TOL, rtol=0)
    with pytest.raises(DistillError, match=r"prompt_names.query: 'nope' is not a prompt of .* has: .*s2p_query"):
        SentenceModel.load(teacher_spec({"model": str(folder), "prompt_names": {"query": "nope"}}), device="cpu")


def test_a_plain_folder_with_cls_is_simcses_pooler_output(tmp_path, bert):
    """A plain transformers folder assembled with pooling cls: the pooler output, tanh(W h_cls + b),
    computed here by BertModel itself."""
    from transformers import AutoTokenizer, BertModel

    model = SentenceModel.load(TeacherSpec(name="t", hub_id=str(bert), pooling="cls", max_length=64), device="cpu")
    got = model.encode(TEXTS, progress=False)
    tok = AutoTokenizer.from_pretrained(str(bert))
    bm = BertModel.from_pretrained(str(bert)).eval()
    with torch.no_grad():
        want = torch.cat([bm(**tok([t], return_tensors="pt")).pooler_output for t in TEXTS]).numpy()
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
    plain_mean = SentenceModel.load(TeacherSpec(name="t", hub_id=str(bert), pooling="mean", normalize=True), device="cpu")
    assert plain_mean.identity()["modules"] == ["Transformer", "Pooling", "Normalize"]


def test_settings_it_cannot_reproduce_are_errors_naming_them(tmp_path, bert):
    folder = st_folder(tmp_path / "st", bert, pooling="mean", normalize=True)
    with pytest.raises(DistillError, match=r"pooling 'cls_before_pooler', but .*1_Pooling/config.json declares 'mean'.*leave pooling unset"):
        describe(teacher_spec({"model": str(folder), "pooling": "cls_before_pooler"}), folder)
    with pytest.raises(DistillError, match=r"normalize false, but .*modules.json has a Normalize module"):
        describe(teacher_spec({"model": str(folder), "normalize": False}), folder)
    with pytest.raises(DistillError, match=r"truncate_dim 64 is more than the model's 32 dimensions"):
        describe(teacher_spec({"model": str(folder), "truncate_dim": 64}), folder)
    custom = json.loads((folder / "modules.json").read_text())
    custom.append({"idx": 3, "name": "3", "path": "3_Mine", "type": "my_package.MyModule"})
    (folder / "modules.json").write_text(json.dumps(custom))
    with pytest.raises(DistillError, match=r"module '3' is 'my_package.MyModule', the model's own code.*trust_remote_code: true"):
        SentenceModel.load(str(folder), device="cpu")
    (folder / "modules.json").write_text('[{"idx": 0,\n "type": ')
    with pytest.raises(DistillError, match=r"modules.json:2: not valid JSON"):
        SentenceModel.load(str(folder), device="cpu")
