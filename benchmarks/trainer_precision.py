"""Mixed precision as a learner meets it: the course ``Trainer``'s own step time in fp32 and in
bf16 autocast, on the char-GPT recipe that chapter 5 trains (issue 27).

``train_throughput.py`` times a bare forward/backward/AdamW step against transformers' model.
This one runs the real training loop instead -- samplers, Accelerate's autocast, gradient
clipping, the learning-rate schedule, loss bookkeeping -- through
``course_utils.pretraining.fit_causal_lm``, so the ratio it prints is the one chapter 5's run
gets. For each width (``--widths``; default the laptop recipe's 128, and 256) the two precisions
run ALTERNATELY, round after round (the order swaps each round), from the same seed and weights.
Steps ``--warm`` to ``--steps`` are timed by the Trainer's own clock (``TrainEvent.elapsed``), so
building the model, the first steps (allocator, oneDNN kernels) and the final evaluation stay
out. Printed, never asserted.

    python benchmarks/trainer_precision.py                 # laptop recipe, widths 128 and 256, 3 rounds of 250 steps
    python benchmarks/trainer_precision.py --widths 128 --rounds 5
    python benchmarks/trainer_precision.py --quick         # a smoke run: the ci recipe's data slice, seconds
"""
from __future__ import annotations

import argparse
import statistics
from typing import Any

import torch

PRECISIONS = ("no", "bf16")          # the Trainer's names: "no" is fp32
LABEL = {"no": "fp32", "bf16": "bf16"}


def time_run(recipe: Any, width: int, mixed_precision: str, steps: int, warm: int, data: tuple,
             device: str | None) -> dict[str, Any]:
    """One training run of ``steps`` steps at ``width``; returns ms per step over steps
    ``warm``..``steps`` and the precision the Trainer's Accelerator actually used."""
    from course_utils import pretraining
    from course_utils.models.gpt import GPT, GPTConfig

    tok, train_ids, val_ids = data
    marks: dict[int, float] = {}
    used = ""

    def on_event(ev: Any) -> None:
        nonlocal used
        if ev.kind == "step" and ev.step in (warm, steps):
            marks[ev.step] = ev.elapsed
            used = str(ev.trainer.accelerator.mixed_precision)

    cfg = recipe.train_config(progress=False, log=on_event, mixed_precision=mixed_precision, max_steps=steps,
                              eval_interval=10 * steps, eval_iters=2, device=device)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, **{**recipe.model, "n_embd": width}))
    pretraining.fit_causal_lm(model, cfg, train_ids, val_ids, recipe.model["block_size"])
    return {"ms_per_step": 1e3 * (marks[steps] - marks[warm]) / (steps - warm), "autocast": used}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--widths", default="128,256", help="comma-separated model widths (the recipe's other settings kept)")
    ap.add_argument("--recipe", default="laptop", help="which CHAR_GPT_RECIPES entry: laptop (default) or ci")
    ap.add_argument("--steps", type=int, default=250, help="steps per run")
    ap.add_argument("--warm", type=int, default=30, help="steps left out of the timing at the start")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--device", default=None, help="cpu | cuda | mps (default: course_utils.device)")
    ap.add_argument("--quick", action="store_true", help="ci recipe, width 32, 2 rounds of 12 steps: a smoke run")
    args = ap.parse_args(argv)
    if args.quick:
        args.recipe, args.widths, args.steps, args.warm, args.rounds = "ci", "32", 12, 4, 2
    if not 0 < args.warm < args.steps:
        raise ValueError(f"--warm must be between 0 and --steps ({args.steps}), got {args.warm}")
    widths = [int(w) for w in args.widths.split(",") if w.strip()]
    if not widths or min(widths) <= 0:
        raise ValueError(f"--widths must list positive integers, got {args.widths!r}")
    if args.threads:
        torch.set_num_threads(args.threads)

    from course_utils import pretraining

    if args.recipe not in pretraining.CHAR_GPT_RECIPES:
        raise ValueError(f"--recipe must be one of {sorted(pretraining.CHAR_GPT_RECIPES)}, got {args.recipe!r}")
    recipe = pretraining.CHAR_GPT_RECIPES[args.recipe]
    heads = recipe.model["n_head"]
    if any(w % heads for w in widths):
        raise ValueError(f"every width must be a multiple of the recipe's {heads} heads, got {widths}")
    data = pretraining.char_gpt_data(max_rows=recipe.extra.get("max_rows"))
    print(f"char-GPT recipe {args.recipe!r}: {recipe.model['n_layer']} layers, block {recipe.model['block_size']}, "
          f"batch {recipe.train['batch_size']} | threads {torch.get_num_threads()} | steps {args.warm}-{args.steps} "
          f"timed, {args.rounds} rounds, fp32 and bf16 alternating")
    runs = []
    for width in widths:
        ms: dict[str, list[float]] = {p: [] for p in PRECISIONS}
        autocast: dict[str, str] = {}
        for r in range(args.rounds):
            for p in (PRECISIONS if r % 2 == 0 else PRECISIONS[::-1]):
                res = time_run(recipe, width, p, args.steps, args.warm, data, args.device)
                ms[p].append(res["ms_per_step"])
                autocast[p] = res["autocast"]
                print(f"width {width} round {r + 1}/{args.rounds} {LABEL[p]}: {res['ms_per_step']:.1f} ms/step "
                      f"(Accelerate mixed_precision={res['autocast']})", flush=True)
        per_round = [f / b for f, b in zip(ms["no"], ms["bf16"])]
        row = {"width": width, "ms_fp32": statistics.median(ms["no"]), "ms_bf16": statistics.median(ms["bf16"]),
               "per_round": per_round, "speedup": statistics.median(per_round), "autocast": autocast}
        runs.append(row)
        print(f"== width {width}: median ms/step fp32 {row['ms_fp32']:.1f} | bf16 {row['ms_bf16']:.1f} | "
              f"bf16 speed-up {row['speedup']:.2f}x (per round " + ", ".join(f"{x:.2f}" for x in per_round) + ")")
    return {"recipe": args.recipe, "threads": torch.get_num_threads(), "runs": runs}


if __name__ == "__main__":
    main()
