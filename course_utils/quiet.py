"""Known, harmless library log lines kept out of the notebooks' outputs -- and nothing else.

Installing torchao and bitsandbytes (chapter 11) makes transformers import them whenever it loads
a model, and on a CPU they log three lines that look like errors but are not:

* torchao: "Failed to load ..._C_mxfp8...so / _C_cutlass_90a.abi3.so" -- CUDA kernels (MX-FP8,
  Hopper CUTLASS) that cannot load without a GPU;
* torch: "<enum ...> is an Enum subclass and is now natively supported by torch.compile" -- a
  deprecation notice about how torchao registers its enums;
* bitsandbytes: "Failed to load CPU gemm_4bit_forward from kernels-community" -- an optional
  faster CPU kernel from the Hub's ``kernels`` package; the built-in CPU path is used instead.

and one warning: peft's ``get_peft_model`` (chapter 7's LoRA) reads transformers'
``is_gradient_checkpointing``, which transformers 5 deprecates in favour of
``is_activation_checkpointing`` -- a ``FutureWarning`` between the two libraries, not about the
learner's code.

:func:`install_noise_filters` adds a filter to exactly those loggers that drops only records
containing those messages; it imports nothing. ``import course_utils`` calls it, so every
chapter's output stays readable. Defined in chapter 11, The modern decoder.
"""
from __future__ import annotations

import logging
import warnings

KNOWN_NOISE: tuple[str, ...] = ("Failed to load",                                # torchao / bitsandbytes
                                "is an Enum subclass and is now natively supported")  # torch, on torchao import
NOISY_LOGGERS: tuple[str, ...] = ("torchao", "bitsandbytes.backends.cpu.ops", "torch.utils._pytree")
KNOWN_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    (r"`is_gradient_checkpointing` is deprecated", FutureWarning),   # peft reading transformers' old name
)


class DropKnownNoise(logging.Filter):
    """Drops a record whose message contains one of :data:`KNOWN_NOISE`; keeps every other."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(n in msg for n in KNOWN_NOISE)


def install_noise_filters() -> None:
    """Add :class:`DropKnownNoise` to each of :data:`NOISY_LOGGERS` and ignore the
    :data:`KNOWN_WARNINGS` (once; idempotent)."""
    for message, category in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name in NOISY_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, DropKnownNoise) for f in logger.filters):
            logger.addFilter(DropKnownNoise())


__all__ = ["KNOWN_NOISE", "NOISY_LOGGERS", "KNOWN_WARNINGS", "DropKnownNoise", "install_noise_filters"]
