"""Training throughput: the course GPT against transformers' GPT2LMHeadModel, same sizes, in fp32
and in mixed precision, each as a share of the machine's measured matmul peak.

One run prints:

1. a **matmul peak probe**: the best GFLOP/s of large ``F.linear`` products in fp32 and in bf16
   (fp16 on a GPU without bf16) on this device and thread count;
2. for each width (``--widths``, default 128 and 256; 4 layers, 4 heads, block 64, batch 12,
   dropout 0): the course GPT and ``GPT2LMHeadModel`` with the same config, the same
   character-level Shakespeare batches, the same optimizer (the course's AdamW, as chapter 5
   trains with it) and the same loss, each in fp32 and under ``torch.autocast`` bf16: median
   tokens/s, the bf16/fp32 speed-up of each model, the ours/transformers ratio at equal
   precision, and each as a percentage of the measured peak of its precision (model FLOPs per
   token from nanoGPT's count, 6·N + 12·layers·width·block, N the matmul weights).

All four variants of a width run ALTERNATELY, round after round (the order rotates each round),
so a busy machine slows them alike; each round's own ratios and their range show how much the
load moved. Printed, never asserted. Goals (issue 27): ours bf16 >= 1.4x ours fp32 at width
128 and >= 2x at width 256; ours >= 1.2x transformers at equal precision.

``--compile`` adds the course GPT under ``torch.compile`` in each precision (issue 32): its
tokens/s beside the eager model's, the compile time (its first step) apart, the number of
steps after which compiling pays on this device (compile time / time saved per step) and, with
two precisions, the compiled model's own bf16/fp32 speed-up (compiling fuses the element-wise ops
that bf16 does not speed up, so the ratio can differ from the eager one).

    python benchmarks/train_throughput.py                    # 7 rounds of 30 steps, widths 128 and 256
    python benchmarks/train_throughput.py --quick            # a smoke run (width 128 only, seconds)
    python benchmarks/train_throughput.py --threads 2 --device cpu --precisions fp32,bf16
    python benchmarks/train_throughput.py --device cuda      # the GPU check (tools/gpu_check.py)
    python benchmarks/train_throughput.py --compile --widths 128 --precisions fp32   # does compiling pay here?
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F


def char_batches(block: int, batch: int, n_batches: int, seed: int = 0) -> tuple[list[tuple[torch.Tensor, torch.Tensor]], int]:
    """``n_batches`` random (x, y) blocks of Shakespeare characters and the vocabulary size."""
    try:
        from course_utils import data

        text = data.shakespeare_text("train")[:500_000]
    except Exception as err:  # pragma: no cover - the asset is missing: still benchmark something
        print(f"(Shakespeare not available: {err}; using random tokens)")
        text = "".join(chr(97 + i % 26) for i in torch.randint(26, (200_000,)).tolist())
    vocab = sorted(set(text))
    stoi = {c: i for i, c in enumerate(vocab)}
    ids = torch.tensor([stoi[c] for c in text], dtype=torch.long)
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n_batches):
        ix = torch.randint(ids.numel() - block - 1, (batch,), generator=g)
        blk = ids[ix[:, None] + torch.arange(block + 1)]
        out.append((blk[:, :-1].contiguous(), blk[:, 1:].contiguous()))
    return out, len(vocab)


def build_models(vocab: int, layers: int, heads: int, width: int, block: int, device: torch.device):
    from transformers import GPT2Config, GPT2LMHeadModel

    from course_utils.models.gpt import GPT, GPTConfig

    torch.manual_seed(0)
    ours = GPT(GPTConfig(vocab_size=vocab, block_size=block, n_layer=layers, n_head=heads, n_embd=width,
                         dropout=0.0)).to(device)
    hf_cfg = GPT2Config(vocab_size=vocab, n_positions=block, n_embd=width, n_layer=layers, n_head=heads,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False,
                        bos_token_id=None, eos_token_id=None)
    hf_cfg._attn_implementation = "sdpa"
    theirs = GPT2LMHeadModel(hf_cfg).to(device)
    assert theirs.config._attn_implementation == "sdpa", theirs.config._attn_implementation
    return ours, theirs


def make_step(model: torch.nn.Module, kind: str, lr: float = 1e-3,
              dtype: torch.dtype | None = None) -> Callable[..., float]:
    """One training step with the course's optimizer (the same for both models): AdamW, decay on
    matrices only, the fused kernel on CPU and CUDA (:func:`course_utils.train.configure_optimizer`).

    ``dtype`` (bf16 or fp16) runs the forward pass under ``torch.autocast`` (fp16 with a gradient
    scaler, as on a T4); weights, gradients and optimizer state stay fp32, as in the Trainer.
    ``step(x, y, phases)`` appends (forward, backward, clip + update) seconds to ``phases`` (CPU)."""
    from course_utils.train import configure_optimizer

    opt = configure_optimizer(model, lr=lr, weight_decay=0.1, betas=(0.9, 0.99))
    device_type = next(model.parameters()).device.type
    scaler = torch.amp.GradScaler(device_type) if dtype == torch.float16 else None
    model.train()

    def step(x: torch.Tensor, y: torch.Tensor, phases: list[tuple[float, float, float]] | None = None) -> float:
        # phases are timed on CPU only: a GPU runs ahead of Python, so they would need synchronising
        t0 = time.perf_counter()
        with torch.autocast(device_type, dtype=dtype) if dtype is not None else contextlib.nullcontext():
            if kind == "ours":
                loss = model(x, targets=y).loss
            else:
                logits = model(input_ids=x).logits
                loss = F.cross_entropy(logits.view(-1, logits.size(-1)).float(), y.view(-1))
        t1 = time.perf_counter()
        (scaler.scale(loss) if scaler is not None else loss).backward()
        t2 = time.perf_counter()
        if scaler is not None:
            scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        if scaler is not None:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
        if phases is not None:
            phases.append((t1 - t0, t2 - t1, time.perf_counter() - t2))
        return loss.item()

    return step


DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def matmul_peak(device: torch.device, precisions: list[str], seconds: float = 0.4) -> dict[str, float]:
    """The best GFLOP/s of ``F.linear(x[M, K], W[N, K])`` over a few large shapes, per precision.

    Each shape and precision is timed in bursts of about ``seconds`` (best burst kept, the
    precisions alternating), so a brief load spike does not lower the figure."""
    shapes = ([(8192, 8192, 8192), (4096, 4096, 4096)] if device.type == "cuda"
              else [(2048, 1024, 1024), (1024, 1024, 4096), (1024, 2048, 2048)])
    best = {p: 0.0 for p in precisions}
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with torch.no_grad():
        for m, k, n in shapes:
            mats = {p: (torch.randn(m, k, device=device).to(DTYPES[p] or torch.float32),
                        torch.randn(n, k, device=device).to(DTYPES[p] or torch.float32)) for p in precisions}
            for x, w in mats.values():
                F.linear(x, w)
            for r in range(3):
                for p in (precisions if r % 2 == 0 else precisions[::-1]):
                    x, w = mats[p]
                    reps, t0 = 0, time.perf_counter()
                    sync()
                    while True:
                        F.linear(x, w)
                        reps += 1
                        sync()
                        elapsed = time.perf_counter() - t0
                        if elapsed > seconds / 3 or reps >= 50:
                            break
                    best[p] = max(best[p], 2 * m * k * n * reps / elapsed / 1e9)
            del mats
    return best


def flops_per_token(model: torch.nn.Module, block: int) -> float:
    """Training FLOPs per token of the course GPT at context ``block``: nanoGPT's count, 6·N for
    the weight matmuls (N without the position table and LayerNorms; the tied output layer
    once) plus 12·layers·width·block for the attention scores and sums
    (:meth:`course_utils.models.gpt.GPT.estimate_flops_per_token`). The same for both models:
    they are one network written twice."""
    return float(model.estimate_flops_per_token(block, training=True))


def default_precisions(device: torch.device) -> list[str]:
    """fp32 and the mixed precision this device has: bf16 (or fp16 on an older GPU); a CPU
    without native bf16 gets fp32 only (its bf16 is emulated)."""
    if device.type == "cuda":
        return ["fp32", "bf16" if torch.cuda.is_bf16_supported() else "fp16"]
    if device.type == "cpu":
        from course_utils.device import cpu_bf16_isa

        return ["fp32", "bf16"] if cpu_bf16_isa() else ["fp32"]
    return ["fp32", "bf16"]


def run_width(args: argparse.Namespace, device: torch.device, width: int, precisions: list[str],
              peak: dict[str, float]) -> dict[str, Any]:
    """Both models at one width in every precision, interleaved round after round."""
    batches, vocab = char_batches(args.block, args.batch, args.steps + args.warmup)
    batches = [(x.to(device), y.to(device)) for x, y in batches]
    ours, theirs = build_models(vocab, args.layers, args.heads, width, args.block, device)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_theirs = sum(p.numel() for p in theirs.parameters())
    fpt = flops_per_token(ours, args.block)
    steps = {(m, p): make_step(model, "ours" if m == "ours" else "hf", dtype=DTYPES[p])
             for p in precisions for m, model in (("ours", ours), ("transformers", theirs))}
    if getattr(args, "compile", False):  # the same weights, compiled (a guard per precision: one graph each)
        compiled = torch.compile(ours)
        steps.update({("ours compiled", p): make_step(compiled, "ours", dtype=DTYPES[p]) for p in precisions})
    print(f"\n== width {width}: L{args.layers} H{args.heads} C{width} T{args.block} B{args.batch} V{vocab} | "
          f"params ours {n_ours:,} transformers {n_theirs:,} | {fpt / 1e6:.2f} MFLOP per token")
    compile_s: dict[str, float] = {}
    for key, fn in steps.items():  # warm-up (allocator, kernels, compiling) outside the timing
        for i, (x, y) in enumerate(batches[:args.warmup]):
            t0 = time.perf_counter()
            fn(x, y)
            if i == 0 and key[0] == "ours compiled":
                compile_s[key[1]] = time.perf_counter() - t0
    rates: dict[tuple[str, str], list[float]] = {k: [] for k in steps}
    phases: dict[tuple[str, str], list[tuple[float, float, float]]] = {k: [] for k in steps}
    tokens = args.steps * args.batch * args.block
    keys = list(steps)
    for r in range(args.rounds):
        order = keys[r % len(keys):] + keys[:r % len(keys)]  # rotate: each variant leads in turn
        for key in order:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for x, y in batches[args.warmup:]:
                steps[key](x, y, phases[key] if device.type == "cpu" else None)
            if device.type == "cuda":
                torch.cuda.synchronize()
            rates[key].append(tokens / (time.perf_counter() - t0))
        print(f"round {r + 1}/{args.rounds}: " + "  ".join(f"{m} {p} {v[-1]:,.0f}" for (m, p), v in rates.items())
              + " tok/s")
    med = {k: statistics.median(v) for k, v in rates.items()}
    out: dict[str, Any] = {"width": width, "params": {"ours": n_ours, "transformers": n_theirs},
                           "flops_per_token": fpt, "tokens_per_s": {}, "pct_of_peak": {}, "ours_vs_hf": {},
                           "round_ratios": {}, "speedup": {}, "split_ms": {}, "compile_s": compile_s,
                           "compiled_vs_eager": {}, "compile_pays_after_steps": {}}
    for (m, p), v in med.items():
        out["tokens_per_s"][f"{m} {p}"] = v
        if peak.get(p):
            out["pct_of_peak"][f"{m} {p}"] = 100 * v * fpt / (peak[p] * 1e9)
    for p in precisions:
        # each round times every variant back to back: its own ratio is the least exposed to load
        paired = [o / t for o, t in zip(rates[("ours", p)], rates[("transformers", p)])]
        out["ours_vs_hf"][p] = statistics.median(paired)
        out["round_ratios"][p] = paired
    step_tokens = args.batch * args.block
    for p in compile_s:
        out["compiled_vs_eager"][p] = statistics.median(
            c / e for c, e in zip(rates[("ours compiled", p)], rates[("ours", p)]))
        saved = step_tokens / med[("ours", p)] - step_tokens / med[("ours compiled", p)]   # seconds per step
        out["compile_pays_after_steps"][p] = round(compile_s[p] / saved) if saved > 0 else None
    for m in ("ours", "transformers") + (("ours compiled",) if compile_s else ()):
        for p in precisions[1:]:
            per_round = [b / f for b, f in zip(rates[(m, p)], rates[(m, precisions[0])])]
            out["speedup"][f"{m} {p}/{precisions[0]}"] = statistics.median(per_round)
    split = {f"{m} {p}": [1e3 * statistics.median(ph[i] for ph in v) for i in range(3)]
             for (m, p), v in phases.items() if v}
    out["split_ms"] = split
    # the report of this width
    for p in precisions:
        pk = f" = {out['pct_of_peak'].get('ours ' + p, float('nan')):.1f}% | " \
             f"{out['pct_of_peak'].get('transformers ' + p, float('nan')):.1f}% of the {p} peak" if peak.get(p) else ""
        rr = out["round_ratios"][p]
        print(f"{p}: median tokens/s ours {med[('ours', p)]:,.0f} | transformers {med[('transformers', p)]:,.0f}{pk}")
        print(f"      ratio ours/transformers = {out['ours_vs_hf'][p]:.2f}x (goal >= 1.2x; per-round "
              f"{min(rr):.2f}-{max(rr):.2f}x)")
    for name, v in out["speedup"].items():
        goal = {128: 1.4, 256: 2.0}.get(width) if name.startswith("ours bf16") else None
        note = f" (goal >= {goal}x at width {width}: {'met' if v >= goal else 'NOT met'})" if goal else ""
        print(f"speed-up {name} = {v:.2f}x{note}")
    for p, c in compile_s.items():
        after = out["compile_pays_after_steps"][p]
        print(f"compiled ({p}): {out['compiled_vs_eager'][p]:.2f}x the eager steps, compiling took {c:.1f} s: "
              + (f"pays after {after:,} steps" if after is not None else "never pays (no faster per step)"))
    if split:
        print("median ms per step (forward | backward | clipping + AdamW): "
              + "   ".join(f"{k} {' | '.join(f'{t:.1f}' for t in v)}" for k, v in split.items()))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=30, help="steps per model per round")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--width", type=int, default=None, help="one width (same as --widths N)")
    ap.add_argument("--widths", default="128,256", help="comma-separated model widths")
    ap.add_argument("--block", type=int, default=64)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--precisions", default=None,
                    help="comma-separated, from fp32, bf16, fp16 (default: fp32 and the device's mixed precision)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--device", default=None, help="cpu | cuda | mps (default: course_utils.device)")
    ap.add_argument("--quick", action="store_true", help="2 rounds of 5 steps, the first width only: a smoke run")
    ap.add_argument("--compile", action="store_true", help="also the course GPT under torch.compile (issue 32)")
    args = ap.parse_args(argv)
    widths = [args.width] if args.width else [int(w) for w in str(args.widths).split(",") if w.strip()]
    if args.quick:
        args.rounds, args.steps, args.warmup = 2, 5, 1
        widths = widths[:1]
    if not widths or min(widths) < 1 or any(w % args.heads for w in widths):
        raise ValueError(f"--widths must be positive multiples of --heads={args.heads}, got {widths}")
    if args.threads:
        torch.set_num_threads(args.threads)
    from course_utils.device import get_device

    device = get_device(args.device)
    precisions = (default_precisions(device) if args.precisions is None
                  else [p.strip() for p in args.precisions.split(",") if p.strip()])
    bad = [p for p in precisions if p not in DTYPES]
    if bad or not precisions:
        raise ValueError(f"--precisions must name some of {', '.join(DTYPES)}, got {args.precisions!r}")
    if "fp32" in precisions:
        precisions = ["fp32"] + [p for p in precisions if p != "fp32"]  # the base of the speed-ups
    print(f"device {device} | threads {torch.get_num_threads()} | precisions {', '.join(precisions)}")
    peak = matmul_peak(device, precisions, seconds=0.15 if args.quick else 0.4)
    print("matmul peak probe (best GFLOP/s of large F.linear products): "
          + " | ".join(f"{p} {v:,.0f}" for p, v in peak.items())
          + (f" | bf16/fp32 {peak['bf16'] / peak['fp32']:.1f}x" if {"bf16", "fp32"} <= set(peak) else ""))
    runs = [run_width(args, device, w, precisions, peak) for w in widths]
    first, base = runs[0], precisions[0]
    return {"device": device.type, "threads": torch.get_num_threads(), "precisions": precisions,
            "peak_gflops": peak, "runs": runs,
            # the first width's figures in the base precision, as the earlier single-run report gave them
            "ours": first["tokens_per_s"][f"ours {base}"], "transformers": first["tokens_per_s"][f"transformers {base}"],
            "ratio": first["ours_vs_hf"][base], "round_ratios": first["round_ratios"][base],
            "split_ms": {k.split()[0]: v for k, v in first["split_ms"].items() if k in (f"ours {base}", f"transformers {base}")},
            "params": first["params"]}


if __name__ == "__main__":
    main()
