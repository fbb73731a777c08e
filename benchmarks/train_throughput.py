"""Training throughput: the course GPT against transformers' GPT2LMHeadModel, same sizes.

Both models get the same config (4 layers, 4 heads, 128 wide, block 64, batch 12, dropout 0 by
default), the same character-level Shakespeare batches, the same optimizer (the course's AdamW,
as chapter 5 trains with it) and the same loss (mean cross-entropy over every position). They
run ALTERNATELY, round after round (the order swaps each round), so a busy machine slows both
alike. Printed, never asserted: the median tokens/s over rounds with the ratio ours /
transformers; each round's own ratio and their range, which shows how much the load moved; and
(on CPU) the median milliseconds of each step's forward pass, backward pass and update.

    python benchmarks/train_throughput.py                 # default: 7 rounds of 30 steps
    python benchmarks/train_throughput.py --quick         # a smoke run (seconds)
    python benchmarks/train_throughput.py --threads 2 --device cpu
"""
from __future__ import annotations

import argparse
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


def make_step(model: torch.nn.Module, kind: str, lr: float = 1e-3) -> Callable[..., float]:
    """One training step with the course's optimizer (the same for both models): AdamW, decay on
    matrices only, the fused kernel on CPU and CUDA (:func:`course_utils.train.configure_optimizer`).

    ``step(x, y, phases)`` appends (forward, backward, clip + update) seconds to ``phases`` (CPU)."""
    from course_utils.train import configure_optimizer

    opt = configure_optimizer(model, lr=lr, weight_decay=0.1, betas=(0.9, 0.99))
    model.train()

    def step(x: torch.Tensor, y: torch.Tensor, phases: list[tuple[float, float, float]] | None = None) -> float:
        # phases are timed on CPU only: a GPU runs ahead of Python, so they would need synchronising
        t0 = time.perf_counter()
        if kind == "ours":
            loss = model(x, targets=y).loss
        else:
            logits = model(input_ids=x).logits
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if phases is not None:
            phases.append((t1 - t0, t2 - t1, time.perf_counter() - t2))
        return loss.item()

    return step


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--steps", type=int, default=30, help="steps per model per round")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--block", type=int, default=64)
    ap.add_argument("--batch", type=int, default=12)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--device", default=None, help="cpu | cuda | mps (default: course_utils.device)")
    ap.add_argument("--quick", action="store_true", help="2 rounds of 5 steps: a smoke run")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.warmup = 2, 5, 1
    if args.threads:
        torch.set_num_threads(args.threads)
    from course_utils.device import get_device

    device = get_device(args.device)
    batches, vocab = char_batches(args.block, args.batch, args.steps + args.warmup)
    batches = [(x.to(device), y.to(device)) for x, y in batches]
    ours, theirs = build_models(vocab, args.layers, args.heads, args.width, args.block, device)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_theirs = sum(p.numel() for p in theirs.parameters())
    steps = {"ours": make_step(ours, "ours"), "transformers": make_step(theirs, "hf")}
    print(f"device {device} | threads {torch.get_num_threads()} | L{args.layers} H{args.heads} C{args.width} "
          f"T{args.block} B{args.batch} V{vocab} | params ours {n_ours:,} transformers {n_theirs:,}")
    for name, fn in steps.items():  # warm-up (allocator, kernels) outside the timing
        for x, y in batches[:args.warmup]:
            fn(x, y)
    rates: dict[str, list[float]] = {k: [] for k in steps}
    phases: dict[str, list[tuple[float, float, float]]] = {k: [] for k in steps}
    tokens = args.steps * args.batch * args.block
    for r in range(args.rounds):
        order = list(steps) if r % 2 == 0 else list(steps)[::-1]
        for name in order:
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for x, y in batches[args.warmup:]:
                steps[name](x, y, phases[name] if device.type == "cpu" else None)
            if device.type == "cuda":
                torch.cuda.synchronize()
            rates[name].append(tokens / (time.perf_counter() - t0))
        print(f"round {r + 1}/{args.rounds}: " + "  ".join(f"{k} {v[-1]:,.0f} tok/s" for k, v in rates.items()))
    med = {k: statistics.median(v) for k, v in rates.items()}
    ratio = med["ours"] / med["transformers"]
    # each round times both models back to back, so its own ratio is the least exposed to a
    # change of load; their spread says how far to trust the headline on this machine
    paired = [o / t for o, t in zip(rates["ours"], rates["transformers"])]
    print(f"median tokens/s: ours {med['ours']:,.0f} | transformers GPT2LMHeadModel (sdpa) "
          f"{med['transformers']:,.0f} | ratio ours/transformers = {ratio:.2f}x (goal >= 1.2x)")
    print(f"per-round ratios: {' '.join(f'{r:.2f}' for r in paired)} | median {statistics.median(paired):.2f}x, "
          f"range {min(paired):.2f}-{max(paired):.2f}x")
    # where a step's time goes: the medians over every timed step of each model
    split = {k: [1e3 * statistics.median(p[i] for p in v) for i in range(3)] for k, v in phases.items() if v}
    if split:
        print("median ms per step (forward | backward | clipping + AdamW): "
              + "   ".join(f"{k} {' | '.join(f'{t:.1f}' for t in v)}" for k, v in split.items()))
    return {**med, "ratio": ratio, "round_ratios": paired, "split_ms": split, "device": device.type,
            "params": {"ours": n_ours, "transformers": n_theirs}}


if __name__ == "__main__":
    main()
