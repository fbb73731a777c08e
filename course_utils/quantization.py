"""Quantization written out: store weights in 8 or 4 bits, one scale per tensor, row or group.

Reads top to bottom:

* :func:`absmax_quantize` / :func:`absmax_dequantize` -- symmetric "absmax" int8/int4, one scale
  per tensor or per output channel (row of a Linear weight);
* :func:`groupwise_quantize` / :func:`groupwise_dequantize` -- one scale per group of
  ``group_size`` consecutive weights of a row: symmetric (absmax) or asymmetric (min + scale, the
  layout of GGUF's Q4_1);
* :func:`fake_quantize` -- quantize then de-quantize (the weights a quantized model computes
  with), :func:`quantized_bytes` -- what storing them takes;
* :func:`fake_quantize_linears_` -- do that to every Linear layer of a decoder's blocks;
* :func:`nf4_fake_quantize` -- the same through bitsandbytes' NF4 (4-bit NormalFloat);
* :func:`weight_bytes` -- bytes of a model's weights, quantized tensor subclasses included;
* :func:`heldout_eval` -- bits per character, next-token predictions and tokens/s on a text;
* :func:`q4_1_dequantize_block` -- one 20-byte GGUF Q4_1 block de-quantized by hand.

The library counterparts (torchao's ``choose_qparams_affine`` / ``quantize_affine``, gguf's
Q4_1, bitsandbytes' NF4) are checked against these functions in ``tests/test_quantization.py``.
:func:`quiet_quantization_imports` imports torchao and bitsandbytes without the log lines they
print on a CPU-only machine (see its docstring).

Defined in chapter 11, The modern decoder.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

from .quiet import install_noise_filters

BITS = (4, 8)


def _check_bits(bits: int) -> int:
    if not isinstance(bits, int) or isinstance(bits, bool) or bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits!r}")
    return bits


def _check_weight(w: torch.Tensor, name: str = "w", dims: int | None = 2) -> None:
    if not isinstance(w, torch.Tensor) or not w.is_floating_point():
        raise TypeError(f"{name} must be a floating-point torch.Tensor, got "
                        f"{type(w).__name__ if not isinstance(w, torch.Tensor) else w.dtype}")
    if dims is not None and w.dim() != dims:
        raise ValueError(f"{name} must be {dims}-D [out, in], got shape {tuple(w.shape)}")


# ------------------------------------------------------------------------------ absmax
def absmax_quantize(w: torch.Tensor, bits: int = 8, per_channel: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric absmax quantization: ``q = round(w / scale)``, ``scale = max|w| / qmax``.

    ``qmax = 2**(bits-1) - 1`` (127 for int8, 7 for int4; the range is symmetric, so -128 / -8
    go unused and 0.0 maps to 0 exactly). ``w`` [out, in] -> ``q`` [out, in] (int8 holding
    values in [-qmax, qmax]) and ``scale``: [] for one scale per tensor, [out, 1] with
    ``per_channel`` (one per output row). Defined in chapter 11, The modern decoder.
    """
    _check_bits(bits)
    _check_weight(w, dims=2 if per_channel else None)
    qmax = 2 ** (bits - 1) - 1
    amax = w.abs().amax(dim=-1, keepdim=True) if per_channel else w.abs().amax()
    scale = amax.float().clamp(min=torch.finfo(torch.float32).tiny) / qmax
    q = torch.clamp(torch.round(w.float() / scale), -qmax, qmax).to(torch.int8)
    return q, scale


def absmax_dequantize(q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``q`` [out, in] (int8) and ``scale`` ([] or [out, 1]) -> ``q · scale`` [out, in] (float32)."""
    return q.float() * scale


# ------------------------------------------------------------------------------ group-wise
def groupwise_quantize(w: torch.Tensor, bits: int, group_size: int, symmetric: bool = True,
                       scale_dtype: torch.dtype = torch.float32
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """One scale per group of ``group_size`` consecutive weights of each row.

    ``w`` [out, in] with ``in % group_size == 0`` -> ``(q [out, in], scale [out, in/g], low)``.

    * ``symmetric=True`` (absmax per group): ``q = round(w / scale)`` in [-qmax, qmax] (int8),
      ``scale = max|w| / qmax``; ``low`` is None.
    * ``symmetric=False`` (min + scale, GGUF Q4_1's layout): ``scale = (max - min) / (2**bits - 1)``,
      ``q = floor((w - min) / scale + 0.5)`` in [0, 2**bits - 1] (uint8), ``low = min``
      [out, in/g]; ``w ≈ q · scale + low``.

    ``scale_dtype`` is how the scales (and ``low``) are stored; ``torch.float16`` is what GGUF
    stores (the codes are computed with the float32 scale first, as gguf does).
    Defined in chapter 11, The modern decoder.
    """
    _check_bits(bits)
    _check_weight(w)
    if not isinstance(group_size, int) or isinstance(group_size, bool) or group_size < 1:
        raise ValueError(f"group_size must be a positive int, got {group_size!r}")
    out_f, in_f = w.shape
    if in_f % group_size:
        raise ValueError(f"group_size={group_size} must divide the input dimension {in_f} of w {tuple(w.shape)}")
    g = w.float().reshape(out_f, in_f // group_size, group_size)         # [out, n_groups, g]
    tiny = torch.finfo(torch.float32).tiny
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        scale = g.abs().amax(dim=-1, keepdim=True).clamp(min=tiny) / qmax
        q = torch.clamp(torch.round(g / scale), -qmax, qmax).to(torch.int8)
        return q.reshape(out_f, in_f), scale.squeeze(-1).to(scale_dtype), None
    levels = 2 ** bits - 1
    low = g.amin(dim=-1, keepdim=True)
    scale = (g.amax(dim=-1, keepdim=True) - low) / levels
    inv = torch.where(scale == 0, torch.zeros_like(scale), 1.0 / scale)
    q = torch.clamp(torch.floor((g - low) * inv + 0.5), 0, levels).to(torch.uint8)
    return q.reshape(out_f, in_f), scale.squeeze(-1).to(scale_dtype), low.squeeze(-1).to(scale_dtype)


def groupwise_dequantize(q: torch.Tensor, scale: torch.Tensor, low: torch.Tensor | None = None) -> torch.Tensor:
    """``q`` [out, in], ``scale`` (and ``low``) [out, in/g] -> ``q · scale (+ low)`` [out, in] (float32)."""
    out_f, in_f = q.shape
    n_groups = scale.shape[-1]
    if scale.shape != (out_f, n_groups) or in_f % n_groups:
        raise ValueError(f"scale must be [out, in/group_size] for q {tuple(q.shape)}, got {tuple(scale.shape)}")
    g = q.float().reshape(out_f, n_groups, in_f // n_groups) * scale.float()[..., None]
    if low is not None:
        g = g + low.float()[..., None]
    return g.reshape(out_f, in_f)


def fake_quantize(w: torch.Tensor, bits: int, group_size: int | None = None, symmetric: bool = True,
                  scale_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Quantize and de-quantize ``w`` [out, in] -> [out, in] (same dtype): the weights a model
    quantized this way computes with. ``group_size=None``: one absmax scale per output row."""
    if group_size is None:
        if not symmetric:
            raise ValueError("symmetric=False needs a group_size (min + scale per group)")
        q, scale = absmax_quantize(w, bits, per_channel=True)
        return absmax_dequantize(q, scale.to(scale_dtype).float()).to(w.dtype)
    return groupwise_dequantize(*groupwise_quantize(w, bits, group_size, symmetric, scale_dtype)).to(w.dtype)


def quantized_bytes(shape: tuple[int, int], bits: int, group_size: int | None = None, symmetric: bool = True,
                    scale_bytes: int = 4) -> int:
    """Bytes to store a [out, in] weight in this format: ``out·in·bits/8`` for the codes plus one
    scale (and, asymmetric, one minimum) of ``scale_bytes`` per group (per row without groups)."""
    _check_bits(bits)
    out_f, in_f = shape
    n_groups = out_f * (1 if group_size is None else in_f // group_size)
    return out_f * in_f * bits // 8 + n_groups * scale_bytes * (1 if symmetric else 2)


def nf4_fake_quantize(w: torch.Tensor, blocksize: int = 64) -> tuple[torch.Tensor, int]:
    """bitsandbytes' NF4: each block of ``blocksize`` weights is scaled by its absmax and rounded
    to the nearest of 16 levels placed at quantiles of a normal distribution.

    ``w`` [out, in] -> (de-quantized [out, in], bytes stored: 4-bit codes + one float32 absmax
    per block).
    """
    _check_weight(w)
    bnb_functional = quiet_quantization_imports()["bitsandbytes.functional"]
    packed, state = bnb_functional.quantize_4bit(w.float().contiguous(), blocksize=blocksize, quant_type="nf4")
    w_hat = bnb_functional.dequantize_4bit(packed, state).to(w.dtype)
    return w_hat, packed.numel() * packed.element_size() + state.absmax.numel() * state.absmax.element_size()


# ------------------------------------------------------------------------------ whole models
def decoder_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The Linear layers inside the decoder blocks (attention and MLP projections), by name.

    The token embedding and the output layer (tied to it in SmolLM2) are left out, as
    bitsandbytes and most 4-bit recipes do.
    """
    return {name: m for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and ".layers." in f".{name}" and "lm_head" not in name}


@torch.no_grad()
def fake_quantize_linears_(model: nn.Module, quantize: Callable[[torch.Tensor], tuple[torch.Tensor, int]]) -> int:
    """Replace the weight of every :func:`decoder_linears` layer by ``quantize(w)[0]`` (in place)
    and return the bytes of all the model's weights with those layers stored as
    ``quantize(w)[1]`` bytes and everything else as it is."""
    linears = decoder_linears(model)
    if not linears:
        raise ValueError("model has no Linear layers under '.layers.' to quantize")
    total = weight_bytes(model)
    for layer in linears.values():
        w_hat, nbytes = quantize(layer.weight)
        total += nbytes - layer.weight.numel() * layer.weight.element_size()
        layer.weight.copy_(w_hat)
    return total


def weight_bytes(model: nn.Module) -> int:
    """Bytes of a model's parameters (shared ones once). A torchao quantized weight counts its
    stored tensors (int8 codes and scales), a bitsandbytes 4-bit one its packed codes and
    block absmax values."""
    total = 0
    for p in model.parameters():
        names = getattr(p, "tensor_data_names", None)                       # torchao subclasses
        if names:
            parts = [getattr(p, n) for n in names]
            parts += [getattr(p, n, None) for n in (getattr(p, "optional_tensor_data_names", None) or [])]
            total += sum(t.numel() * t.element_size() for t in parts if isinstance(t, torch.Tensor))
        else:
            total += p.numel() * p.element_size()
            state = getattr(p, "quant_state", None)                          # bitsandbytes Params4bit
            if state is not None and getattr(state, "absmax", None) is not None:
                total += state.absmax.numel() * state.absmax.element_size()
    return total


@dataclass
class HeldOut:
    """:func:`heldout_eval`'s result: bits per character, the argmax prediction of every scored
    position ``top1`` [M], and forward throughput."""

    bits_per_char: float
    top1: torch.Tensor
    tokens_per_s: float
    n_tokens: int
    n_chars: int


@torch.no_grad()
def heldout_eval(model: nn.Module, tokenizer: Any, text: str, seq_len: int = 256,
                 max_tokens: int | None = None) -> HeldOut:
    """Score ``text`` with a causal LM in non-overlapping windows of ``seq_len`` tokens.

    Bits per character = Σ −log₂ p(token) over the predicted tokens (all but each window's
    first) / the characters those tokens spell, so models with different tokenizers compare.
    ``max_tokens`` keeps the first tokens only. Defined in chapter 11, The modern decoder.
    """
    if not isinstance(seq_len, int) or seq_len < 2:
        raise ValueError(f"seq_len must be an int >= 2, got {seq_len!r}")
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids[0]
    if max_tokens is not None:
        ids = ids[:max_tokens]
    n_full = ids.numel() // seq_len
    if n_full == 0:
        raise ValueError(f"text has {ids.numel()} tokens; need at least seq_len={seq_len}")
    windows = ids[:n_full * seq_len].view(n_full, seq_len)                  # [W, T]
    model.eval()
    nll, preds, seconds = 0.0, [], 0.0
    for w in windows:
        start = time.perf_counter()
        logits = model(w[None]).logits[0, :-1].float()                        # [T-1, V]
        seconds += time.perf_counter() - start
        nll += torch.nn.functional.cross_entropy(logits, w[1:], reduction="sum").item()
        preds.append(logits.argmax(-1))
    covered = tokenizer.decode(windows.reshape(-1).tolist())
    first_chars = sum(len(tokenizer.decode([int(t)])) for t in windows[:, 0])
    n_chars = len(covered) - first_chars
    return HeldOut(bits_per_char=nll / math.log(2) / n_chars, top1=torch.cat(preds),
                   tokens_per_s=windows.numel() / seconds, n_tokens=windows.numel(), n_chars=n_chars)


# ------------------------------------------------------------------------------ GGUF Q4_1
Q4_1_BLOCK = 32        # weights per block
Q4_1_BLOCK_BYTES = 20  # float16 scale d, float16 minimum m, 16 bytes of 4-bit codes


def q4_1_dequantize_block(block: np.ndarray | bytes) -> np.ndarray:
    """One GGUF Q4_1 block (20 bytes) -> its 32 weights (float32).

    Layout: bytes 0-1 the scale ``d`` (float16), 2-3 the minimum ``m`` (float16), 4-19 sixteen
    bytes of codes: byte j holds weight j in its low 4 bits and weight j + 16 in its high 4 bits.
    Weight = ``d · q + m``. Defined in chapter 11, The modern decoder.
    """
    raw = np.frombuffer(bytes(block), dtype=np.uint8) if not isinstance(block, np.ndarray) else block.astype(np.uint8)
    if raw.shape != (Q4_1_BLOCK_BYTES,):
        raise ValueError(f"a Q4_1 block is {Q4_1_BLOCK_BYTES} bytes, got shape {raw.shape}")
    d = raw[0:2].view(np.float16).astype(np.float32)[0]
    m = raw[2:4].view(np.float16).astype(np.float32)[0]
    codes = raw[4:]
    q = np.concatenate([codes & 0x0F, codes >> 4]).astype(np.float32)         # [32]
    return d * q + m


# ------------------------------------------------------------------------------ quiet imports
def quiet_quantization_imports() -> dict[str, Any]:
    """Import torchao and bitsandbytes with three known, harmless log lines filtered out:

    * torchao: "Failed to load ..._C_mxfp8...so / _C_cutlass_90a.abi3.so" -- CUDA kernels
      (MX-FP8, Hopper CUTLASS) that cannot load without a GPU;
    * torch: "<enum ...> is an Enum subclass and is now natively supported by torch.compile" --
      a deprecation notice about how torchao registers its enums;
    * bitsandbytes: "Failed to load CPU gemm_4bit_forward from kernels-community" -- an optional
      faster CPU kernel from the Hub ``kernels`` package; the built-in CPU path is used instead.

    Only records containing those messages are dropped, on those loggers only (see
    :mod:`course_utils.quiet`, which ``import course_utils`` already runs). Returns the imported
    modules by name.
    """
    install_noise_filters()
    import bitsandbytes.functional as bnb_functional
    import torchao
    import torchao.quantization as tq

    return {"torchao": torchao, "torchao.quantization": tq, "bitsandbytes.functional": bnb_functional}


__all__ = ["BITS", "absmax_quantize", "absmax_dequantize", "groupwise_quantize", "groupwise_dequantize",
           "fake_quantize", "quantized_bytes", "nf4_fake_quantize", "decoder_linears", "fake_quantize_linears_",
           "weight_bytes", "HeldOut", "heldout_eval", "Q4_1_BLOCK", "Q4_1_BLOCK_BYTES", "q4_1_dequantize_block",
           "quiet_quantization_imports"]
