"""Pick the device to run on, seed everything, and choose an autocast dtype.

Order: an explicit override (argument or ``$COURSE_DEVICE``), then CUDA, XLA (a Colab TPU, via
``torch_xla.device()``), MPS, CPU.

Precision: :func:`choose_precision` says which autocast dtype is worth using and why. On a GPU or
TPU that is a property of the device (bf16, or fp16 with a gradient scaler on a T4). On a CPU it
is decided by evidence: bf16 only where the processor has native bf16 instructions (AMX or
AVX512-BF16 on x86, the BF16 extension on Arm) *and* a short probe, timed here, shows a
whole training step of a small course GPT *at the width of the model being trained* clearly
faster in bf16 than in fp32; fp32 otherwise. (A matmul alone is 2× faster in bf16 on such a CPU
even at width 32, but a whole step at that width is slower: the casts autocast adds around
every matmul, attention and the optimizer do not speed up, so the probe times the step.) ``$COURSE_PRECISION`` (``auto`` | ``fp32`` |
``bf16``) or the ``mode`` argument forces either. Defined in chapter 0, Setup.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import os
import platform
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

ENV_VAR = "COURSE_DEVICE"
VALID_KINDS = ("cpu", "cuda", "mps", "xla")
PRECISION_ENV_VAR = "COURSE_PRECISION"
PRECISION_MODES = ("auto", "fp32", "bf16")
# "auto" picks bf16 on a CPU only when the training-step probe finds it at least this much faster
# than fp32: a smaller gain is inside the noise of a shared machine and not worth bf16's rounding
MIN_CPU_BF16_SPEEDUP = 1.15
# the width probed when the caller does not say (a laptop-sized course model)
DEFAULT_PROBE_WIDTH = 256


def _xla_available() -> bool:
    return importlib.util.find_spec("torch_xla") is not None


def _xla_device() -> torch.device:
    # torch_xla >= 2.5: ``torch_xla.device()``; ``xm.xla_device()`` is deprecated.
    torch_xla = importlib.import_module("torch_xla")
    return torch_xla.device()


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def get_device(override: str | torch.device | None = None) -> torch.device:
    """The device to compute on.

    ``override`` (or ``$COURSE_DEVICE``) may be ``cpu``, ``cuda``, ``cuda:1``, ``mps`` or
    ``xla``; asking for one that is not available raises a ``RuntimeError`` saying so.
    """
    choice = override if override is not None else os.environ.get(ENV_VAR) or None
    if isinstance(choice, torch.device):
        return choice
    if choice is not None:
        kind = str(choice).strip().lower()
        base = kind.split(":")[0]
        if base not in VALID_KINDS:
            raise ValueError(f"Unknown device {choice!r}; expected one of {', '.join(VALID_KINDS)} (e.g. 'cuda:0').")
        if base == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"Device {choice!r} was asked for, but torch.cuda.is_available() is False.")
        if base == "mps" and not _mps_available():
            raise RuntimeError(f"Device {choice!r} was asked for, but MPS is not available.")
        if base == "xla":
            if not _xla_available():
                raise RuntimeError("Device 'xla' was asked for, but torch_xla is not installed (Colab TPU runtimes ship it).")
            return _xla_device()
        return torch.device(kind)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if _xla_available():
        return _xla_device()
    if _mps_available():
        return torch.device("mps")
    return torch.device("cpu")


def describe_device(device: torch.device | None = None) -> str:
    """A one-line human description, e.g. ``cuda (NVIDIA H100)`` or ``cpu (2 threads)``."""
    device = device or get_device()
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return str(device)


def seed_everything(seed: int = 0) -> None:
    """Seed Python, NumPy and torch (all devices) for reproducible runs."""
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():  # pragma: no cover - no GPU in CI
        torch.cuda.manual_seed_all(seed)


# ------------------------------------------------------------------------------ precision
def cpu_bf16_isa() -> str | None:
    """The CPU's native bf16 instruction set, or None: ``"amx_bf16"``, ``"avx512_bf16"`` (x86) or
    ``"bf16"`` (Arm's BF16 extension, e.g. Apple M2 and later, Graviton 3).

    Asks torch's own CPU feature checks first, then the flags in ``/proc/cpuinfo`` (Linux).
    """
    cpu = getattr(torch, "cpu", None)
    for flag, check in (("amx_bf16", "_is_amx_tile_supported"), ("avx512_bf16", "_is_avx512_bf16_supported")):
        fn = getattr(cpu, check, None)
        try:
            if fn is not None and fn():
                return flag
        except Exception:  # noqa: BLE001 - a private helper that changed: fall back to the flags
            pass
    flags = _cpuinfo_flags()
    for flag in ("amx_bf16", "avx512_bf16", "bf16"):
        if flag in flags:
            return flag
    if platform.system() == "Darwin" and platform.machine() == "arm64":
        return _apple_bf16()
    return None


def _cpuinfo_flags() -> set[str]:
    """The feature flags of the first CPU in ``/proc/cpuinfo`` (x86 ``flags``, Arm ``Features``)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):
            return set(value.split())
    return set()


def _apple_bf16() -> str | None:  # pragma: no cover - macOS only
    import subprocess

    try:
        out = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True,
                             timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return "bf16" if out == "1" else None


@dataclass(frozen=True)
class PrecisionProbe:
    """Best-of-``rounds`` speed of one piece of work in fp32 and in bf16 on the CPU, as GFLOP/s.

    ``kind``: ``"matmul"`` (:func:`probe_cpu_matmul`, an MLP block's two matmuls, the hardware's
    peak) or ``"train step"`` (:func:`probe_cpu_train_step`, what training actually gains)."""

    fp32_gflops: float
    bf16_gflops: float
    tokens: int
    width: int
    threads: int
    cpu: str
    torch: str
    kind: str = "matmul"

    @property
    def speedup(self) -> float:
        """bf16 GFLOP/s over fp32 GFLOP/s (above 1: bf16 is faster)."""
        return self.bf16_gflops / self.fp32_gflops

    def describe(self) -> str:
        """e.g. ``train step 768 tokens x width 256, 2 threads: fp32 61 / bf16 88 GFLOP/s``."""
        return (f"{self.kind} {self.tokens} tokens x width {self.width}, {self.threads} threads: "
                f"fp32 {self.fp32_gflops:.0f} / bf16 {self.bf16_gflops:.0f} GFLOP/s")


def _check_positive(**values: int) -> None:
    for name, v in values.items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")


def probe_cpu_matmul(tokens: int = 1024, width: int = 256, rounds: int = 9, repeat: int = 3) -> PrecisionProbe:
    """Time ``x[tokens, width] @ W1[4*width, width]ᵀ @ W2[width, 4*width]ᵀ`` (an MLP block of a
    laptop-sized course model) in fp32 and in bf16 on the CPU: the matmul units' peak.

    The two precisions run alternately, ``rounds`` times, and each keeps its fastest time:
    other programs on the machine can only slow a run down, so the best of several is the
    closest to what the hardware does, and alternating exposes both precisions to the same
    load. About 0.3 s on two cores.
    """
    import torch.nn.functional as F

    _check_positive(tokens=tokens, width=width, rounds=rounds, repeat=repeat)
    g = torch.Generator().manual_seed(0)
    fp32 = (torch.randn(tokens, width, generator=g), torch.randn(4 * width, width, generator=g) * 0.05,
            torch.randn(width, 4 * width, generator=g) * 0.05)
    mats = {"fp32": fp32, "bf16": tuple(t.to(torch.bfloat16) for t in fp32)}
    best = {k: float("inf") for k in mats}
    with torch.no_grad():
        for x, w1, w2 in mats.values():  # first calls pick kernels and allocate: not timed
            F.linear(F.linear(x, w1), w2)
        for r in range(rounds):
            for name in (("fp32", "bf16") if r % 2 == 0 else ("bf16", "fp32")):
                x, w1, w2 = mats[name]
                t0 = time.perf_counter()
                for _ in range(repeat):
                    F.linear(F.linear(x, w1), w2)
                best[name] = min(best[name], (time.perf_counter() - t0) / repeat)
    flops = 2 * 2 * tokens * width * 4 * width
    return PrecisionProbe(fp32_gflops=flops / best["fp32"] / 1e9, bf16_gflops=flops / best["bf16"] / 1e9,
                          tokens=tokens, width=width, threads=torch.get_num_threads(), cpu=_cpu_name(),
                          torch=torch.__version__, kind="matmul")


def probe_cpu_train_step(width: int = DEFAULT_PROBE_WIDTH, tokens: int = 768, n_layer: int = 2,
                         rounds: int = 5, steps: int = 2) -> PrecisionProbe:
    """Time whole training steps (forward, backward, AdamW) of a small course GPT of width
    ``width`` (``n_layer`` layers, heads of 32, block 64, ``tokens // 64`` sequences of a
    65-character vocabulary) in plain fp32 and under ``torch.autocast("cpu", torch.bfloat16)``.

    This is what training gains: at small widths the casts autocast adds and the parts that
    bf16 does not speed up (attention's softmax, LayerNorm, the optimizer) outweigh faster
    matmuls. Alternating rounds, best of each; GFLOP/s from the model's own FLOP count per token.
    Well under a second at width 256 on two cores, a few seconds at 1024.
    """
    from .models.gpt import GPT, GPTConfig

    _check_positive(width=width, tokens=tokens, n_layer=n_layer, rounds=rounds, steps=steps)
    block = 64
    if tokens % block:
        raise ValueError(f"tokens must be a multiple of the block size {block}, got {tokens}")
    n_head = width // 32 if width % 32 == 0 else 1
    state = torch.random.get_rng_state()
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=65, block_size=block, n_layer=n_layer, n_head=n_head, n_embd=width, dropout=0.0))
    x = torch.randint(0, 65, (tokens // block, block))
    torch.random.set_rng_state(state)  # the probe must not move the caller's random stream
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)

    def run(bf16: bool, n: int) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model(x, targets=x).loss
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return (time.perf_counter() - t0) / n

    run(False, 1), run(True, 1)  # first calls pick kernels and allocate: not timed
    best = {False: float("inf"), True: float("inf")}
    for r in range(rounds):
        for bf16 in ((False, True) if r % 2 == 0 else (True, False)):
            best[bf16] = min(best[bf16], run(bf16, steps))
    flops = model.estimate_flops_per_token(block) * tokens
    return PrecisionProbe(fp32_gflops=flops / best[False] / 1e9, bf16_gflops=flops / best[True] / 1e9,
                          tokens=tokens, width=width, threads=torch.get_num_threads(), cpu=_cpu_name(),
                          torch=torch.__version__, kind="train step")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.lower().startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


_PROBE_CACHE: dict[tuple[int, int], PrecisionProbe] = {}
PROBE_FILE = "cpu_precision_probe.json"
# part of each cached probe's key: a new value when the probe or the course's model code changes
# what a step costs (v2: attention attends CPU bf16 in fp32), so that old timings are not reused
PROBE_KIND = "train step v2"


def _probe_file() -> Path | None:
    try:
        from .assets import data_dir
    except Exception:  # noqa: BLE001 - no data dir: keep the probe in memory only
        return None
    return data_dir() / "cache" / PROBE_FILE


def cached_cpu_probe(refresh: bool = False, width: int | None = None) -> PrecisionProbe:
    """:func:`probe_cpu_train_step` at ``width`` (default :data:`DEFAULT_PROBE_WIDTH`), run once
    per process, thread count and width, and remembered in
    ``<data dir>/cache/cpu_precision_probe.json`` for this CPU, torch version and thread count,
    so that every notebook on one machine makes the same choice (a probe timed on a busy
    machine would otherwise flip between runs). ``refresh=True`` measures again."""
    width = DEFAULT_PROBE_WIDTH if width is None else width
    _check_positive(width=width)
    threads = torch.get_num_threads()
    if not refresh and (threads, width) in _PROBE_CACHE:
        return _PROBE_CACHE[threads, width]
    path = _probe_file()
    key = f"{_cpu_name()} | torch {torch.__version__} | {threads} threads | {PROBE_KIND}, width {width}"
    saved: dict = {}
    if path is not None and path.is_file():
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            saved = {}
    if not refresh and isinstance(saved.get(key), dict):
        try:
            _PROBE_CACHE[threads, width] = PrecisionProbe(**saved[key])
            return _PROBE_CACHE[threads, width]
        except TypeError:
            pass  # written by another version: measure again
    probe = probe_cpu_train_step(width=width)
    _PROBE_CACHE[threads, width] = probe
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            saved[key] = asdict(probe)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(saved, indent=1))
            os.replace(tmp, path)
        except OSError:
            pass  # a read-only data dir: the choice is still cached in memory
    return probe


def model_width(model: torch.nn.Module) -> int | None:
    """The hidden width of ``model`` from its config (``n_embd``, ``hidden_size``, ``d_model``
    or ``dim``), or None when it has none: what :func:`choose_precision` probes at."""
    config = getattr(model, "config", None)
    for name in ("n_embd", "hidden_size", "d_model", "dim"):
        value = getattr(config, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


@dataclass(frozen=True)
class PrecisionChoice:
    """What :func:`choose_precision` decided: ``dtype`` for autocast (None: plain fp32) and why."""

    dtype: torch.dtype | None
    reason: str
    probe: PrecisionProbe | None = None

    @property
    def name(self) -> str:
        """``"bf16"``, ``"fp16"`` or ``"fp32"``."""
        return {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self.dtype, "fp32")  # type: ignore[arg-type]

    def __str__(self) -> str:
        """e.g. ``bf16 autocast (avx512_bf16, probe 1.4× fp32 at width 256)`` or ``fp32 (no native bf16 on this CPU)``."""
        return f"{self.name} autocast ({self.reason})" if self.dtype is not None else f"fp32 ({self.reason})"


def precision_mode(mode: str | None = None) -> str:
    """``mode`` if given, else ``$COURSE_PRECISION``, else ``"auto"``; checked and lower-cased."""
    raw = mode if mode is not None else os.environ.get(PRECISION_ENV_VAR, "") or "auto"
    if not isinstance(raw, str):
        raise TypeError(f"precision mode must be a string, one of {PRECISION_MODES}, got {type(raw).__name__}")
    value = raw.strip().lower()
    if value not in PRECISION_MODES:
        source = "mode" if mode is not None else f"${PRECISION_ENV_VAR}"
        raise ValueError(f"{source} must be one of {', '.join(PRECISION_MODES)}, got {raw!r}")
    return value


def choose_precision(device: torch.device | None = None, mode: str | None = None,
                     width: int | None = None) -> PrecisionChoice:
    """The autocast dtype worth using on ``device`` (default: :func:`get_device`), and why.

    ``mode`` (or ``$COURSE_PRECISION``): ``"fp32"`` turns autocast off everywhere; ``"bf16"``
    forces bf16 (on a CPU without native bf16 it is emulated: correct, but slow); ``"auto"``:

    * CUDA: bf16 where supported, else fp16 (a T4; the training loop adds a gradient scaler);
    * XLA (TPU): bf16; MPS: fp16;
    * CPU: bf16 when :func:`cpu_bf16_isa` finds native bf16 and :func:`cached_cpu_probe`
      measures a training step at ``width`` (the model's, e.g. from :func:`model_width`;
      default :data:`DEFAULT_PROBE_WIDTH`) at least :data:`MIN_CPU_BF16_SPEEDUP` times faster
      in bf16, else fp32.
    """
    device = device if device is not None else get_device()
    if not isinstance(device, torch.device):
        raise TypeError(f"device must be a torch.device, got {type(device).__name__}")
    chosen = precision_mode(mode)
    forced = f"forced by {'the mode argument' if mode is not None else '$' + PRECISION_ENV_VAR}"
    if chosen == "fp32":
        return PrecisionChoice(None, forced)
    if chosen == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError(f"precision 'bf16' was asked for ({forced}), but this GPU has no bf16; "
                             "use 'auto' (fp16 with a gradient scaler) or 'fp32'")
        return PrecisionChoice(torch.bfloat16, forced)
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return PrecisionChoice(torch.bfloat16, "GPU with bf16")
        return PrecisionChoice(torch.float16, "GPU without bf16: fp16 with a gradient scaler")
    if device.type == "xla":
        return PrecisionChoice(torch.bfloat16, "TPU")
    if device.type == "mps":
        return PrecisionChoice(torch.float16, "Apple GPU")
    isa = cpu_bf16_isa()
    if isa is None:
        return PrecisionChoice(None, "no native bf16 on this CPU")
    probe = cached_cpu_probe(width=width)
    ratio = f"probe {probe.speedup:.2f}× fp32 at width {probe.width}"
    if probe.speedup >= MIN_CPU_BF16_SPEEDUP:
        return PrecisionChoice(torch.bfloat16, f"{isa}, {ratio}", probe)
    return PrecisionChoice(None, f"{isa}, but {ratio} (< {MIN_CPU_BF16_SPEEDUP}× needed)", probe)


def autocast_dtype(device: torch.device, mode: str | None = None, width: int | None = None) -> torch.dtype | None:
    """The mixed-precision dtype worth using on ``device`` for a model of ``width``, or None for
    full fp32: the dtype of :func:`choose_precision` (see there for the rules and ``$COURSE_PRECISION``)."""
    return choose_precision(device, mode, width).dtype


def describe_precision(device: torch.device | None = None, mode: str | None = None, width: int | None = None) -> str:
    """One line for a notebook's header, e.g. ``bf16 autocast (avx512_bf16, probe 1.40× fp32 at width 256)``."""
    return str(choose_precision(device, mode, width))


@contextlib.contextmanager
def autocast(device: torch.device, enabled: bool = True, mode: str | None = None,
             width: int | None = None) -> Iterator[None]:
    """``torch.autocast`` with :func:`autocast_dtype` (for a model of ``width``); a no-op where that is None."""
    dtype = autocast_dtype(device, mode, width) if enabled else None
    if dtype is None:
        yield
        return
    with torch.autocast(device_type=device.type, dtype=dtype):
        yield
