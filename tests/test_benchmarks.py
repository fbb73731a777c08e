"""The two benchmarks run (smoke) and compare like with like. Speed itself is never asserted."""
from __future__ import annotations

import importlib.util
import statistics
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_throughput_models_are_the_same_network_with_the_same_step():
    """Given ours' weights, transformers' model takes the same losses step after step: the
    benchmark times one computation written twice, not two different ones."""
    from course_utils.hf_bridge import gpt_to_hf

    tt = _load("train_throughput")
    batches, vocab = tt.char_batches(block=16, batch=3, n_batches=4)
    ours, theirs = tt.build_models(vocab, layers=2, heads=2, width=32, block=16, device=torch.device("cpu"))
    with torch.no_grad():  # weights of order 0.2, not 0.02: an activation or LayerNorm mismatch would show
        for p in ours.parameters():
            p.add_(0.2 * torch.randn_like(p))
    theirs.load_state_dict(gpt_to_hf(ours).state_dict())
    start = ours.transformer.h[0].mlp.c_fc.weight.detach().clone()
    step_ours, step_theirs = tt.make_step(ours, "ours"), tt.make_step(theirs, "hf")
    for x, y in batches:  # exact GELU in place of the tanh one moves these by ~1e-4
        assert step_ours(x, y) == pytest.approx(step_theirs(x, y), abs=1e-5)
    assert not torch.equal(start, ours.transformer.h[0].mlp.c_fc.weight)  # the steps did update the weights


TINY = ["--quick", "--widths", "32", "--layers", "2", "--heads", "2", "--block", "16", "--batch", "4"]


def test_throughput_quick_run_reports_both_models_and_ratios(capsys):
    tt = _load("train_throughput")
    res = tt.main(TINY + ["--precisions", "fp32"])
    out = capsys.readouterr().out
    assert res["params"]["ours"] == res["params"]["transformers"] > 0
    assert res["ours"] > 0 and res["transformers"] > 0
    assert len(res["round_ratios"]) == 2
    assert "ratio ours/transformers" in out and "matmul peak probe" in out
    if res["device"] != "cpu":  # a GPU run skips the split: timing phases would need syncs
        assert res["split_ms"] == {}
        return
    # the split covers the step: forward, backward and update, each a positive time, per model
    assert set(res["split_ms"]) == {"ours", "transformers"}
    assert all(len(v) == 3 and min(v) > 0 for v in res["split_ms"].values())
    assert "forward | backward | clipping + AdamW" in out


def test_throughput_compares_precisions_against_their_own_peak(capsys):
    """fp32 and bf16 in one run: each model's bf16/fp32 speed-up, ours/transformers at equal
    precision, and tokens/s as a share of the measured matmul peak of that precision."""
    tt = _load("train_throughput")
    res = tt.main(TINY + ["--precisions", "bf16,fp32", "--device", "cpu"])
    out = capsys.readouterr().out
    assert res["precisions"] == ["fp32", "bf16"]                  # fp32 first: the base of the speed-ups
    assert set(res["peak_gflops"]) == {"fp32", "bf16"} and min(res["peak_gflops"].values()) > 0
    run = res["runs"][0]
    assert set(run["tokens_per_s"]) == {"ours fp32", "transformers fp32", "ours bf16", "transformers bf16"}
    assert set(run["ours_vs_hf"]) == {"fp32", "bf16"} and set(run["speedup"]) == {"ours bf16/fp32", "transformers bf16/fp32"}
    for key, rate in run["tokens_per_s"].items():  # % of peak = tokens/s x FLOPs per token / peak
        prec = key.split()[1]
        assert run["pct_of_peak"][key] == pytest.approx(100 * rate * run["flops_per_token"] / (res["peak_gflops"][prec] * 1e9))
    assert "speed-up ours bf16/fp32" in out and "% of the bf16 peak" in out
    with pytest.raises(ValueError, match="--precisions"):
        tt.main(TINY + ["--precisions", "int8"])


def test_throughput_compile_reports_the_compiled_models_own_speed_up(monkeypatch, capsys):
    """--compile with two precisions: the compiled model gets its bf16/fp32 speed-up beside the
    eager ones and its compiled/eager ratio per precision. torch.compile is replaced by the
    identity here (compiling would take ~15 s a precision): the bookkeeping is what is tested."""
    tt = _load("train_throughput")
    monkeypatch.setattr(torch, "compile", lambda model, **kw: model)
    res = tt.main(TINY + ["--precisions", "fp32,bf16", "--device", "cpu", "--compile"])
    out = capsys.readouterr().out
    run = res["runs"][0]
    assert set(run["speedup"]) == {"ours bf16/fp32", "transformers bf16/fp32", "ours compiled bf16/fp32"}
    assert set(run["compiled_vs_eager"]) == set(run["compile_s"]) == {"fp32", "bf16"}
    assert all(v > 0 for v in run["speedup"].values())
    assert "speed-up ours compiled bf16/fp32" in out and "compiled (bf16):" in out


def test_flops_per_token_is_nanogpts_count():
    tt = _load("train_throughput")
    ours, _ = tt.build_models(65, layers=4, heads=4, width=128, block=64, device=torch.device("cpu"))
    L, C, V, T = 4, 128, 65, 64
    assert tt.flops_per_token(ours, T) == 6 * (12 * L * C * C + V * C) + 12 * L * C * T
    # 6·N with N counted from the parameters (less biases, LayerNorms and the position table)
    n = ours.num_params()
    assert tt.flops_per_token(ours, T) == pytest.approx(6 * n + 12 * L * C * T, rel=0.02)


def test_generation_quick_run_cache_and_recompute_decode_the_same_tokens(capsys):
    gen = _load("generation")
    rows = gen.main(["--quick"])
    assert len(rows) == 1 and rows[0]["same_ids"] is True
    assert rows[0]["cache_tok_s"] > 0 and rows[0]["no_cache_tok_s"] > 0
    assert "ratio" in capsys.readouterr().out


def test_generation_static_table_decodes_the_dynamic_caches_tokens(capsys):
    gen = _load("generation")
    rows = gen.main(["--table", "static", "--quick", "--batches", "1,3"])
    assert [r["batch"] for r in rows] == [1, 3] and all(r["same_ids"] is True for r in rows)
    assert all(r["dynamic_tok_s"] > 0 and r["static_tok_s"] > 0 and r["compiled_tok_s"] is None for r in rows)
    assert rows[0]["static_vs_dynamic"] == pytest.approx(rows[0]["static_tok_s"] / rows[0]["dynamic_tok_s"])
    assert "static tok/s" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--batches"):
        gen.main(["--table", "static", "--quick", "--batches", "0"])


def test_trainer_precision_times_the_real_loop_in_both_precisions(monkeypatch, capsys):
    """The Trainer benchmark runs chapter 5's training loop in fp32 and bf16, alternating: the
    Accelerator of each run really used the precision asked for, and the speed-up is the median
    of the per-round fp32/bf16 step-time ratios."""
    monkeypatch.delenv("COURSE_PRECISION", raising=False)
    tp = _load("trainer_precision")
    res = tp.main(["--quick", "--device", "cpu"])
    out = capsys.readouterr().out
    (row,) = res["runs"]
    assert row["width"] == 32 and row["autocast"] == {"no": "no", "bf16": "bf16"}
    assert len(row["per_round"]) == 2 and min(row["ms_fp32"], row["ms_bf16"]) > 0
    assert row["speedup"] == pytest.approx(statistics.median(row["per_round"]))
    assert "bf16 speed-up" in out and "round 2/2 fp32" in out
    with pytest.raises(ValueError, match="--warm"):
        tp.main(["--steps", "40", "--warm", "50"])
    with pytest.raises(ValueError, match="--recipe"):
        tp.main(["--recipe", "huge"])
