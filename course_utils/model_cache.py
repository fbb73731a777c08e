"""The load-or-train cache for models trained here: one folder per model and profile.

A chapter that trains a model other chapters use (chapter 5's char GPT and Chinese BERT,
chapter 7's tweet classifier, chapter 11's Llama-style model) publishes it under
``<data dir>/models/<name>-<profile>/``. The folder is written in a temporary sibling and renamed
into place, and :data:`DONE_FILE` (the metadata, with the recipe the model was trained with) is
written last, so a half-written folder is never taken for a model and two notebooks that train
at once never collide. A copy trained with an older recipe is not current and is retrained.

Public API: :func:`models_dir`, :func:`model_dir`, :func:`is_complete`, :func:`recipe_record`,
:func:`is_current`, :func:`publish`. Defined in chapter 5, Pretraining.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from .profiles import get_profile

DONE_FILE = "training.json"  # written last: its presence marks a complete model folder
WEIGHTS_FILE = "model.safetensors"


def models_dir() -> Path:
    """``<data dir>/models`` (see :func:`course_utils.assets.data_dir`)."""
    from .assets import data_dir

    return data_dir() / "models"


def model_dir(name: str, profile: str | None = None) -> Path:
    """Where model ``name`` trained with ``profile`` lives: ``<data dir>/models/<name>-<profile>``."""
    return models_dir() / f"{name}-{get_profile(profile).name}"


def is_complete(folder: Path) -> bool:
    """The folder holds a finished model: its weights and the :data:`DONE_FILE` written last."""
    return (folder / DONE_FILE).is_file() and (folder / WEIGHTS_FILE).is_file()


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
    """A complete model folder trained with ``recipe`` (a copy from an older recipe is not)."""
    if not is_complete(folder):
        return False
    try:
        saved = json.loads((folder / DONE_FILE).read_text(encoding="utf-8")).get("recipe")
    except (OSError, ValueError):
        return False
    return saved == recipe_record(recipe)


def publish(build: Callable[[Path], dict[str, Any]], final: Path, replace: bool = True,
            recipe: Any | None = None) -> Path:
    """Run ``build(tmp_dir)`` (it writes the files and returns the metadata), add :data:`DONE_FILE`,
    then rename the folder to ``final``.

    ``replace=False`` keeps a complete copy of the same ``recipe`` that another process published
    first; ``replace=True`` swaps the new one in (the old copy is moved aside first).
    """
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
    old = final.with_name(f".old-{final.name}-{os.getpid()}")
    try:
        meta = build(tmp)
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


__all__ = ["DONE_FILE", "WEIGHTS_FILE", "models_dir", "model_dir", "is_complete", "recipe_record", "is_current",
           "publish"]
