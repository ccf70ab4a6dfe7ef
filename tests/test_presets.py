import shutil
from dataclasses import replace

import pytest

from distill.errors import DistillError
from distill.presets import list_presets, load_student, load_teacher, repo_root


def test_required_presets_exist_and_parse():
    assert {"simcse-roberta-large", "all-mpnet-base-v2"} <= set(list_presets("teachers"))
    assert {"minilm-l6-h384", "minilm-l12-h384", "all-minilm-l6-v2", "all-minilm-l3-v2"} <= set(list_presets("students"))
    for name in list_presets("teachers"):
        load_teacher(name)
    for name in list_presets("students"):
        load_student(name)


def test_preset_values_follow_the_papers():
    simcse = load_teacher("simcse-roberta-large")
    assert (simcse.hub_id, simcse.pooling, simcse.dim) == ("princeton-nlp/sup-simcse-roberta-large", "cls", 1024)
    mpnet = load_teacher("all-mpnet-base-v2")
    assert (mpnet.hub_id, mpnet.pooling, mpnet.normalize, mpnet.dim) == ("sentence-transformers/all-mpnet-base-v2", "mean", True, 768)
    assert load_student("minilm-l6-h384").hub_id == "nreimers/MiniLM-L6-H384-uncased"
    assert load_student("minilm-l12-h384").hub_id == "microsoft/MiniLM-L12-H384-uncased"
    l3 = load_student("all-minilm-l3-v2")
    assert l3.layers == 3 and l3.hub_id == "sentence-transformers/all-MiniLM-L6-v2" and l3.normalize is False


def test_unknown_preset_names_the_known_ones():
    with pytest.raises(DistillError, match=r"unknown teacher preset 'nope'.*all-mpnet-base-v2"):
        load_teacher("nope")


def test_bad_preset_file_names_file_and_key(tmp_path, monkeypatch):
    for kind in ("teachers", "students"):
        shutil.copytree(repo_root() / kind, tmp_path / kind)
    monkeypatch.setenv("DISTILL_HOME", str(tmp_path))
    bad = tmp_path / "teachers" / "broken.yaml"
    bad.write_text((tmp_path / "teachers" / "all-mpnet-base-v2.yaml").read_text().replace("name: all-mpnet-base-v2", "name: broken") + "poolng: mean\n")
    with pytest.raises(DistillError, match=r"broken\.yaml: unknown key 'poolng'"):
        load_teacher("broken")
    bad.write_text((tmp_path / "teachers" / "all-mpnet-base-v2.yaml").read_text().replace("name: all-mpnet-base-v2", "name: broken").replace("pooling: mean", "pooling: average"))
    with pytest.raises(DistillError, match=r"broken\.yaml: pooling 'average' is not one of mean, cls, cls_before_pooler, max"):
        load_teacher("broken")


def test_teacher_and_student_presets_name_the_model_and_width_alike(tmp_path, monkeypatch):
    """Both specs say hub_id and dim; a student preset of an earlier version (base, hidden_dim)
    still loads to the same spec, and giving a key under both names is refused."""
    for kind in ("teachers", "students"):
        shutil.copytree(repo_root() / kind, tmp_path / kind)
    monkeypatch.setenv("DISTILL_HOME", str(tmp_path))
    now = load_student("all-minilm-l3-v2")
    assert (now.hub_id, now.dim) == ("sentence-transformers/all-MiniLM-L6-v2", 384)
    text = (tmp_path / "students" / "all-minilm-l3-v2.yaml").read_text()
    old = text.replace("name: all-minilm-l3-v2", "name: old-l3").replace("hub_id:", "base:").replace("dim:", "hidden_dim:")
    (tmp_path / "students" / "old-l3.yaml").write_text(old)
    assert load_student("old-l3") == type(now)(**{**now.__dict__, "name": "old-l3"})
    (tmp_path / "students" / "both.yaml").write_text(old.replace("name: old-l3", "name: both") + "dim: 384\n")
    with pytest.raises(DistillError, match=r"both\.yaml: 'hidden_dim' is the old name of 'dim'; give one of them"):
        load_student("both")


def test_a_teacher_is_a_preset_a_hub_id_a_folder_or_a_mapping(tmp_path, minilm_path):
    """teacher_spec reads each form; a mapping's model may itself be a preset, whose fields it overrides."""
    from distill.presets import model_name, student_spec, teacher_spec

    assert teacher_spec("all-minilm-l6-v2") == load_teacher("all-minilm-l6-v2")
    hub = teacher_spec("BAAI/bge-small-en-v1.5")
    assert (hub.name, hub.model, hub.pooling, hub.prompts) == ("BAAI/bge-small-en-v1.5", "BAAI/bge-small-en-v1.5", None, None)
    folder = teacher_spec(str(minilm_path))
    assert folder.model == str(minilm_path.resolve()) and folder.max_length is None
    mapped = teacher_spec({"model": "intfloat/e5-small-v2", "prompts": {"query": "query: ", "document": "passage: "},
                           "max_length": 256, "truncate_dim": 128, "dtype": "bf16"})
    assert (mapped.model, mapped.prompts["document"], mapped.max_length, mapped.truncate_dim, mapped.dtype) == (
        "intfloat/e5-small-v2", "passage: ", 256, 128, "bf16")
    over_preset = teacher_spec({"model": "all-minilm-l6-v2", "max_length": 256})
    assert over_preset == replace(load_teacher("all-minilm-l6-v2"), max_length=256)
    assert model_name({"model": "intfloat/e5-small-v2"}) == "intfloat/e5-small-v2"
    student = student_spec({"model": "all-minilm-l6-v2", "layers": [0, 4, 5]})
    assert student.layers == [0, 4, 5] and student.model == "sentence-transformers/all-MiniLM-L6-v2"
    assert student_spec(str(minilm_path)) is None  # a folder: loaded by what it holds


@pytest.mark.parametrize("value, message", [
    ({"model": "a/b", "promts": {}}, r"teacher mapping: unknown key 'promts'"),
    ({"prompts": {}}, r"missing key 'model'"),
    ({"model": "a/b", "prompts": {"querry": "q: "}}, r"prompts: unknown role 'querry' \(roles: query, document\)"),
    ({"model": "a/b", "truncate_dim": 0}, r"truncate_dim must be a whole number of at least 1, got 0"),
    ({"model": "a/b", "dtype": "int8"}, r"dtype 'int8' is not one of fp32, bf16, fp16"),
    ({"model": "a/b", "pooling": "avg"}, r"pooling 'avg' is not one of"),
    ({"model": "a/b", "prompts": {"query": "q"}, "prompt_names": {"query": "q"}}, r"not both"),
    ("not a model at all", r"teacher 'not a model at all': not a preset .*not a model folder, not a hub id"),
])
def test_bad_teacher_specs_name_the_key_and_value(value, message):
    from distill.presets import teacher_spec

    with pytest.raises(DistillError, match=message):
        teacher_spec(value)


def test_a_file_is_not_a_teacher(tmp_path):
    from distill.presets import teacher_spec

    (tmp_path / "model.safetensors").write_bytes(b"x")
    with pytest.raises(DistillError, match=r"a file, not a model"):
        teacher_spec(str(tmp_path / "model.safetensors"))
