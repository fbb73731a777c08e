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


def _weights(value: float) -> bytes:
    import torch
    from safetensors.torch import save

    return save({"w": torch.full((4,), value)})


def test_publish_is_all_or_nothing(tmp_path: Path) -> None:
    final = tmp_path / "models" / "m-ci"

    def failing(tmp: Path) -> dict:
        (tmp / "model.safetensors").write_bytes(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        model_cache.publish(failing, final)
    assert not final.exists() and not list(final.parent.glob(".tmp-*"))

    def ok(tmp: Path) -> dict:
        (tmp / "model.safetensors").write_bytes(_weights(1.0))
        return {"n": 1}

    model_cache.publish(ok, final)
    assert model_cache.is_complete(final)

    def newer(tmp: Path) -> dict:
        (tmp / "model.safetensors").write_bytes(_weights(2.0))
        return {"n": 2}

    model_cache.publish(newer, final, replace=False)   # another finisher came first: keep its copy
    assert (final / "model.safetensors").read_bytes() == _weights(1.0)
    model_cache.publish(newer, final)                  # an explicit save replaces it
    assert (final / "model.safetensors").read_bytes() == _weights(2.0) and model_cache.is_complete(final)
    assert sorted(p.name for p in final.parent.iterdir()) == ["m-ci"]


# ------------------------------------------------------------------ issue 28.2: model folders are checksummed
RECIPE = {"lr": 1e-3, "steps": 2}


def _publish_tiny(final: Path, value: float = 1.0) -> Path:
    import torch
    from safetensors.torch import save_file

    def build(tmp: Path) -> dict:
        save_file({"w": torch.full((64,), value)}, str(tmp / model_cache.WEIGHTS_FILE))
        (tmp / "tokenizer").mkdir()
        (tmp / "tokenizer" / "vocab.json").write_text('{"a": 0}')
        return {"name": "tiny", "recipe": model_cache.recipe_record(RECIPE)}

    return model_cache.publish(build, final, recipe=RECIPE)


def _flip_byte(path: Path, offset: int = -5) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_flipped_bytes_in_a_cached_model_mean_corrupt(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    final = _publish_tiny(tmp_path / "models" / "tiny-ci")
    assert model_cache.verify(final) and model_cache.is_current(final, RECIPE)
    _flip_byte(final / model_cache.WEIGHTS_FILE)  # same size, other bytes: loads silently without digests
    assert not model_cache.verify(final, quiet=True)
    assert not model_cache.is_complete(final) and not model_cache.is_current(final, RECIPE)
    out = capsys.readouterr().out  # is_current says it once
    assert "model.safetensors" in out and "corrupt" in out and len(out.strip().splitlines()) == 1


def test_any_changed_file_of_a_model_folder_means_corrupt(tmp_path: Path) -> None:
    final = _publish_tiny(tmp_path / "models" / "tiny-ci")
    (final / "tokenizer" / "vocab.json").write_text('{"b": 0}')
    assert not model_cache.verify(final, quiet=True)


def test_truncated_model_is_corrupt_not_a_raw_error(tmp_path: Path) -> None:
    final = _publish_tiny(tmp_path / "models" / "tiny-ci")
    weights = final / model_cache.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:100])
    assert not model_cache.is_current(final, RECIPE)


def test_folder_saved_before_digests_is_still_parsed(tmp_path: Path) -> None:
    import json

    final = _publish_tiny(tmp_path / "models" / "tiny-ci")
    meta = json.loads((final / model_cache.DONE_FILE).read_text())
    del meta["files"]  # as written by the course before digests were recorded
    (final / model_cache.DONE_FILE).write_text(json.dumps(meta))
    assert model_cache.is_current(final, RECIPE)
    weights = final / model_cache.WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-8])  # truncated: the header no longer matches the size
    assert not model_cache.is_current(final, RECIPE)
    weights.write_bytes(b"\x00" * 64)  # not safetensors at all
    assert not model_cache.verify(final, quiet=True)


def test_copied_model_folder_is_hashed_once_then_trusted(tmp_path: Path) -> None:
    import os

    final = _publish_tiny(tmp_path / "models" / "tiny-ci")
    weights = final / model_cache.WEIGHTS_FILE
    os.utime(weights, ns=(1, 1))  # a copy without timestamps: bytes intact, mtime moved
    assert model_cache.verify(final)
    assert f'"mtime_ns": 1' in (final / model_cache.DONE_FILE).read_text()


def test_corrupt_cached_model_is_retrained(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """The load-or-train path treats a corrupt model like a missing one: it trains a new one."""
    trained = []

    def pretrain(profile, progress=True):
        trained.append(profile)
        return "model", "tokenizer", {"val_loss": [1.0], "step": [2]}

    def save(model, tok, profile, meta, replace=True):
        return _publish_tiny(model_cache.model_dir("tiny", profile), value=2.0)

    folder = pretraining._trained_folder("tiny", "tiny model", RECIPE, "ci", pretrain, save, False)
    assert trained == ["ci"]
    pretraining._trained_folder("tiny", "tiny model", RECIPE, "ci", pretrain, save, False)
    assert trained == ["ci"], "an intact model is loaded, not trained again"
    _flip_byte(folder / model_cache.WEIGHTS_FILE)
    pretraining._trained_folder("tiny", "tiny model", RECIPE, "ci", pretrain, save, False)
    assert trained == ["ci", "ci"] and model_cache.verify(folder)
    assert "corrupt" in capsys.readouterr().out


def test_prepared_smollm2_folder_is_checksummed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The de-quantised SmolLM2 copy is a model cache too: a changed byte means prepare again."""
    import json

    from course_utils import assets, pretrained

    folder = pretrained.smollm2_cache_dir()
    _publish_tiny(folder)  # any safetensors model folder will do for the check itself
    weights = folder / model_cache.WEIGHTS_FILE
    (folder / "source.json").write_text(json.dumps({
        "gguf_sha256": assets.get("smollm2").sha256, "gguf_file": pretrained.SMOLLM2_GGUF,
        "size": weights.stat().st_size, "files": assets.file_records(folder, [model_cache.WEIGHTS_FILE])}))
    assert pretrained._smollm2_cache_ok(folder)
    _flip_byte(weights)
    assert not pretrained._smollm2_cache_ok(folder)
    (folder / "source.json").write_text(json.dumps({  # prepared before digests were recorded
        "gguf_sha256": assets.get("smollm2").sha256, "gguf_file": pretrained.SMOLLM2_GGUF,
        "size": weights.stat().st_size}))
    assert pretrained._smollm2_cache_ok(folder), "a byte flip inside the tensors was undetectable then"
    weights.write_bytes(weights.read_bytes()[:-4])
    assert not pretrained._smollm2_cache_ok(folder)


def test_model_trained_from_another_release_of_its_data_is_retrained(monkeypatch: pytest.MonkeyPatch,
                                                                        capsys: pytest.CaptureFixture) -> None:
    """28.1: a trained-model cache derived from an input that changed is not reused."""
    from course_utils import assets

    final = _publish_tiny(model_cache.model_dir(pretraining.CHAR_GPT_NAME, "ci"))
    assert model_cache.is_current(final, RECIPE)
    old = assets.get("shakespeare")
    monkeypatch.setitem(assets.REGISTRY, "shakespeare", assets.Asset(
        old.name, old.package, "3.0.1", old.filename, "f" * 64, old.members, old.strip, old.description))
    assert not model_cache.is_current(final, RECIPE)
    assert "another release of shakespeare" in capsys.readouterr().out
    assert model_cache.inputs_record(model_cache.model_dir("minilm-tweets", "ci")).keys() == {"tweets", "minilm"}


def test_model_inputs_name_the_models_the_course_caches() -> None:
    from course_utils import finetune, llama_pretraining

    names = {pretraining.CHAR_GPT_NAME, pretraining.ZH_BERT_NAME, finetune.TWEET_MODEL_NAME,
             llama_pretraining.LLAMA_BPE_NAME}
    assert set(model_cache.MODEL_INPUTS) == names
