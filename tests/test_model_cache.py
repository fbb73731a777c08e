"""Tests of course_utils.model_cache: the atomic load-or-train folders of trained models."""
from __future__ import annotations

from pathlib import Path

import pytest

from course_utils import model_cache, pretraining


@pytest.fixture(autouse=True)
def isolated_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "data"))
    yield tmp_path / "data"


def test_pretraining_reexports_the_cache_api() -> None:
    assert pretraining.model_dir is model_cache.model_dir and pretraining.is_current is model_cache.is_current


def test_recipe_record_rejects_what_is_not_a_recipe() -> None:
    assert model_cache.recipe_record({"a": (1, 2)}) == {"a": [1, 2]}
    with pytest.raises(TypeError, match="recipe"):
        model_cache.recipe_record(3)


def test_model_dir_follows_profile_and_data_dir(isolated_data_dir: Path) -> None:
    assert model_cache.model_dir("x", "ci") == isolated_data_dir / "models" / "x-ci"
    with pytest.raises(ValueError, match="profile"):
        model_cache.model_dir("x", "huge")


def test_publish_is_all_or_nothing(tmp_path: Path) -> None:
    final = tmp_path / "models" / "m-ci"

    def failing(tmp: Path) -> dict:
        (tmp / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        model_cache.publish(failing, final)
    assert not final.exists() and not list(final.parent.glob(".tmp-*"))

    def ok(tmp: Path) -> dict:
        (tmp / "model.safetensors").write_bytes(b"weights")
        return {"n": 1}

    model_cache.publish(ok, final)
    assert model_cache.is_complete(final)

    def newer(tmp: Path) -> dict:
        (tmp / "model.safetensors").write_bytes(b"newer")
        return {"n": 2}

    model_cache.publish(newer, final, replace=False)   # another finisher came first: keep its copy
    assert (final / "model.safetensors").read_bytes() == b"weights"
    model_cache.publish(newer, final)                  # an explicit save replaces it
    assert (final / "model.safetensors").read_bytes() == b"newer" and model_cache.is_complete(final)
    assert sorted(p.name for p in final.parent.iterdir()) == ["m-ci"]
