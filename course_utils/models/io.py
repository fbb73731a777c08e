"""Saving and loading the course's models: ``config.json`` + ``model.safetensors``.

Weights are written and read with safetensors only (no pickle). Saving is atomic: files go
into a temporary folder next to the target, which is then renamed into place.

Defined in chapter 4, The Transformer.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def save_checkpoint(directory: str | os.PathLike, config: dict[str, Any],
                    state: dict[str, torch.Tensor]) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into a temp dir, then rename it into place.

    A reader never sees a half-written checkpoint; an existing ``directory`` is replaced.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        (tmp / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp / WEIGHTS_NAME),
                  metadata={"format": "pt"})
        if directory.exists():
            old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
            os.replace(directory, old)
            os.replace(tmp, directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def load_checkpoint(directory: str | os.PathLike, model_type: str | tuple[str, ...],
                    map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Read ``(config dict, state dict)`` written by :func:`save_checkpoint`; check ``model_type``."""
    from safetensors.torch import load_file

    directory = Path(directory)
    cfg_path, w_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
    if not cfg_path.is_file() or not w_path.is_file():
        raise FileNotFoundError(f"{directory} is not a checkpoint: expected {CONFIG_NAME} and {WEIGHTS_NAME} in it")
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    allowed = (model_type,) if isinstance(model_type, str) else model_type
    if cfg.get("model_type") not in allowed:
        raise ValueError(f"{directory} holds a {cfg.get('model_type')!r} checkpoint, expected one of {allowed}")
    state = load_file(str(w_path), device=str(map_location))
    return cfg, state


__all__ = ["save_checkpoint", "load_checkpoint", "CONFIG_NAME", "WEIGHTS_NAME"]
