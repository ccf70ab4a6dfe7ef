from pathlib import Path

import pytest
from conftest import REPO, recipe_at, tiny_recipe_text

from distill.cli import main
from distill.config import load_recipe, loss_defaults
from distill.errors import DistillError

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_recipe_validates(path):
    recipe = load_recipe(path)
    assert set(recipe.loss) == {"name", *loss_defaults(recipe.loss["name"])}


def _write(tmp_path, text):
    p = tmp_path / "r.yaml"
    p.write_text(text)
    return p


BASE = "teacher: all-minilm-l6-v2\nstudent: all-minilm-l3-v2\nloss: {name: ibkd}\n"


def test_defaults_and_overrides(tmp_path):
    r = load_recipe(_write(tmp_path, BASE), ["loss.lam=0.5", "train.lr=3e-5", "eval.tasks=[STS-B-dev, STS12]", "loss.bandwidth=median"])
    assert r.loss == {**loss_defaults("ibkd"), "name": "ibkd", "lam": 0.5, "bandwidth": "median"}
    assert r.train.lr == 3e-5 and isinstance(r.train.lr, float)
    assert r.eval.tasks == ["STS-B-dev", "STS12"]
    assert r.train.batch_size == 256


@pytest.mark.parametrize(
    "text, overrides, message",
    [
        (BASE + "train: {lrr: 1}\n", [], r"r\.yaml: unknown key train\.lrr"),
        (BASE, ["train.lrr=1"], r"unknown key train\.lrr"),
        (BASE, ["trian.lr=1"], r"--set trian\.lr: unknown key 'trian'"),
        (BASE, ["loss.lamb=1"], r"unknown key loss\.lamb for loss 'ibkd'"),
        (BASE, ["train.lr=fast"], r"train\.lr: expected float, got 'fast'"),
        (BASE, ["loss.name=l2"], r"loss\.name 'l2' is not one of"),
        (BASE + "extra: 1\n", [], r"unknown key extra"),
        (BASE.replace("all-minilm-l6-v2", "no-such-teacher"), [], r"teacher: teacher 'no-such-teacher': not a preset \(teachers: .*\), not a model folder, not a hub id"),
        ("student: all-minilm-l3-v2\nloss: {name: mse}\n", [], r"missing key teacher"),
        (BASE, ["loss.lam"], r"expected key=value"),
        # a list whose item holds ':' and '?' unquoted: not YAML; said here, not later as a file named "[beir:..."
        (BASE, ["data.corpus=[beir:../b?queries=dev, more.txt]"],
         r"--set 'data\.corpus=\[beir:\.\./b\?queries=dev, more\.txt\]': the value is not a valid YAML list or mapping "
         r"\(expected ',' or '\]', but got '\?'\); quote an item"),
    ],
)
def test_bad_recipes_name_the_key(tmp_path, text, overrides, message):
    with pytest.raises(DistillError, match=message):
        load_recipe(_write(tmp_path, text), overrides)


def test_config_cli_reports_unknown_key_without_traceback(tmp_path, capsys):
    assert main(["config", str(_write(tmp_path, BASE)), "--set", "train.epoch=3"]) == 2
    err = capsys.readouterr().err
    assert "unknown key train.epoch" in err and "Traceback" not in err
    assert main(["config", str(_write(tmp_path, BASE)), "--set", "train.epochs=3"]) == 0
    assert "epochs: 3.0" in capsys.readouterr().out


# --- recipe values are checked when the recipe is read --------------------------------------------

SMOKE = str(REPO / "configs" / "smoke.yaml")


@pytest.mark.parametrize("override, message", [
    ("train.lr=-1", "train.lr: must be > 0, got -1.0"),
    ("train.lr=nan", "train.lr: expected a finite number, got nan"),
    ("train.lr=inf", "train.lr: expected a finite number, got inf"),
    ("train.batch_size=0", "train.batch_size: must be >= 1, got 0"),
    ("eval.every_steps=0", "eval.every_steps: must be >= 1, got 0"),
    ("train.grad_accum=0", "train.grad_accum: must be >= 1, got 0"),
    ("train.epochs=0", "train.epochs: must be > 0, got 0.0"),
    ("train.max_steps=0", "train.max_steps: must be unset or >= 1, got 0"),
    ("train.warmup_ratio=1.5", "train.warmup_ratio: must be between 0 and 1"),
    ("train.precision=fp8", "train.precision: must be one of auto, bf16, fp16, fp32, got 'fp8'"),
    ("eval.tasks=[STS99]", "eval.tasks: unknown STS task 'STS99'"),
    ("eval.final_tasks=[STS99]", "eval.final_tasks: unknown STS task 'STS99'"),
    ("loss.bandwidth=foo", "loss.bandwidth: must be one of fixed, median, got 'foo'"),
    ("loss.tau=0", "loss.tau: must be a number > 0, got 0.0"),
    ("loss.gamma=-1", "loss.gamma: must be a number > 0"),
    ("loss.lam=.nan", "loss.lam: expected a finite number, got nan"),
    ("data.max_sentences=0", "data.max_sentences: must be unset or >= 1, got 0"),
    ("data.max_length=0", "data.max_length: must be >= 3"),
    ("data.max_length=100000", "data.max_length 100000: the student all-minilm-l3-v2 takes at most 512 tokens"),
    ("train.batch_size=1", "train.batch_size 1: loss ibkd is contrastive"),
    ("stage2.train.lr=0", "stage2.train.lr: must be > 0"),
    ("stage2.loss.head=deep", "stage2.loss.head: must be one of linear, mlp, none"),
    ("stage2.loss.head_dim=wide", "stage2.loss.head_dim: must be unset or a whole number >= 1"),
])
def test_config_rejects_what_train_would_reject(override, message, capsys):
    assert main(["config", SMOKE, "--set", override]) == 2
    err = capsys.readouterr().err
    assert message in err and "smoke.yaml" in err and "Traceback" not in err
    assert main(["train", SMOKE, "--set", override, "--set", "output.dir=/nonexistent/never-made"]) == 2  # same check, before any model loads
    assert message in capsys.readouterr().err
    assert not Path("/nonexistent/never-made").exists()


@pytest.mark.parametrize("loss, bs", [("infonce", 1), ("crd", 1)])
def test_contrastive_losses_need_two_per_batch(loss, bs):
    with pytest.raises(DistillError, match=f"loss {loss} is contrastive"):
        load_recipe(SMOKE, [f"loss={{name: {loss}}}", f"train.batch_size={bs}"])
    assert load_recipe(SMOKE, ["loss={name: crd, queue_size: 64}", "train.batch_size=1"]).train.batch_size == 1  # a queue has negatives
    assert load_recipe(SMOKE, ["loss={name: mse}", "train.batch_size=1"]).train.batch_size == 1


def test_recipe_files_that_are_not_a_clean_mapping(tmp_path):
    base = "teacher: all-minilm-l6-v2\nstudent: all-minilm-l3-v2\nloss: {name: ibkd}\n"
    dup = tmp_path / "dup.yaml"
    dup.write_text(base + "train:\n  lr: 1.0e-4\n  batch_size: 32\n  lr: 5\n")
    with pytest.raises(DistillError, match=r"dup\.yaml: line 7: duplicate key 'lr' \(first given on line 5\)"):
        load_recipe(dup)
    top = tmp_path / "top.yaml"
    top.write_text(base + "teacher: all-mpnet-base-v2\n")
    with pytest.raises(DistillError, match=r"top\.yaml: line 4: duplicate key 'teacher'"):
        load_recipe(top)
    lst = tmp_path / "list.yaml"
    lst.write_text("- teacher: all-minilm-l6-v2\n- student: all-minilm-l3-v2\n")
    with pytest.raises(DistillError, match=r"list\.yaml: a recipe is a mapping .* holds a list"):
        load_recipe(lst)
    latin = tmp_path / "latin1.yaml"
    latin.write_bytes((base + "# caf\xe9\n").encode("latin-1"))
    with pytest.raises(DistillError, match=r"latin1\.yaml:4: not UTF-8"):
        load_recipe(latin)
    anchors = tmp_path / "anchors.yaml"  # YAML merge keys stay legal
    anchors.write_text(base + "train: &t {lr: 1.0e-4}\nstage2:\n  train:\n    <<: *t\n    lr: 1.0e-6\n")
    assert load_recipe(anchors).stage2.train.lr == 1e-6


def test_max_lengths_past_the_models_positions_are_refused_when_the_recipe_is_read(tmp_path, tiny_home, monkeypatch):
    """The tiny BERT has 128 positions: data.max_length (the student's) and a teacher preset's
    max_length (the cache's) may not pass it; 128 itself is fine."""
    monkeypatch.setenv("DISTILL_HOME", str(tiny_home))
    assert recipe_at(tmp_path, ["data.max_length=128"]).data.max_length == 128
    with pytest.raises(DistillError, match=r"recipe\.yaml: data\.max_length 129: the student tiny-student takes at most 128 tokens "
                                           r"\(max_position_embeddings in .*config\.json\); use at most 128"):
        recipe_at(tmp_path, ["data.max_length=129"])
    home = tmp_path / "home"
    (home / "teachers").mkdir(parents=True)
    (home / "students").symlink_to(tiny_home / "students")
    text = (tiny_home / "teachers" / "tiny-teacher.yaml").read_text().replace("max_length: 32", "max_length: 1000")
    (home / "teachers" / "tiny-teacher.yaml").write_text(text)
    monkeypatch.setenv("DISTILL_HOME", str(home))
    with pytest.raises(DistillError, match=r"tiny-teacher\.yaml: max_length 1000: the teacher tiny-teacher takes at most 128 tokens"):
        recipe_at(tmp_path)


def test_config_shows_what_train_refuses_of_static_presets_eval_dims_and_beir_sources(tmp_path, tiny_home, tiny_beir, tiny_bert_dir,
                                                                                       monkeypatch, capsys):
    """Issue 38 (notes): `distill config` passed a static preset wider than its teacher or with a
    bad tokenizer, eval.dims wider than the student's embedding, and a `beir:` source asking for
    test queries, which `train` refused later (the static width only after encoding the whole
    cache). Now both refuse them when the recipe is read, with the same message, and nothing is
    encoded or written."""
    import json
    import shutil

    from tokenizers import Tokenizer, models

    home = tmp_path / "home"
    shutil.copytree(tiny_home, home)
    word_level = tmp_path / "word-level"  # a model folder whose tokenizer has other tokens than the teacher's
    word_level.mkdir()
    (word_level / "config.json").write_text(json.dumps({"model_type": "bert"}))
    Tokenizer(models.WordLevel({"[UNK]": 0, "hello": 1, "world": 2}, unk_token="[UNK]")).save(str(word_level / "tokenizer.json"))
    no_json = tmp_path / "no-tokenizer-json"
    shutil.copytree(tiny_bert_dir, no_json)
    (no_json / "tokenizer.json").unlink()
    for name, dim, tokenizer in (("wide", 64, "null"), ("missing-tokenizer", 16, "/no/such/folder"),
                                 ("no-tokenizer-json", 16, str(no_json)), ("other-tokenizer", 16, str(word_level))):
        (home / "students" / f"{name}.yaml").write_text(f"name: {name}\ntype: static\ndim: {dim}\ntokenizer: {tokenizer}\n")
    monkeypatch.setenv("DISTILL_HOME", str(home))
    students = home / "students"
    cases = [
        (["student=wide"], f"{students / 'wide.yaml'}: dim 64: init: distill reduces the teacher's vectors to it, so it must be "
                           "between 1 and the teacher tiny-teacher's width 32"),
        (["student=missing-tokenizer"], f"{students / 'missing-tokenizer.yaml'}: tokenizer /no/such/folder: no such folder"),
        (["student=no-tokenizer-json"], f"{students / 'no-tokenizer-json.yaml'}: tokenizer {no_json}: {no_json} has no tokenizer.json"),
        (["student=other-tokenizer"], f"{students / 'other-tokenizer.yaml'}: tokenizer {word_level} differs from the teacher "
                                      "tiny-teacher's: init: distill needs the teacher's own tokens"),
        (["eval.dims=[64]"], "eval.dims [64]: 64 is more than the 32 dimensions of the student's embedding"),
        (["loss={name: hpd, k: 8}", "eval.dims=[16]"], "eval.dims [16]: 16 is more than the 8 dimensions of the student's embedding "
                                                       "(HPD's k-d head)"),
        ([f"data.corpus=['beir:{tiny_beir}?queries=test']"], f"data.corpus[0]: corpus source 'beir:{tiny_beir}?queries=test': "
                                                             "split 'test' is the reporting split"),
    ]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(tiny_recipe_text(tmp_path))
    for sets, message in cases:
        args = [arg for s in sets for arg in ("--set", s)]
        assert main(["config", str(recipe), *args]) == 2, sets
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err
        assert main(["train", str(recipe), *args, "--quiet"]) == 2
        assert message in capsys.readouterr().err
        assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()  # nothing encoded, nothing written
    for sets in (["student=tiny-static"], ["eval.dims=[32, 16]"], ["loss={name: hpd, k: 8}", "eval.dims=[8, 4]"],
                 [f"data.corpus=['beir:{tiny_beir}?queries=dev']"]):
        assert main(["config", str(recipe), *[arg for s in sets for arg in ("--set", s)]]) == 0, capsys.readouterr().err
