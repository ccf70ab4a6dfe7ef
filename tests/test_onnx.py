"""ONNX export and the onnxruntime backend: agreement with PyTorch on padded batches, int8 quality,
STS tables, the CLI flags, and the errors. Real models only: a tiny random BERT and the packaged
all-MiniLM-L6-v2."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install -e '.[onnx]'; the test extra has it)")

from distill.cli import main  # noqa: E402
from distill.errors import DistillError  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Mixed lengths in ONE batch (so most rows are padded), and one far longer than any max length.
SENTENCES = [
    "Hi.",
    "A man is playing a guitar.",
    "The Berlin Wall fell on 9 November 1989, and crowds crossed the border all night long.",
    "ok",
    "Pandas eat bamboo in the mountains of Sichuan, mostly alone and mostly at dawn.",
    "word " * 600,
    "Ünïcödé façade, naïve café.",
    "",
]


def _st_folder(path, base, pooling="mean", dense=False, normalize=True, max_seq_length=16):
    import torch
    from sentence_transformers import SentenceTransformer

    try:
        from sentence_transformers.sentence_transformer import modules as m
    except ImportError:
        from sentence_transformers import models as m
    torch.manual_seed(1)
    mods = [m.Transformer(str(base), max_seq_length=max_seq_length)]
    dim = mods[0].auto_model.config.hidden_size
    mods.append(m.Pooling(dim, pooling_mode=pooling))
    if dense:
        mods.append(m.Dense(dim, 8, activation_function=torch.nn.Tanh()))
    if normalize:
        mods.append(m.Normalize())
    SentenceTransformer(modules=mods, device="cpu").save(str(path))
    return path


@pytest.fixture(scope="module")
def tiny_mean(tmp_path_factory, tiny_bert_dir):
    from distill.onnx.export import export_onnx

    folder = _st_folder(tmp_path_factory.mktemp("onnx") / "tiny-mean", tiny_bert_dir)
    export_onnx(folder, quantize="int8", log=lambda m: None)
    return folder


@pytest.fixture(scope="module")
def tiny_cls_dense(tmp_path_factory, tiny_bert_dir):
    from distill.onnx.export import export_onnx

    folder = _st_folder(tmp_path_factory.mktemp("onnx") / "tiny-cls", tiny_bert_dir, pooling="cls", dense=True, normalize=False)
    export_onnx(folder, log=lambda m: None)
    return folder


@pytest.fixture(scope="module")
def minilm_onnx(tmp_path_factory, minilm_path):
    """A copy of the packaged all-MiniLM-L6-v2 with onnx/ written by the CLI."""
    folder = tmp_path_factory.mktemp("onnx") / "minilm"
    shutil.copytree(minilm_path, folder)
    assert main(["export-onnx", str(folder), "--quantize", "int8"]) == 0
    return folder


def _st_encode(folder, sentences):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(folder), device="cpu").encode(sentences, batch_size=len(sentences), convert_to_numpy=True)


@pytest.mark.parametrize("which", ["tiny_mean", "tiny_cls_dense"])
def test_fp32_matches_pytorch_on_padded_batches(which, request):
    from distill.onnx.runtime import OnnxEncoder

    folder = request.getfixturevalue(which)
    onnx = OnnxEncoder.load(folder)
    ref = _st_encode(folder, SENTENCES)
    for batch_size in (len(SENTENCES), 3, 1):  # one padded batch, a few, none padded
        got = onnx.encode(SENTENCES, batch_size=batch_size)
        assert got.shape == ref.shape and got.dtype == np.float32
        assert np.abs(got - ref).max() <= 1e-4, batch_size
    meta = json.loads((folder / "onnx" / "distill_onnx.json").read_text())
    assert meta["files"]["model.onnx"]["max_abs_diff_vs_torch"] <= 1e-4
    assert sorted(p.name for p in (folder / "onnx").iterdir() if p.name.startswith(".")) == []  # no temp files left


@pytest.mark.integration
def test_minilm_fp32_matches_pytorch_and_encoder_at_both_lengths(minilm_onnx):
    from distill.encoder import Encoder
    from distill.onnx.runtime import OnnxEncoder

    onnx = OnnxEncoder.load(minilm_onnx)
    assert onnx.max_length == 256 and onnx.max_positions == 512
    np.testing.assert_allclose(onnx.encode(SENTENCES, batch_size=len(SENTENCES)), _st_encode(minilm_onnx, SENTENCES), atol=1e-4, rtol=0)
    enc = Encoder.load(str(minilm_onnx), device="cpu")
    for length in (enc.max_length, enc.max_positions):  # serving length, and the STS evaluation length
        ref = enc.encode(SENTENCES, batch_size=len(SENTENCES), progress=False, max_length=length, precision="fp32")
        got = onnx.encode(SENTENCES, batch_size=len(SENTENCES), max_length=length)
        assert np.abs(got - ref).max() <= 1e-4, length


@pytest.mark.integration
def test_int8_keeps_cosine_on_real_sentences(minilm_onnx, sts_dir):
    from distill.eval.sts_data import load_sts
    from distill.onnx.runtime import OnnxEncoder

    pairs = load_sts("STS-B", sts_dir)
    sentences = sorted(set(pairs.sentences1))[:400]
    fp32 = OnnxEncoder.load(minilm_onnx).encode(sentences)
    int8 = OnnxEncoder.load(minilm_onnx, quantized=True).encode(sentences)
    cos = (fp32 * int8).sum(1) / (np.linalg.norm(fp32, axis=1) * np.linalg.norm(int8, axis=1))
    # Measured on 1,500 STS-B sentences: mean 0.993, 1st percentile 0.980, min 0.959 (very short ones).
    assert cos.mean() >= 0.98 and np.percentile(cos, 5) >= 0.98 and cos.min() >= 0.9, (cos.mean(), cos.min())
    assert (minilm_onnx / "onnx" / "model_qint8.onnx").stat().st_size < 0.7 * (minilm_onnx / "onnx" / "model.onnx").stat().st_size


def test_sts_table_of_onnx_equals_pytorch(tiny_mean, sts_dir):
    from distill.eval.sts import evaluate_sts

    tasks = ["STS-B", "SICK-R"]
    torch_scores = evaluate_sts(str(tiny_mean), tasks=tasks, sts_dir=sts_dir, progress=False)
    onnx_scores = evaluate_sts(str(tiny_mean), tasks=tasks, sts_dir=sts_dir, progress=False, backend="onnx")
    assert set(onnx_scores) == set(torch_scores)
    for key in torch_scores:
        assert round(onnx_scores[key], 2) == round(torch_scores[key], 2), key


@pytest.mark.integration
def test_minilm_sts_subset_cli_onnx_equals_torch(minilm_onnx, sts_dir, tmp_path, capsys):
    from distill.eval.sts import evaluate_sts
    from distill.eval.sts_data import STSPairs, load_sts

    full = load_sts("STS-B", sts_dir)
    sub = {"STS-B": STSPairs("STS-B", full.sentences1[:300], full.sentences2[:300], full.scores[:300])}
    t = evaluate_sts(str(minilm_onnx), tasks=["STS-B"], data=sub, progress=False)
    o = evaluate_sts(str(minilm_onnx), tasks=["STS-B"], data=sub, progress=False, backend="onnx")
    assert abs(t["STS-B"] - o["STS-B"]) < 0.005
    # the CLI on the full STS-B with the onnx backend agrees with the same call in Python
    out = tmp_path / "s.json"
    assert main(["eval", "--model", str(minilm_onnx), "--sts-dir", str(sts_dir), "--tasks", "STS-B", "--backend", "onnx", "--quiet", "--json", str(out)]) == 0
    cli = json.loads(out.read_text())["scores"]["STS-B"]
    assert cli == pytest.approx(evaluate_sts(str(minilm_onnx), tasks=["STS-B"], sts_dir=sts_dir, progress=False, backend="onnx")["STS-B"])
    assert "STS-B" in capsys.readouterr().out


def test_cli_encode_similarity_pipeline_retrieval_with_onnx(tiny_mean, tmp_path, capsys):
    from distill import pipeline

    src = tmp_path / "in.txt"
    src.write_text("\n".join(s for s in SENTENCES if s) + "\n", encoding="utf-8")
    ref = _st_encode(tiny_mean, [s for s in SENTENCES if s])
    for extra, tol in (([], 1e-4), (["--quantized"], 0.2)):
        out = tmp_path / f"emb{len(extra)}.npy"
        assert main(["encode", "--model", str(tiny_mean), "--input", str(src), "--out", str(out), "--quiet", "--backend", "onnx", *extra]) == 0
        assert np.abs(np.load(out) - ref).max() <= tol
    source, cands = "A man is playing a guitar.", ["Someone plays music.", "A cat sleeps."]
    assert main(["similarity", "--model", str(tiny_mean), "--source", source, "--compare", *cands, "--json", "--backend", "onnx"]) == 0
    cli_scores = [r["score"] for r in sorted(json.loads(capsys.readouterr().out)["results"], key=lambda r: r["index"])]
    torch_scores = pipeline(str(tiny_mean))({"source_sentence": [source], "sentences_to_compare": cands})["scores"]
    onnx_scores = pipeline(str(tiny_mean), backend="onnx")({"source_sentence": [source], "sentences_to_compare": cands})["scores"]
    np.testing.assert_allclose(onnx_scores, torch_scores, atol=1e-4)
    np.testing.assert_allclose(cli_scores, torch_scores, atol=1e-4)
    (tmp_path / "q.tsv").write_text("q1\tA man is playing a guitar.\nq2\tPandas eat bamboo.\n", encoding="utf-8")
    (tmp_path / "c.tsv").write_text("d1\tSomeone plays music.\nd2\tBears eat bamboo shoots.\nd3\tA cat sleeps.\n", encoding="utf-8")
    (tmp_path / "r.tsv").write_text("q1\td1\t1\nq2\td2\t1\n", encoding="utf-8")
    files = ["--queries", str(tmp_path / "q.tsv"), "--corpus", str(tmp_path / "c.tsv"), "--qrels", str(tmp_path / "r.tsv"), "--k", "1,3", "--quiet"]
    outs = {}
    for backend in ("torch", "onnx"):
        assert main(["eval-retrieval", "--model", str(tiny_mean), *files, "--backend", backend, "--json", str(tmp_path / f"{backend}.json")]) == 0
        outs[backend] = json.loads((tmp_path / f"{backend}.json").read_text())
    assert outs["onnx"]["MRR@10"] == pytest.approx(outs["torch"]["MRR@10"]) and outs["onnx"]["Recall@3"] == 1.0


def test_encoder_onnx_and_collate_pad_the_same_batches(tiny_mean):
    """The three users of distill.data.padding agree: Encoder.encode and OnnxEncoder.encode feed
    their models the same batches, in the same order, with the same padding, and the training
    collate pads those rows of the pre-tokenized corpus the same way."""
    from distill.data.tokens import tokenize_corpus
    from distill.encoder import Encoder
    from distill.onnx.runtime import OnnxEncoder

    enc, onnx = Encoder.load(str(tiny_mean), device="cpu"), OnnxEncoder.load(tiny_mean)
    sentences = SENTENCES * 3  # duplicates, the empty sentence, one longer than both max lengths
    for max_length, batch_size in ((16, 4), (64, 5), (16, 64)):
        torch_batches = list(enc._batches(sentences, batch_size, max_length))
        onnx_batches = list(onnx._batches(sentences, batch_size, max_length))
        corpus = tokenize_corpus(enc.tokenizer, sentences, max_length, progress=False)
        assert len(torch_batches) == len(onnx_batches) == -(-len(sentences) // batch_size)
        for (t_idx, t_ids, t_mask), (o_idx, o_ids, o_mask) in zip(torch_batches, onnx_batches):
            np.testing.assert_array_equal(t_idx, o_idx)
            np.testing.assert_array_equal(t_ids.numpy(), o_ids)
            np.testing.assert_array_equal(t_mask.numpy(), o_mask)
            c_ids, c_mask = corpus.collate(t_idx)
            np.testing.assert_array_equal(c_ids.numpy(), o_ids)
            np.testing.assert_array_equal(c_mask.numpy(), o_mask)
        assert max(len(i) for i, _, _ in onnx_batches) == min(batch_size, len(sentences))


def test_inference_path_imports_no_torch(tiny_mean):
    code = (
        "import sys; from distill.onnx.runtime import OnnxEncoder; "
        f"e = OnnxEncoder.load({str(tiny_mean)!r}, quantized=True); x = e.encode(['a b c', 'hello there']); "
        "assert x.shape == (2, 32); assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    )
    env = {**os.environ, "PYTHONPATH": REPO}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


def test_bad_inputs_are_clear_errors(tiny_mean, tiny_bert_dir, tmp_path, capsys, monkeypatch):
    from distill.onnx.export import export_onnx
    from distill.onnx.runtime import OnnxEncoder

    plain = _st_folder(tmp_path / "no-onnx", tiny_bert_dir)
    src = tmp_path / "in.txt"
    src.write_text("one\ntwo\n", encoding="utf-8")
    # a folder without onnx/: names the command that writes it
    assert main(["encode", "--model", str(plain), "--input", str(src), "--out", str(tmp_path / "x.npy"), "--backend", "onnx"]) == 2
    assert "distill export-onnx" in capsys.readouterr().err
    # only fp32 exported, int8 asked for
    fp32_only = tmp_path / "fp32-only"
    shutil.copytree(tiny_mean, fp32_only)
    (fp32_only / "onnx" / "model_qint8.onnx").unlink()
    with pytest.raises(DistillError, match="--quantize int8"):
        OnnxEncoder.load(fp32_only, quantized=True)
    # ONNX flags without the onnx backend, and both file choices at once
    assert main(["eval", "--model", str(tiny_mean), "--quantized"]) == 2
    assert "need --backend onnx" in capsys.readouterr().err
    with pytest.raises(DistillError, match="not both"):
        OnnxEncoder.load(tiny_mean, quantized=True, onnx_file="model.onnx")
    # not a sentence-transformers folder; an unknown quantization
    assert main(["export-onnx", str(tiny_bert_dir)]) == 2
    assert "not a sentence-transformers folder" in capsys.readouterr().err
    with pytest.raises(DistillError, match="only int8"):
        export_onnx(plain, quantize="int4")
    # an ONNX file another tool wrote is not replaced without --overwrite
    foreign = tmp_path / "foreign"
    shutil.copytree(plain, foreign)
    (foreign / "onnx").mkdir()
    (foreign / "onnx" / "model.onnx").write_bytes(b"not onnx")
    assert main(["export-onnx", str(foreign)]) == 2
    assert "--overwrite" in capsys.readouterr().err and (foreign / "onnx" / "model.onnx").read_bytes() == b"not onnx"
    # ... nor read as ours; a corrupt file is named
    with pytest.raises(DistillError, match="not written by distill"):
        OnnxEncoder.load(foreign)
    broken = tmp_path / "broken"
    shutil.copytree(tiny_mean, broken)
    model_file = broken / "onnx" / "model.onnx"
    model_file.write_bytes(b"garbage".ljust(model_file.stat().st_size, b"\0"))  # the size the record says
    with pytest.raises(DistillError, match="onnxruntime cannot load it"):
        OnnxEncoder.load(broken)
    model_file.write_bytes(b"garbage")  # another size: not the file the record describes
    with pytest.raises(DistillError, match=r"model\.onnx: 7 bytes, not the \d+ that .*distill_onnx\.json records .*export-onnx"):
        OnnxEncoder.load(broken)
    cut = tmp_path / "cut-tokenizer"  # a tokenizer.json cut short: named, not the Rust tokenizer's bare Exception
    shutil.copytree(tiny_mean, cut)
    (cut / "tokenizer.json").write_bytes((cut / "tokenizer.json").read_bytes()[:2000])
    with pytest.raises(DistillError, match=rf"^{cut}/tokenizer\.json:\d+: not valid JSON"):
        OnnxEncoder.load(cut)
    # sentences must be strings; the GPU is not the onnx backend's
    with pytest.raises(DistillError, match="sentence 1 is a int"):
        OnnxEncoder.load(tiny_mean).encode(["fine", 3])
    with pytest.raises(DistillError, match="between 1 and the model's limit"):
        OnnxEncoder.load(tiny_mean).encode(["fine"], max_length=100_000)
    assert main(["encode", "--model", str(tiny_mean), "--input", str(src), "--out", str(tmp_path / "x.npy"), "--backend", "onnx", "--device", "cuda"]) == 2
    assert "runs on the CPU" in capsys.readouterr().err
    # onnxruntime missing: what to install
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(DistillError, match="pip install"):
        OnnxEncoder.load(tiny_mean)
    assert main(["export-onnx", str(plain)]) == 2
    assert "pip install" in capsys.readouterr().err


def test_export_run_with_onnx_flag(tmp_path, tiny_home, monkeypatch, capsys, sts_dir):
    """`distill export RUN --out DIR --onnx --quantize int8` on a trained (tiny) run: the HPD head (Dense+tanh) is in the graph."""
    from conftest import tiny_recipe_text

    from distill.config import load_recipe
    from distill.onnx.runtime import OnnxEncoder
    from distill.training.run import train

    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(tiny_recipe_text(tmp_path, loss="name: hpd, k: 8", steps=2, every=2))
    train(load_recipe(recipe), progress=False)
    out = tmp_path / "export"
    assert main(["export", str(tmp_path / "run"), "--out", str(out), "--onnx", "--quantize", "int8"]) == 0
    assert "max abs difference to PyTorch" in capsys.readouterr().err
    assert sorted(p.name for p in (out / "onnx").iterdir()) == ["distill_onnx.json", "model.onnx", "model_qint8.onnx"]
    onnx = OnnxEncoder.load(out)
    assert onnx.dim == 8 and json.loads((out / "onnx" / "distill_onnx.json").read_text())["dense"] == ["Tanh"]
    np.testing.assert_allclose(onnx.encode(SENTENCES, batch_size=len(SENTENCES)), _st_encode(out, SENTENCES), atol=1e-4, rtol=0)


def test_export_onnx_twice_and_on_a_run_folder(tiny_mean, trained_run, tmp_path, capsys):
    """Twice: the second export replaces distill's own files (same graph, same check), keeps the
    int8 file it wrote before; a run folder (not a sentence-transformers folder) is refused; a
    folder without tokenizer.json does not serve."""
    from distill.onnx.runtime import OnnxEncoder

    folder = tmp_path / "st"
    shutil.copytree(tiny_mean, folder)
    first = json.loads((folder / "onnx" / "distill_onnx.json").read_text())
    assert main(["export-onnx", str(folder)]) == 0
    again = json.loads((folder / "onnx" / "distill_onnx.json").read_text())
    assert sorted(again["files"]) == ["model.onnx", "model_qint8.onnx"] and again["files"]["model_qint8.onnx"] == first["files"]["model_qint8.onnx"]
    assert sorted(p.name for p in (folder / "onnx").iterdir()) == ["distill_onnx.json", "model.onnx", "model_qint8.onnx"]  # no temp files
    np.testing.assert_allclose(OnnxEncoder.load(folder).encode(["A man plays a guitar."]),
                               OnnxEncoder.load(tiny_mean).encode(["A man plays a guitar."]), atol=1e-6)
    for run_folder in (trained_run, trained_run / "best"):
        assert main(["export-onnx", str(run_folder)]) == 2
        assert "not a sentence-transformers folder (no modules.json); export a run first" in capsys.readouterr().err
    assert not (trained_run / "onnx").exists() and not (trained_run / "best" / "onnx").exists()
    (folder / "tokenizer.json").unlink()
    with pytest.raises(DistillError, match=rf"{folder}: no tokenizer.json"):
        OnnxEncoder.load(folder)


# A kill -9 at a chosen point of export-onnx: right after os.replace has put a file of that name in place.
KILLED_ONNX_EXPORT = """import os, signal, sys
real_replace = os.replace
def replace(src, dst, *args, **kwargs):
    real_replace(src, dst, *args, **kwargs)
    if os.path.basename(str(dst)) == sys.argv[1]:
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
from distill.cli import main
main(sys.argv[2:])
"""


def test_export_onnx_killed_with_model_onnx_in_place_leaves_a_folder_the_next_export_takes(tiny_mean, tmp_path):
    """Issue 38, failure 9: killed with model.onnx in place and no record, the next export-onnx
    refused the file as another tool's. Now the record is written before the files are renamed in:
    the folder serves, the next export-onnx takes it, and the killed export's temp folder is gone
    after it. (Killed between the record and the rename, a first export leaves the record and no
    model.onnx: the runtime says which command to run, and the next export-onnx takes the folder.)"""
    from distill.onnx.runtime import OnnxEncoder

    folder = tmp_path / "st"
    shutil.copytree(tiny_mean, folder)
    shutil.rmtree(folder / "onnx")
    proc = subprocess.run([sys.executable, "-c", KILLED_ONNX_EXPORT, "model.onnx", "export-onnx", str(folder)],
                          cwd=REPO, env={**os.environ, "PYTHONPATH": REPO}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    onnx_dir = folder / "onnx"
    assert (onnx_dir / "distill_onnx.json").is_file()  # never a model.onnx without the record
    assert OnnxEncoder.load(folder).encode(["A man plays a guitar."]).shape == (1, 32)
    assert [p.name for p in onnx_dir.iterdir() if p.name.startswith(".")]  # the killed export's temp folder
    assert main(["export-onnx", str(folder)]) == 0
    assert sorted(p.name for p in onnx_dir.iterdir()) == ["distill_onnx.json", "model.onnx"]  # its temp folder removed
    np.testing.assert_allclose(OnnxEncoder.load(folder).encode(SENTENCES), OnnxEncoder.load(tiny_mean).encode(SENTENCES), atol=1e-6)


def test_export_onnx_on_a_folder_it_cannot_write_or_a_full_disk(tiny_mean, tmp_path, capsys, monkeypatch):
    """Issue 38, failure 6: an onnx/ that cannot be written is refused before the model loads, a
    disk that fills up mid-export is one line naming the folder, and onnx/ keeps what it had."""
    from conftest import file_size_limit

    folder = tmp_path / "st"
    shutil.copytree(tiny_mean, folder)
    shutil.rmtree(folder / "onnx")
    (folder / "onnx").write_text("a file where the onnx folder goes")
    with monkeypatch.context() as m:
        m.setattr("sentence_transformers.SentenceTransformer", lambda *a, **k: pytest.fail("the model loaded before the folder was checked"))
        assert main(["export-onnx", str(folder)]) == 2
    err = capsys.readouterr().err
    assert f"export-onnx {folder / 'onnx' / 'model.onnx'}: cannot be written, {folder / 'onnx'} exists and is not a folder" in err, err
    (folder / "onnx").unlink()
    shutil.copytree(tiny_mean / "onnx", folder / "onnx")
    before = {p.name: p.read_bytes() for p in (folder / "onnx").iterdir()}
    with file_size_limit(1_000_000):  # model.onnx of the tiny BERT is ~4 MB
        code = main(["export-onnx", str(folder)])
    err = capsys.readouterr().err
    assert code == 2 and f"export-onnx {folder / 'onnx'}: File too large (EFBIG)" in err and "Traceback" not in err, err
    assert {p.name: p.read_bytes() for p in (folder / "onnx").iterdir()} == before  # no temp folder, the files as they were
