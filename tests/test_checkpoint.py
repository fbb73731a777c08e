"""Tests of course_utils.checkpoint: atomic saves, crash mid-save, corruption, RNG round trip."""
from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from course_utils import checkpoint as ckpt


class Tied(nn.Module):
    """Embedding and output layer share one weight, as in GPT (safetensors must cope)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(7, 4)
        self.out = nn.Linear(4, 7, bias=False)
        self.out.weight = self.emb.weight


def _state(step: int) -> dict:
    return {"step": step, "values": torch.arange(5) * step, "rng": ckpt.get_rng_state(), "nested": {"a": [1, 2.5, None]}}


def test_round_trip_with_tied_weights(tmp_path: Path) -> None:
    m = Tied()
    path = ckpt.save_checkpoint(tmp_path, 5, m, _state(5))
    assert path.name == "step-000005" and ckpt.latest_checkpoint(tmp_path) == path
    m2 = Tied()
    state = ckpt.load_checkpoint(path, m2)
    assert torch.equal(m2.emb.weight, m.emb.weight) and m2.out.weight is m2.emb.weight
    assert state["step"] == 5 and torch.equal(state["values"], torch.arange(5) * 5)
    assert state["nested"] == {"a": [1, 2.5, None]}


def test_rng_round_trip() -> None:
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.randn()  # leave a cached Gaussian in NumPy's state
    saved = ckpt.get_rng_state()
    a = (random.random(), np.random.randn(3).tolist(), torch.rand(3))
    ckpt.set_rng_state(saved)
    b = (random.random(), np.random.randn(3).tolist(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1] and torch.equal(a[2], b[2])
    with pytest.raises(ckpt.CheckpointError, match="lacks"):
        ckpt.set_rng_state({"torch": saved["torch"]})


def test_crash_before_rename_keeps_previous(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = Tied()
    good = ckpt.save_checkpoint(tmp_path, 3, m, _state(3))

    def crash(*args, **kwargs):
        raise OSError("simulated power cut during rename")

    monkeypatch.setattr(ckpt.os, "replace", crash)
    with pytest.raises(OSError, match="power cut"):
        ckpt.save_checkpoint(tmp_path, 6, m, _state(6))
    monkeypatch.undo()
    assert ckpt.list_checkpoints(tmp_path) == [good]
    assert not (tmp_path / "step-000006").exists()
    assert ckpt.load_checkpoint(good, Tied())["step"] == 3


def test_crash_halfway_through_writing_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    m = Tied()
    good = ckpt.save_checkpoint(tmp_path, 3, m, _state(3))

    def half_write(model: nn.Module, path: Path) -> None:
        Path(path).write_bytes(b"\x00" * 10)          # a few bytes reach the disk ...
        raise KeyboardInterrupt("killed mid-write")    # ... then the process is stopped

    monkeypatch.setattr(ckpt, "_write_model", half_write)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(tmp_path, 6, m, _state(6))
    monkeypatch.undo()
    assert ckpt.latest_checkpoint(tmp_path) == good
    assert not list(tmp_path.glob(".tmp-*"))


def test_leftovers_of_a_killed_process_are_ignored(tmp_path: Path) -> None:
    """A SIGKILL runs no cleanup: a half-written temp folder stays behind."""
    m = Tied()
    good = ckpt.save_checkpoint(tmp_path, 3, m, _state(3))
    stale = tmp_path / ".tmp-step-000006-99999"
    stale.mkdir()
    (stale / ckpt.MODEL_FILE).write_bytes(b"partial")
    assert ckpt.latest_checkpoint(tmp_path) == good
    ckpt.save_checkpoint(tmp_path, 9, m, _state(9))
    assert not stale.exists()  # the next save clears it


@pytest.mark.parametrize("damage", ["truncate_model", "flip_state_byte", "drop_manifest", "bad_manifest"])
def test_damaged_checkpoint_is_detected(tmp_path: Path, damage: str) -> None:
    m = Tied()
    good = ckpt.save_checkpoint(tmp_path, 3, m, _state(3))
    bad = ckpt.save_checkpoint(tmp_path, 6, m, _state(6))
    if damage == "truncate_model":
        f = bad / ckpt.MODEL_FILE
        f.write_bytes(f.read_bytes()[:-7])
    elif damage == "flip_state_byte":
        f = bad / ckpt.STATE_FILE
        data = bytearray(f.read_bytes())
        data[len(data) // 2] ^= 0xFF
        f.write_bytes(bytes(data))
    elif damage == "drop_manifest":
        (bad / ckpt.MANIFEST_FILE).unlink()
    else:
        (bad / ckpt.MANIFEST_FILE).write_text("{not json")
    with pytest.raises(ckpt.CheckpointError):
        ckpt.load_checkpoint(bad, Tied())
    with pytest.warns(UserWarning, match="skipping invalid checkpoint"):
        assert ckpt.latest_checkpoint(tmp_path) == good


def test_keep_prunes_old_and_bad_args(tmp_path: Path) -> None:
    m = Tied()
    for s in (1, 2, 3, 4):
        ckpt.save_checkpoint(tmp_path, s, m, _state(s), keep=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-000003", "step-000004"]
    with pytest.raises(ValueError, match="keep"):
        ckpt.save_checkpoint(tmp_path, 5, m, _state(5), keep=0)
    with pytest.raises(ValueError, match="step"):
        ckpt.step_dir_name(-1)
    assert ckpt.latest_checkpoint(tmp_path / "nowhere") is None


def test_training_survives_a_crash_during_save(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run dies while writing its step-8 checkpoint; the restart resumes from step 4 and
    still ends with exactly the losses of a run that never crashed."""
    from tests.test_train import _trainer

    full = _trainer(None, max_steps=12)
    full.fit()

    real_replace = os.replace
    calls = {"n": 0}

    def replace_then_die(src, dst):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return real_replace(src, dst)

    monkeypatch.setattr(ckpt.os, "replace", replace_then_die)
    crashed = _trainer(tmp_path, max_steps=12, checkpoint_interval=4)
    with pytest.raises(OSError, match="disk full"):
        crashed.fit()
    monkeypatch.undo()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-000004"]
    restarted = _trainer(tmp_path, max_steps=12, checkpoint_interval=4)
    restarted.fit()
    assert restarted.resumed_from.name == "step-000004"
    assert restarted.history["loss"] == full.history["loss"]


def test_pruning_keeps_the_newest_verified_checkpoints(tmp_path: Path) -> None:
    """Issue 28.3: a damaged checkpoint newer than the good ones must not count towards ``keep``."""
    m = Tied()
    for step in (1, 2):
        ckpt.save_checkpoint(tmp_path, step, m, _state(step))
    damaged = ckpt.save_checkpoint(tmp_path, 3, m, _state(3))
    (damaged / ckpt.MODEL_FILE).write_bytes(b"half-written")
    with pytest.warns(UserWarning, match="invalid checkpoint"):
        ckpt.save_checkpoint(tmp_path, 4, m, _state(4), keep=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-000002", "step-000004"]
    assert not damaged.exists(), "a checkpoint that cannot be loaded is pruned, not kept"
