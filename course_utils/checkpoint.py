"""Crash-safe training checkpoints: write to a temporary folder, fsync, then rename atomically.

A checkpoint is a folder ``step-000123/`` inside the checkpoint directory holding

* ``model.safetensors`` -- the weights (safetensors: no pickle, tied weights handled);
* ``training_state.pt`` -- optimizer, scheduler, RNG states, data-sampler state, step, history
  (only tensors, numbers, strings, lists and dicts, so it loads with ``weights_only=True``);
* ``manifest.json`` -- written last: the size and SHA-256 of each file above.

Everything is written into ``.tmp-step-000123-<pid>/`` first, each file is fsync'ed, and only
then the folder is renamed with :func:`os.replace` (atomic on POSIX and Windows). A crash in the
middle leaves a ``.tmp-*`` folder that is never taken for a checkpoint; a file damaged later is
caught by its checksum. :func:`latest_checkpoint` returns the newest folder that verifies.

Defined in chapter 5, Pretraining.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
STATE_FILE = "training_state.pt"
MANIFEST_FILE = "manifest.json"
_STEP_DIR = re.compile(r"^step-(\d{6,})$")


class CheckpointError(RuntimeError):
    """A checkpoint folder is missing, incomplete or corrupted."""


def step_dir_name(step: int) -> str:
    """``step-000123`` for step 123 (zero-padded so folders sort by step)."""
    if not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be a non-negative int, got {step!r}")
    return f"step-{step:06d}"


# ---------------------------------------------------------------- RNG states (weights_only-safe)
def get_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (CPU) and CUDA generator states as tensors / lists / numbers."""
    py_version, py_state, py_gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state(legacy=True)
    return {
        "python": [py_version, list(py_state), py_gauss],
        "numpy": [str(np_name), torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
                  int(np_pos), int(np_has_gauss), float(np_cached)],
        "torch": torch.get_rng_state(),
        "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned."""
    missing = {"python", "numpy", "torch"} - set(state)
    if missing:
        raise CheckpointError(f"RNG state lacks {sorted(missing)}; expected the dict get_rng_state() returns")
    version, py_state, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in py_state), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    cuda_states = state.get("cuda") or []
    if cuda_states and torch.cuda.is_available():  # pragma: no cover - no GPU in CI
        torch.cuda.set_rng_state_all(cuda_states)


# ---------------------------------------------------------------- writing
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_path(path: Path) -> None:
    """Flush a file (or, where the OS allows it, a directory entry) to disk."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if path.is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:  # pragma: no cover - Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some file systems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def _write_model(model: torch.nn.Module, path: Path) -> None:
    from safetensors.torch import save_model

    save_model(model, str(path))


def save_checkpoint(directory: str | Path, step: int, model: torch.nn.Module,
                    state: dict[str, Any], keep: int | None = None) -> Path:
    """Write ``model`` and the training ``state`` as ``directory/step-NNNNNN`` atomically.

    ``state`` must hold only tensors, numbers, strings, None, lists, tuples and dicts (so that
    :func:`load_checkpoint` can read it with ``weights_only=True``). ``keep`` (None: all) is how
    many of the newest checkpoints to leave; older ones are deleted after the new one is in
    place; only checkpoints that verify count, and the ones that do not are deleted with them
    (a damaged folder must never push a good one out). Returns the checkpoint folder.
    """
    if keep is not None and (not isinstance(keep, int) or keep < 1):
        raise ValueError(f"keep must be a positive int or None, got {keep!r}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(".tmp-step-*"):  # left by a crash during an earlier save
        shutil.rmtree(stale, ignore_errors=True)
    final = directory / step_dir_name(step)
    tmp = directory / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        _write_model(model, tmp / MODEL_FILE)
        with open(tmp / STATE_FILE, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        _fsync_path(tmp / MODEL_FILE)
        files = {name: {"bytes": (tmp / name).stat().st_size, "sha256": _sha256(tmp / name)}
                 for name in (MODEL_FILE, STATE_FILE)}
        manifest = {"format": FORMAT_VERSION, "step": step, "files": files}
        with open(tmp / MANIFEST_FILE, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        _fsync_path(tmp)
        if final.exists():  # re-saving the same step: the older copy goes, the others stay
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_path(directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if keep is not None:  # keep the newest ``keep`` that verify; one that fails is never worth keeping
        kept = set(list_checkpoints(directory, verify=True)[-keep:])
        for old in list_checkpoints(directory, verify=False):
            if old not in kept:
                shutil.rmtree(old, ignore_errors=True)
    return final


# ---------------------------------------------------------------- reading
def verify_checkpoint(path: str | Path) -> dict[str, Any]:
    """The manifest of checkpoint folder ``path`` after checking every file's size and SHA-256.

    Raises :class:`CheckpointError` saying what is wrong (missing manifest, missing file, size
    or checksum mismatch).
    """
    path = Path(path)
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise CheckpointError(f"{path} has no {MANIFEST_FILE}: the save did not finish")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{manifest_path} is not a valid manifest: {err}") from err
    if manifest.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {manifest.get('format')!r}, expected {FORMAT_VERSION}")
    for name, meta in files.items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{path} lacks {name}")
        if f.stat().st_size != meta["bytes"]:
            raise CheckpointError(f"{f} has {f.stat().st_size} bytes, the manifest says {meta['bytes']} (truncated?)")
        if _sha256(f) != meta["sha256"]:
            raise CheckpointError(f"{f} does not match its SHA-256 in the manifest (corrupted)")
    return manifest


def list_checkpoints(directory: str | Path, verify: bool = True) -> list[Path]:
    """Checkpoint folders in ``directory``, oldest first; with ``verify`` only those that verify
    (a warning names each one skipped). Temporary ``.tmp-*`` folders are never listed."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = sorted((p for p in directory.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)),
                   key=lambda p: int(_STEP_DIR.match(p.name).group(1)))  # type: ignore[union-attr]
    if not verify:
        return found
    good = []
    for p in found:
        try:
            verify_checkpoint(p)
            good.append(p)
        except CheckpointError as err:
            warnings.warn(f"skipping invalid checkpoint: {err}", stacklevel=2)
    return good


def latest_checkpoint(directory: str | Path) -> Path | None:
    """The newest checkpoint folder in ``directory`` that verifies, or None."""
    found = list_checkpoints(directory, verify=True)
    return found[-1] if found else None


def load_checkpoint(path: str | Path, model: torch.nn.Module | None = None) -> dict[str, Any]:
    """Verify checkpoint folder ``path``, load its weights into ``model`` (if given) and return the training state (read with ``weights_only=True``)."""
    path = Path(path)
    verify_checkpoint(path)
    if model is not None:
        from safetensors.torch import load_model

        # read on the CPU; load_state_dict copies into the parameters wherever they live
        load_model(model, str(path / MODEL_FILE), strict=True)
    return torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)


__all__ = [
    "CheckpointError", "save_checkpoint", "load_checkpoint", "verify_checkpoint", "list_checkpoints",
    "latest_checkpoint", "get_rng_state", "set_rng_state", "step_dir_name",
]
