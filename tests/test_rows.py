"""Stage 2 on rows of N texts (anchor, positive, negative_1..negative_k): the in-batch contrast for
any k against explicit loops, the reader of every format and its errors, the recipe keys (old
names included), and tiny end-to-end stage-2 runs with two negatives per row."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import STS_DIR, tiny_recipe_text
from sentences import CONTRADICTIONS, PARAPHRASES, SENTENCES

from distill.config import load_recipe, saved_recipe_with_defaults
from distill.data.rows import read_rows
from distill.errors import DistillError
from distill.losses import LOSSES, IBKDSupervisedLoss, MNRLLoss, STDistillLoss, build_loss, load_loss

# ----------------------------------------------------------------------------------------------
# independent float64 references: loops over anchors and candidates


def _unit(v: np.ndarray) -> np.ndarray:
    return v / math.sqrt(sum(x * x for x in v))


def ref_row_contrast(anchors, positives, negatives, tau: float) -> float:
    """mean_i -log softmax: anchor i against every positive, then every negative column's rows."""
    candidates = list(positives) + [row for column in negatives for row in column]
    total = 0.0
    for i, a in enumerate(anchors):
        logits = [float(np.dot(_unit(a), _unit(c))) / tau for c in candidates]
        top = max(logits)
        log_sum = top + math.log(sum(math.exp(v - top) for v in logits))
        total += log_sum - logits[i]  # the positive of anchor i is candidate i
    return total / len(anchors)


def ref_hsic(x: np.ndarray, s: np.ndarray, gamma: float) -> float:
    """Biased HSIC with Gaussian kernels exp(-gamma ||a - b||^2): sum_ij Kc_ij Lc_ij / (n - 1)^2,
    Kc and Lc the double-centered kernels."""
    n = len(x)

    def centered(z):
        k = [[math.exp(-gamma * sum((z[i][d] - z[j][d]) ** 2 for d in range(z.shape[1]))) for j in range(n)] for i in range(n)]
        row = [sum(k[i]) / n for i in range(n)]
        total = sum(row) / n
        return [[k[i][j] - row[i] - row[j] + total for j in range(n)] for i in range(n)]

    kc, lc = centered(x), centered(s)
    return sum(kc[i][j] * lc[i][j] for i in range(n) for j in range(n)) / (n - 1) ** 2


def _out(seed: int, n: int = 5, d: int = 6, seq: int = 4, layers: int = 3) -> dict:
    g = torch.Generator().manual_seed(seed)
    hidden = tuple(torch.randn(n, seq, d, generator=g, dtype=torch.float64) for _ in range(layers))
    lengths = torch.randint(1, seq + 1, (n,), generator=g)
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    return {"embedding": torch.randn(n, d, generator=g, dtype=torch.float64) * 3, "hidden_states": hidden, "attention_mask": mask}


def _masked_mean(o: dict, layer: int) -> np.ndarray:
    h, mask = o["hidden_states"][layer].numpy(), o["attention_mask"].numpy()
    return np.array([sum(h[i, t] for t in range(h.shape[1]) if mask[i, t]) / mask[i].sum() for i in range(h.shape[0])])


@pytest.mark.parametrize("k", [0, 1, 3])
def test_in_batch_contrast_over_k_negatives_matches_explicit_loops(k):
    outs = [_out(seed=100 + c) for c in range(2 + k)]
    vectors = [o["embedding"].numpy() for o in outs]
    # mnrl: the student's own vectors, tau 0.05 (sentence-transformers' scale 20)
    mnrl = MNRLLoss(6).double()
    got = mnrl(*outs)
    assert got["loss"].item() == pytest.approx(ref_row_contrast(vectors[0], vectors[1], vectors[2:], 0.05), rel=1e-12)
    assert set(got) == {"loss", "infonce", "hsic", "nhsic", "hsic_gamma", "hsic_gamma_x"}  # HSIC watched only (lam 0)
    # ibkd_supervised: through its linear head, plus lam * HSIC over every text of the batch
    torch.manual_seed(k)
    ibkd = IBKDSupervisedLoss(6, tau=0.1, lam=0.5, gamma=0.1, hsic_layer=-2, head="linear", head_dim=4).double()
    w, b = ibkd.head.weight.detach().numpy(), ibkd.head.bias.detach().numpy()
    heads = [np.array([w @ v + b for v in column]) for column in vectors]
    nce = ref_row_contrast(heads[0], heads[1], heads[2:], 0.1)
    x = np.concatenate([_masked_mean(o, -2) for o in outs])
    hs = ref_hsic(x, np.concatenate(vectors), 0.1)
    got = ibkd(*outs)
    assert got["infonce"].item() == pytest.approx(nce, rel=1e-12)
    assert got["hsic"].item() == pytest.approx(hs, rel=1e-10)
    assert got["loss"].item() == pytest.approx(nce + 0.5 * hs, rel=1e-12)


def test_mnrl_is_sentence_transformers_multiple_negatives_ranking_loss(tiny_bert_dir):
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    model = SentenceTransformer(str(tiny_bert_dir), device="cpu").eval()  # mean pooling over the tiny BERT
    st = MultipleNegativesRankingLoss(model)  # scale 20, cos_sim
    g = torch.Generator().manual_seed(5)
    for k in (0, 1, 3):
        columns = [torch.randn(6, 8, generator=g, dtype=torch.float64) for _ in range(2 + k)]
        ours = MNRLLoss(8)(*({"embedding": c} for c in columns))["loss"]
        assert ours.item() == pytest.approx(st.compute_loss_from_embeddings(columns, None).item(), rel=1e-12), k
    # and as a sentence-transformers loss (the adapter), on four text columns: two negatives per row
    features = [model.tokenize(texts) for texts in (SENTENCES, PARAPHRASES, CONTRADICTIONS, SENTENCES[1:] + SENTENCES[:1])]
    with torch.no_grad():
        assert STDistillLoss.build(model, "mnrl")(features, None).item() == pytest.approx(st(features, None).item(), rel=1e-5)


def test_anchors_padded_apart_from_the_passages_change_no_loss():
    """Stage 2 runs the anchors and the other columns as two forwards, each padded to its own
    longest text (short queries beside long passages). Against each text embedded alone, with no
    padding at all (the contrast), and against one forward padded to the longest text of the
    whole batch (the contrast plus the HSIC term over masked hidden states), in float64."""
    from loss_refs import minilm_tokenizer, tiny_encoder

    from distill.training.stages import RowsModule

    enc = tiny_encoder(minilm_tokenizer()).double().eval()
    n = 4
    anchors = [s.split()[0] + " " + s.split()[1] for s in SENTENCES[:n]]  # queries of two words
    columns = [anchors, *([" ".join([p, *SENTENCES[i:i + 2]]) for i, p in enumerate(col[:n])] for col in (PARAPHRASES, CONTRADICTIONS, SENTENCES[4:]))]
    a = enc.tokenize(anchors)
    r = enc.tokenize([t for col in columns[1:] for t in col])
    assert a["input_ids"].shape[1] < r["input_ids"].shape[1] // 2  # the anchors really are padded apart

    with torch.no_grad():
        alone = [enc(**{k: v for k, v in enc.tokenize([t]).items() if k in ("input_ids", "attention_mask")})["embedding"][0].numpy()
                 for col in columns for t in col]
        got = RowsModule(enc, MNRLLoss(32), 4)(a["input_ids"], a["attention_mask"], r["input_ids"], r["attention_mask"], n)
        ref = ref_row_contrast(alone[:n], alone[n:2 * n], [alone[2 * n:3 * n], alone[3 * n:]], 0.05)
        assert got["loss"].item() == pytest.approx(ref, rel=1e-10)

        ib = IBKDSupervisedLoss(32, lam=1.0, gamma=0.1, hsic_layer=-2, head="none").double()
        got = RowsModule(enc, ib, 4)(a["input_ids"], a["attention_mask"], r["input_ids"], r["attention_mask"], n)
        one = enc.tokenize([t for col in columns for t in col])  # the old way: one forward, one padding
        out = enc(one["input_ids"], one["attention_mask"], output_hidden_states=True)
        parts = [{"embedding": out["embedding"][i * n:(i + 1) * n], "attention_mask": one["attention_mask"][i * n:(i + 1) * n],
                  "hidden_states": tuple(h[i * n:(i + 1) * n] for h in out["hidden_states"])} for i in range(4)]
        want = ib(*parts)
        assert got["hsic"].item() == pytest.approx(want["hsic"].item(), rel=1e-9)
        assert got["loss"].item() == pytest.approx(want["loss"].item(), rel=1e-10)
    with pytest.raises(DistillError, match="not 4 columns of 4 rows"):
        RowsModule(enc, MNRLLoss(32), 4)(a["input_ids"], a["attention_mask"], r["input_ids"][:-1], r["attention_mask"][:-1], n)


def test_stage2_losses_are_chosen_by_name_and_checked_by_their_rules(tmp_path):
    assert [n for n, cls in LOSSES.items() if cls.stage == 2] == ["ibkd_supervised", "mnrl"]
    assert MNRLLoss.defaults() == {"tau": 0.05}
    loss = build_loss({"name": "mnrl", "tau": 0.1}, 8, None)
    assert isinstance(loss, MNRLLoss) and loss.tau == 0.1 and not list(loss.parameters()) and loss.embedding_head() is None
    assert not loss.needs_hidden_states and loss.get_config_dict() == {"tau": 0.1}
    again = load_loss({"name": "mnrl", "tau": 0.1}, 8, {})  # what export does with a saved mnrl student
    assert isinstance(again, MNRLLoss)
    # no re-check in the constructor: the recipe's rules are the check, run when a recipe is read
    recipe = _recipe_file(tmp_path)
    for override, message in [
        ("stage2.loss.tau=0", r"stage2.loss.tau: must be a number > 0, got 0.0"),
        ("stage2.loss.lam=-1", r"stage2.loss.lam: must be a number >= 0, got -1.0"),
        ("stage2.loss={name: mnrl, tau: -1}", r"stage2.loss.tau: must be a number > 0, got -1.0"),
        ("stage2.loss={name: mnrl, lam: 1}", r"unknown key stage2.loss.lam for loss 'mnrl' \(it takes: tau\)"),
        ("stage2.loss.name=ibkd", r"stage2.loss.name 'ibkd' is not one of ibkd_supervised, mnrl"),
    ]:
        with pytest.raises(DistillError, match=message):
            load_recipe(recipe, [override])
    with pytest.raises(DistillError, match="head_dim must be unset"):  # a widths check no rule can make
        IBKDSupervisedLoss(8, head="none", head_dim=4)


# ----------------------------------------------------------------------------------------------
# the reader


def _retrieval_line(query, positives, negatives):
    return json.dumps({"query": query, "positive_passages": positives, "negative_passages": negatives})


def test_named_columns_from_csv_tsv_and_jsonl(tmp_path):
    (tmp_path / "n.csv").write_text("query,answer,negative_1,negative_2,score\nq1,a1,n11,n12,3\n\nq2,\"a2, quoted\",n21,n22,1\n")
    rows = read_rows([str(tmp_path / "n.csv")], ["query", "answer", "negative_1", "negative_2"])
    assert rows == [("q1", "a1", "n11", "n12"), ("q2", "a2, quoted", "n21", "n22")]  # blank line skipped
    (tmp_path / "p.tsv").write_text("anchor\tpositive\nq1\ta1\nq2\ta2\n")
    assert read_rows([str(tmp_path / "p.tsv")], ["anchor", "positive"]) == [("q1", "a1"), ("q2", "a2")]  # k = 0
    (tmp_path / "t.jsonl").write_text('{"anchor": "a", "positive": "p", "negative": "n", "id": 1}\n\n{"anchor": "b", "positive": "q", "negative": "m"}\n')
    assert read_rows([str(tmp_path / "t.jsonl")], ["anchor", "positive", "negative"]) == [("a", "p", "n"), ("b", "q", "m")]
    (tmp_path / "nli.csv").write_text("sent0,sent1,hard_neg\nx,y,z\n")  # SimCSE's names, whatever the recipe's
    assert read_rows([str(tmp_path / "nli.csv")], ["anchor", "positive", "negative"]) == [("x", "y", "z")]
    # several sources in order, cut at the limit
    assert read_rows([str(tmp_path / "t.jsonl"), str(tmp_path / "nli.csv")], ["anchor", "positive", "negative"], limit=3)[-1] == ("x", "y", "z")
    assert len(read_rows([str(tmp_path / "t.jsonl"), str(tmp_path / "nli.csv")], ["anchor", "positive", "negative"], limit=1)) == 1


def test_retrieval_jsonl_of_the_model_cards(tmp_path):
    """CoROM / Tevatron training lines: the first positive and the first neg_samples negatives,
    a title joined as "title text"."""
    lines = [
        _retrieval_line("q one", [{"docid": "1", "title": "T1", "text": "pos one"}, {"docid": "9", "text": "second pos"}],
                        [{"docid": str(i), "title": "", "text": f"neg {i}"} for i in range(5)]),
        _retrieval_line("q two", [{"text": "pos two"}], [{"title": "Tn", "text": "neg a"}, {"text": "neg b"}, {"text": "neg c"}]),
    ]
    path = tmp_path / "train.jsonl"
    path.write_text("\n".join(lines) + "\n")
    assert read_rows([str(path)], ["anchor", "positive"], neg_samples=2) == [
        ("q one", "T1 pos one", "neg 0", "neg 1"), ("q two", "pos two", "Tn neg a", "neg b")]
    assert read_rows([str(path)], ["anchor", "positive"], neg_samples=0) == [("q one", "T1 pos one"), ("q two", "pos two")]
    with pytest.raises(DistillError, match=rf"{path}:2: 3 negative passages, fewer than stage2.neg_samples = 4"):
        read_rows([str(path)], ["anchor", "positive"])  # the seed cards' default, 4


@pytest.mark.parametrize("name,text,message", [
    ("short.csv", "anchor,positive,negative\na,p,n\na,p\n", r"short\.csv:3: 2 fields, the header names 3"),
    ("empty.csv", "anchor,positive,negative\na,p,n\na, ,n\n", r"empty\.csv:3: 'positive' is empty"),
    ("cols.csv", "a,b,c\n1,2,3\n", r"cols\.csv:1: needs the columns anchor, positive, negative \(found: a, b, c\)"),
    ("bad.jsonl", '{"anchor": "a", "positive": "p", "negative": "n"}\n{"anchor": "a",\n', r"bad\.jsonl:2: not valid JSON"),
    ("miss.jsonl", '{"anchor": "a", "positive": "p", "negative": "n"}\n{"anchor": "a", "positive": "p"}\n', r"miss\.jsonl:2: no column 'negative'"),
    ("num.jsonl", '{"anchor": "a", "positive": 7, "negative": "n"}\n', r"num\.jsonl:1: 'positive' must be a string, got int 7"),
    ("nopos.jsonl", _retrieval_line("q", [], [{"text": "n"}] * 4) + "\n", r"nopos\.jsonl:1: no positive passage"),
    ("notext.jsonl", _retrieval_line("q", [{"text": "p"}], [{"text": "n"}] * 3 + [{"title": "t"}]) + "\n",
     r"notext\.jsonl:1: negative_passages\[3\] must be an object with a 'text'"),
    ("emptyneg.jsonl", _retrieval_line("q", [{"text": "p"}], [{"text": "n"}] * 3 + [{"title": "t", "text": ""}]) + "\n",
     r"emptyneg\.jsonl:1: 'negative_passages\[3\]\.text' is empty"),
    ("noquery.jsonl", _retrieval_line("", [{"text": "p"}], [{"text": "n"}] * 4) + "\n", r"noquery\.jsonl:1: 'query' is empty"),
])
def test_every_malformed_line_is_named(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(DistillError, match=message):
        read_rows([str(tmp_path / name)], ["anchor", "positive", "negative"])


def test_sources_of_different_widths_and_bad_names_are_refused(tmp_path):
    (tmp_path / "three.csv").write_text("anchor,positive,negative\na,p,n\n")
    (tmp_path / "r.jsonl").write_text(_retrieval_line("q", [{"text": "p"}], [{"text": "n"}] * 4) + "\n")
    with pytest.raises(DistillError, match=r"r\.jsonl gives rows of 6 texts, .*three\.csv rows of 3"):
        read_rows([str(tmp_path / "three.csv"), str(tmp_path / "r.jsonl")], ["anchor", "positive", "negative"])
    assert len(read_rows([str(tmp_path / "three.csv"), str(tmp_path / "r.jsonl")], ["anchor", "positive", "negative"], neg_samples=1)) == 2
    with pytest.raises(DistillError, match="stage2.rows: file not found"):
        read_rows([str(tmp_path / "missing.csv")], ["anchor", "positive"])
    with pytest.raises(DistillError, match="at least two names"):
        read_rows([str(tmp_path / "three.csv")], ["anchor"])


def test_hub_datasets_are_read_like_files(monkeypatch):
    """A hub name goes through datasets.load_dataset; here a local datasets.Dataset is what the
    download would return (no network in tests)."""
    datasets = pytest.importorskip("datasets")
    tables = {
        "org/nli": datasets.Dataset.from_dict({"anchor": ["a1", "a2"], "positive": ["p1", "p2"], "negative": ["n1", "n2"]}),
        "org/tevatron": datasets.Dataset.from_dict({
            "query": ["q1"], "positive_passages": [[{"docid": "1", "title": "T", "text": "p"}]],
            "negative_passages": [[{"docid": "2", "title": "", "text": "n"}]],
        }),
        "org/holes": datasets.Dataset.from_dict({"anchor": ["a1", "a2"], "positive": ["p1", ""]}),
    }
    monkeypatch.setattr(datasets, "load_dataset", lambda name, subset=None, split=None: tables[name])
    assert read_rows(["org/nli"], ["anchor", "positive", "negative"], limit=1) == [("a1", "p1", "n1")]
    assert read_rows(["org/tevatron"], ["anchor", "positive"], neg_samples=1) == [("q1", "T p", "n")]
    with pytest.raises(DistillError, match=r"org/holes row 2: 'positive' is empty"):
        read_rows(["org/holes"], ["anchor", "positive"])


# ----------------------------------------------------------------------------------------------
# the recipe: stage2.rows (old name stage2.triplets), max_rows (max_triplets), neg_samples, loss.name

BASE = "teacher: all-minilm-l6-v2\nstudent: all-minilm-l3-v2\nloss: {name: ibkd}\n"


def _recipe_file(tmp_path, stage2: str = "{rows: [a.csv]}"):
    path = tmp_path / "r.yaml"
    path.write_text(BASE + f"stage2: {stage2}\n")
    return path


def test_old_stage2_key_names_still_read_and_resume(tmp_path):
    old = load_recipe(_recipe_file(tmp_path, "{triplets: [a.csv], max_triplets: 10, loss: {lam: 0.5}}"))
    new = load_recipe(_recipe_file(tmp_path, "{rows: [a.csv], max_rows: 10, loss: {name: ibkd_supervised, lam: 0.5}}"))
    assert old.to_dict() == new.to_dict() and old.stage2.rows == ["a.csv"] and old.stage2.max_rows == 10
    assert new.stage2.neg_samples == 4 and new.stage2.loss["name"] == "ibkd_supervised"
    # a checkpoint's recipe saved before the rename (triplets, max_triplets, no neg_samples, no loss
    # name) compares equal to the same recipe read now: --resume of an old run goes on
    saved = new.to_dict()
    saved["stage2"]["triplets"] = saved["stage2"].pop("rows")
    saved["stage2"]["max_triplets"] = saved["stage2"].pop("max_rows")
    del saved["stage2"]["neg_samples"], saved["stage2"]["loss"]["name"]
    assert saved_recipe_with_defaults(saved) == new.to_dict()
    with pytest.raises(DistillError, match=r"stage2.triplets is the old name of stage2.rows: give one of them, not both"):
        load_recipe(_recipe_file(tmp_path, "{rows: [a.csv], triplets: [b.csv]}"))
    with pytest.raises(DistillError, match=r"stage2.max_triplets is the old name of stage2.max_rows"):
        load_recipe(_recipe_file(tmp_path), ["stage2.max_rows=3", "stage2.max_triplets=4"])
    for override, message in [("stage2.columns=[anchor]", r"stage2.columns: must be two or more names"),
                              ("stage2.neg_samples=-1", r"stage2.neg_samples: must be >= 0"),
                              ("stage2.max_rows=0", r"stage2.max_rows: must be unset or >= 1")]:
        with pytest.raises(DistillError, match=message):
            load_recipe(_recipe_file(tmp_path), [override])
    assert load_recipe(_recipe_file(tmp_path), ["stage2.columns=[q, a, negative_1, negative_2]"]).stage2.columns == ["q", "a", "negative_1", "negative_2"]


# ----------------------------------------------------------------------------------------------
# end to end: stage 2 from a saved student, two negatives per row, each loss


PEOPLE = ["A man", "A woman", "Two children", "An old farmer", "A young girl", "The chef", "A soldier", "Three dogs"]
ACTS = [("is playing a guitar", "makes music", "is sleeping silently", "reads a newspaper"),
        ("is cutting an onion", "prepares food", "is swimming in a lake", "repairs a bicycle"),
        ("runs through the park", "is outside moving", "sits in an office", "lies in bed"),
        ("reads a thick book", "is reading", "is shouting at a game", "paints a fence")]


def _write_rows(tmp_path, fmt: str):
    """32 rows (anchor, entailed, two contradicting): an n-tuple CSV or the cards' retrieval JSONL."""
    rows = [(f"{w} {a}.", f"{w} {p}.", f"{w} {n1}.", f"{w} {n2}.") for w in PEOPLE for a, p, n1, n2 in ACTS]
    if fmt == "csv":
        path = tmp_path / "rows.csv"
        path.write_text("query,answer,negative_1,negative_2\n" + "".join(",".join(r) + "\n" for r in rows))
    else:
        path = tmp_path / "rows.jsonl"
        path.write_text("".join(_retrieval_line(q, [{"docid": "p", "text": p}], [{"docid": "n", "text": t} for t in (n1, n2, q)]) + "\n"
                                for q, p, n1, n2 in rows))
    return path


@pytest.mark.parametrize("loss,fmt", [("ibkd_supervised", "csv"), ("mnrl", "jsonl")])
def test_stage2_trains_on_rows_with_two_negatives(tmp_path, tiny_home, monkeypatch, loss, fmt):
    from safetensors.torch import load_file

    from distill.encoder import Encoder
    from distill.training.stages import stage2
    from distill.training.student_folder import save_student
    from distill.training.trainer import Trainer

    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    rows = _write_rows(tmp_path, fmt)
    # the first 200 pairs of the real STS-B dev set: selection and report in seconds
    (tmp_path / "sts" / "stsb").mkdir(parents=True)
    dev = (STS_DIR / "stsb" / "sts-dev.csv").read_text(encoding="utf-8").splitlines(keepends=True)[:200]
    (tmp_path / "sts" / "stsb" / "sts-dev.csv").write_text("".join(dev), encoding="utf-8")
    (tmp_path / "recipe.yaml").write_text(tiny_recipe_text(tmp_path, steps=1, every=100))
    recipe = load_recipe(tmp_path / "recipe.yaml", [
        f"stage2.rows=[{rows}]", "stage2.columns=[query, answer, negative_1, negative_2]", "stage2.neg_samples=2",
        f"stage2.loss.name={loss}", "stage2.train.batch_size=8", "stage2.train.max_steps=3", "stage2.train.lr=1e-3",
        f"eval.sts_dir={tmp_path / 'sts'}", "eval.final_tasks=[STS-B-dev]",
    ])
    run, cpu = tmp_path / "run", torch.device("cpu")
    student = Encoder.load(recipe.student, max_length=recipe.data.max_length, device=cpu, role="student")
    save_student(run / "final", student, None, {"student": recipe.student})  # what stage 1 leaves for stage 2
    stage = stage2(recipe, run, {"student": recipe.student}, 0, 1, cpu, progress=False)
    assert stage.sentences_per_row == 4 and len(stage.lengths) == 32
    a_ids, a_mask, r_ids, r_mask, n = stage.make_batch(np.array([0, 5]))
    assert a_ids.shape[0] == 2 and r_ids.shape[0] == 6 and n == 2  # anchors; positives, negative_1s, negative_2s stacked
    assert a_ids.shape[1] == int(a_mask.sum(1).max()) and r_ids.shape[1] == int(r_mask.sum(1).max())  # each padded to its own longest
    results = Trainer(stage, recipe, 0, 1, cpu, False, None, baselines=False).fit(False)
    assert results["steps"] == 3 and results["sentences"] == 32 * 4
    meta = json.loads((run / "stage2" / "final" / "distill_student.json").read_text())
    assert meta["loss"]["name"] == loss and (meta["row_count"], meta["row_width"]) == (32, 4)
    log = [json.loads(line) for line in (run / "stage2" / "log.jsonl").read_text().splitlines()]
    assert all(math.isfinite(row["infonce"]) for row in log if "infonce" in row)
    assert any("infonce" in row for row in log) and any("hsic" in row for row in log) == (loss == "ibkd_supervised")
    start, end = load_file(str(run / "final" / "model.safetensors")), load_file(str(run / "stage2" / "final" / "model.safetensors"))
    assert any(not torch.equal(start[k], end[k]) for k in start)  # it trained
