"""The two benchmarks run (smoke) and compare like with like. Speed itself is never asserted."""
from __future__ import annotations

import importlib.util
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


def test_throughput_quick_run_reports_both_models_and_ratios(capsys):
    tt = _load("train_throughput")
    res = tt.main(["--quick"])
    out = capsys.readouterr().out
    assert res["params"]["ours"] == res["params"]["transformers"] > 0
    assert res["ours"] > 0 and res["transformers"] > 0
    assert len(res["round_ratios"]) == 2
    assert "ratio ours/transformers" in out and "per-round ratios" in out
    if res["device"] != "cpu":  # a GPU run skips the split: timing phases would need syncs
        assert res["split_ms"] == {}
        return
    # the split covers the step: forward, backward and update, each a positive time, per model
    assert set(res["split_ms"]) == {"ours", "transformers"}
    assert all(len(v) == 3 and min(v) > 0 for v in res["split_ms"].values())
    assert "forward | backward | clipping + AdamW" in out


def test_generation_quick_run_cache_and_recompute_decode_the_same_tokens(capsys):
    gen = _load("generation")
    rows = gen.main(["--quick"])
    assert len(rows) == 1 and rows[0]["same_ids"] is True
    assert rows[0]["cache_tok_s"] > 0 and rows[0]["no_cache_tok_s"] > 0
    assert "ratio" in capsys.readouterr().out
