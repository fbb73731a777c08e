"""Real pretrained models, loaded offline from the PyPI assets (or from the Hub on request).

* :func:`load_minilm` — all-MiniLM-L6-v2, a 6-layer, 384-wide BERT-type sentence encoder (22M).
* :func:`load_smollm2` — SmolLM2-135M-Instruct, a 30-layer Llama-type decoder with a chat template.
* :func:`embed` — sentence embeddings with MiniLM: mean pooling over real tokens, L2-normalised
  (what sentence-transformers does for this model).

SmolLM2 arrives as a quantised GGUF file; transformers de-quantises it to fp32 on load, which
takes a minute or two on a laptop. The first load therefore saves the de-quantised weights as
safetensors under ``<data dir>/models/smollm2-135m-instruct/`` (atomically, with the size, mtime
and sha256 of every file in ``source.json``), and later loads take a couple of seconds; a copy
whose bytes changed is corrupt and prepared again. ``python -m course_utils.pretrained prepare``
does it at set-up.

``source="hub"`` loads ``name`` (a Hub id) instead; that needs a network. Weights are only ever
read from safetensors or GGUF; ``trust_remote_code`` is never set.

Defined in chapter 0, Setup.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import torch

from . import assets
from .models.bert import mean_pool  # noqa: F401  (sentence embeddings: the mean of the token vectors)

MINILM_HUB = "sentence-transformers/all-MiniLM-L6-v2"
SMOLLM2_HUB = "HuggingFaceTB/SmolLM2-135M-Instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SOURCES = ("local", "hub")


def _check_source(source: str) -> None:
    if source not in SOURCES:
        raise ValueError(f"source must be one of {SOURCES}, got {source!r}. "
                         "'local' reads the offline assets; 'hub' needs a network.")


def load_minilm(source: str = "local", name: str = MINILM_HUB, **kwargs: Any):
    """(``BertModel``, tokenizer) of all-MiniLM-L6-v2.

    ``kwargs`` go to ``from_pretrained`` (e.g. ``attn_implementation="eager"`` for attention
    weights). The model is returned in eval mode.
    """
    from transformers import AutoModel, AutoTokenizer

    _check_source(source)
    where = str(assets.fetch("minilm", verbose=False)) if source == "local" else name
    tokenizer = AutoTokenizer.from_pretrained(where)
    model = AutoModel.from_pretrained(where, **kwargs).eval()
    return model, tokenizer


def smollm2_cache_dir() -> Path:
    return assets.data_dir() / "models" / "smollm2-135m-instruct"


def _smollm2_cache_ok(folder: Path) -> bool:
    """The prepared folder comes from the registry's GGUF and every file is the one saved
    (``source.json`` records their digests; in a folder prepared before digests were recorded,
    the weights' size and safetensors header are checked)."""
    from .model_cache import folder_problem

    try:
        marker = json.loads((folder / "source.json").read_text())
    except (OSError, ValueError):
        return False
    weights = folder / "model.safetensors"
    if marker.get("gguf_sha256") != assets.get("smollm2").sha256 or not weights.is_file():
        return False
    if not marker.get("files") and weights.stat().st_size != marker.get("size"):
        return False
    before = json.dumps(marker)
    why = folder_problem(folder, marker.get("files"))
    if why is not None:
        print(f"[pretrained] {folder}: {why} (corrupt); preparing SmolLM2 again")
        return False
    if json.dumps(marker) != before:  # hashed right after a copy: remember the new mtimes
        try:
            assets.write_json_atomic(folder / "source.json", marker)
        except OSError:
            pass
    return True


def prepare_smollm2(verbose: bool = True) -> Path:
    """De-quantise the GGUF once into safetensors (atomically); return the folder."""
    folder = smollm2_cache_dir()
    if _smollm2_cache_ok(folder):
        return folder
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir = assets.fetch("smollm2", verbose=verbose)
    if verbose:
        print("[pretrained] de-quantising SmolLM2 from GGUF once (a minute or two) ...")
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=SMOLLM2_GGUF)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-smollm2-", dir=folder.parent))
    try:
        save_model(model, str(tmp / "model.safetensors"))  # handles the tied embedding
        config = model.config.to_dict()
        config.pop("quantization_config", None)  # the saved weights are plain fp32
        (tmp / "config.json").write_text(json.dumps(config, indent=1))
        tokenizer.save_pretrained(str(tmp))
        size = (tmp / "model.safetensors").stat().st_size
        (tmp / "source.json").write_text(json.dumps(
            {"gguf_sha256": assets.get("smollm2").sha256, "gguf_file": SMOLLM2_GGUF, "size": size,
             "files": assets.file_records(tmp)}))
        old = folder.with_name(f".old-{folder.name}-{os.getpid()}")
        if folder.exists():  # moved aside first: the name never points at half a folder
            os.replace(folder, old)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(folder.with_name(f".old-{folder.name}-{os.getpid()}"), ignore_errors=True)
    return folder


def load_smollm2(source: str = "local", name: str = SMOLLM2_HUB, **kwargs: Any):
    """(``LlamaForCausalLM``, tokenizer) of SmolLM2-135M-Instruct, in eval mode.

    ``kwargs`` go to ``from_pretrained`` (e.g. ``attn_implementation="eager"``).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    _check_source(source)
    where = str(prepare_smollm2()) if source == "local" else name
    tokenizer = AutoTokenizer.from_pretrained(where)
    model = AutoModelForCausalLM.from_pretrained(where, **kwargs).eval()
    return model, tokenizer


@torch.no_grad()
def embed(texts: Sequence[str], model=None, tokenizer=None, batch_size: int = 64,
          max_length: int = 256) -> torch.Tensor:
    """Unit-length MiniLM sentence embeddings of ``texts`` → Tensor [N, 384].

    Cosine similarity of two rows is then their dot product.
    """
    if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
        raise TypeError("texts must be a sequence of strings (wrap a single sentence in a list)")
    if len(texts) == 0:
        raise ValueError("texts is empty")
    if model is None or tokenizer is None:
        model, tokenizer = load_minilm()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(texts), batch_size):
        batch = tokenizer(list(texts[i:i + batch_size]), padding=True, truncation=True,
                          max_length=max_length, return_tensors="pt").to(device)
        hidden = model(**batch).last_hidden_state
        out.append(torch.nn.functional.normalize(mean_pool(hidden, batch["attention_mask"]), dim=-1).cpu())
    return torch.cat(out)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args != ["prepare"]:
        print("usage: python -m course_utils.pretrained prepare", file=sys.stderr)
        return 2
    print(f"[pretrained] SmolLM2 ready in {prepare_smollm2()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
