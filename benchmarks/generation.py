"""Generation speed of the course GPT with and without a KV cache, and with a static cache
(chapter 6, Generation).

For each model size, greedy decoding of ``--new`` tokens after a ``--prompt``-token prompt,
once recomputing the whole prefix every step and once with the KV cache (both through
``course_utils.generation.step_fn``). The two runs ALTERNATE, round after round (the order swaps
each round), so a busy machine slows both alike; the median time over rounds gives tokens/s and
the ratio. Speed does not depend on the weights, so the models are randomly initialised.
Printed, never asserted.

``--table static`` compares the two caches instead: greedy decoding (``kv_cache.greedy_decode``,
no host read per token) with the growing ``dynamic`` cache and the pre-allocated ``static``
one, at batch 1, 8 and 32 (``--batches``); tokens/s counts every row's tokens. ``--compile``
adds the static cache's decode step compiled (``torch.compile``, mode ``reduce-overhead`` on
CUDA: a CUDA graph per step), its compile time reported apart. On a CPU the static cache
attends over all its slots and is no faster; on a GPU it is what lets a step be captured.

    python benchmarks/generation.py                  # 3 sizes, 256 new tokens, 3 rounds
    python benchmarks/generation.py --quick          # a smoke run (seconds)
    python benchmarks/generation.py --threads 1 --device cuda
    python benchmarks/generation.py --table static --device cuda --compile   # the GPU check
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from course_utils import generation
from course_utils.kv_cache import StaticKVCache, decode_step_fn, greedy_decode
from course_utils.models.gpt import GPT, GPTConfig

SIZES = [(2, 64), (4, 128), (6, 256)]   # (n_layer, n_embd)


def decode_seconds(model: GPT, prompt: torch.Tensor, new_tokens: int, use_cache: bool) -> tuple[float, torch.Tensor]:
    """Wall time of greedy decoding ``new_tokens`` after ``prompt`` [1, T]; also returns the ids."""
    step = generation.step_fn(model, use_cache=use_cache)
    ids, cache = prompt, None
    if prompt.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(new_tokens):
        logits, cache = step(ids, cache)
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    if prompt.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, ids


def run(sizes: list[tuple[int, int]], prompt_len: int, new_tokens: int, rounds: int,
        device: str) -> list[dict[str, float | bool]]:
    """Times each size; returns one row per size: layers, width, tok/s both ways, ratio, same ids."""
    block = prompt_len + new_tokens
    rows: list[dict[str, float | bool]] = []
    print(f"device {device}, {torch.get_num_threads()} threads | prompt {prompt_len} + {new_tokens} new tokens, "
          f"block_size {block} | median of {rounds} rounds")
    print(f"{'layers':>6s} {'width':>6s} {'params':>8s} {'no cache tok/s':>15s} {'cache tok/s':>12s} {'ratio':>7s}")
    for n_layer, n_embd in sizes:
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=65, block_size=block, n_layer=n_layer, n_head=4, n_embd=n_embd))
        model = model.to(device).eval()
        prompt = torch.randint(0, 65, (1, prompt_len), device=device)
        decode_seconds(model, prompt, 4, True)                       # warm-up
        times: dict[bool, list[float]] = {True: [], False: []}
        for r in range(rounds):
            for use_cache in ((True, False) if r % 2 == 0 else (False, True)):
                seconds, ids = decode_seconds(model, prompt, new_tokens, use_cache)
                times[use_cache].append(seconds)
                if use_cache:
                    cached_ids = ids
                else:
                    full_ids = ids
        same_ids = torch.equal(cached_ids, full_ids)
        t_cache, t_full = statistics.median(times[True]), statistics.median(times[False])
        print(f"{n_layer:6d} {n_embd:6d} {model.num_params() / 1e6:7.2f}M {new_tokens / t_full:15.1f} "
              f"{new_tokens / t_cache:12.1f} {t_full / t_cache:6.1f}x{'' if same_ids else '  (outputs differ!)'}")
        rows.append({"n_layer": n_layer, "n_embd": n_embd, "no_cache_tok_s": new_tokens / t_full,
                     "cache_tok_s": new_tokens / t_cache, "ratio": t_full / t_cache, "same_ids": same_ids})
    return rows


def _timed(fn, device: str) -> tuple[float, torch.Tensor]:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    out = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def run_static(sizes: list[tuple[int, int]], prompt_len: int, new_tokens: int, rounds: int, device: str,
               batches: list[int], compile: bool = False) -> list[dict[str, float | bool | int | None]]:
    """Greedy decoding with the dynamic and the static cache (and the compiled static step),
    alternating round by round; one row per (size, batch): tokens/s of each, the ratios, same ids."""
    block = prompt_len + new_tokens
    rows: list[dict[str, float | bool | int | None]] = []
    print(f"device {device}, {torch.get_num_threads()} threads | prompt {prompt_len} + {new_tokens} new tokens | "
          f"median of {rounds} rounds | tokens/s over the whole batch")
    print(f"{'layers':>6s} {'width':>6s} {'batch':>5s} {'dynamic tok/s':>14s} {'static tok/s':>13s} {'ratio':>6s}"
          + (f" {'compiled tok/s':>15s} {'ratio':>6s} {'compile s':>9s}" if compile else ""))
    for n_layer, n_embd in sizes:
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=65, block_size=block, n_layer=n_layer, n_head=4,
                              n_embd=n_embd)).to(device).eval()
        for batch in batches:
            prompt = torch.randint(0, 65, (batch, prompt_len), device=device)
            kvs = StaticKVCache.for_model(model, batch, max_len=block)
            runs = {"dynamic": lambda: greedy_decode(model, prompt, new_tokens, cache="dynamic"),
                    "static": lambda: greedy_decode(model, prompt, new_tokens, cache="static", static_cache=kvs,
                                                    step=decode_step_fn(model, kvs))}
            compile_s = None
            if compile:
                step = decode_step_fn(model, kvs, compile="always",
                                      mode="reduce-overhead" if device.startswith("cuda") else "default")
                compile_s, _ = _timed(lambda: greedy_decode(model, prompt, 8, cache="static", static_cache=kvs,
                                                            step=step), device)   # compiles (and captures)
                runs["compiled"] = lambda: greedy_decode(model, prompt, new_tokens, cache="static",
                                                         static_cache=kvs, step=step)
            for fn in runs.values():
                _timed(fn, device)                                   # warm-up
            times: dict[str, list[float]] = {k: [] for k in runs}
            ids: dict[str, torch.Tensor] = {}
            names = list(runs)
            for r in range(rounds):
                for name in names[r % len(names):] + names[:r % len(names)]:   # rotate the order
                    seconds, ids[name] = _timed(runs[name], device)
                    times[name].append(seconds)
            rate = {k: batch * new_tokens / statistics.median(v) for k, v in times.items()}
            same = all(torch.equal(ids[k], ids["dynamic"]) for k in ids)
            row: dict[str, float | bool | int | None] = {
                "n_layer": n_layer, "n_embd": n_embd, "batch": batch, "dynamic_tok_s": rate["dynamic"],
                "static_tok_s": rate["static"], "static_vs_dynamic": rate["static"] / rate["dynamic"],
                "compiled_tok_s": rate.get("compiled"), "compile_s": compile_s,
                "compiled_vs_dynamic": rate["compiled"] / rate["dynamic"] if compile else None, "same_ids": same}
            rows.append(row)
            print(f"{n_layer:6d} {n_embd:6d} {batch:5d} {rate['dynamic']:14.1f} {rate['static']:13.1f} "
                  f"{row['static_vs_dynamic']:5.2f}x"
                  + (f" {rate['compiled']:15.1f} {row['compiled_vs_dynamic']:5.2f}x {compile_s:9.1f}" if compile else "")
                  + ("" if same else "  (outputs differ!)"))
    return rows


def main(argv: list[str] | None = None) -> list[dict[str, float | bool]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt", type=int, default=128, help="prompt length in tokens")
    ap.add_argument("--new", type=int, default=256, help="tokens to generate")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="one small size, 32 tokens, 1 round")
    ap.add_argument("--table", choices=("cache", "static"), default="cache",
                    help="cache: no cache vs KV cache (default); static: dynamic vs static cache")
    ap.add_argument("--batches", default="1,8,32", help="batch sizes of --table static")
    ap.add_argument("--compile", action="store_true", help="--table static: also the compiled static step")
    args = ap.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.table == "static":
        batches = [int(b) for b in args.batches.split(",") if b.strip()]
        if not batches or min(batches) < 1:
            raise ValueError(f"--batches must be positive ints, got {args.batches!r}")
        if args.quick:
            return run_static(SIZES[:1], 16, 16, 1, args.device, batches, args.compile)
        return run_static([SIZES[-1]], args.prompt, args.new, args.rounds, args.device, batches, args.compile)
    if args.quick:
        return run(SIZES[:1], 32, 32, 1, args.device)
    return run(SIZES, args.prompt, args.new, args.rounds, args.device)


if __name__ == "__main__":
    main()
