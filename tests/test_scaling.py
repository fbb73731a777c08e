import os

import pytest
import torch

from course_utils import scaling
from course_utils.models.gpt import GPT, GPTConfig

TINY = dict(vocab_size=32, block_size=16, n_layer=2, n_head=2, n_embd=32)


def test_memory_formula_by_hand():
    n = 1_000_000
    fp32 = scaling.training_memory(n, "fp32")
    assert (fp32.params, fp32.grads, fp32.optimizer, fp32.total) == (4e6, 4e6, 8e6, 16e6)
    mixed = scaling.training_memory(n, "mixed")
    assert (mixed.params, mixed.grads, mixed.optimizer) == (2e6, 2e6, 12e6)
    # ZeRO paper, 7.5B on 64 GPUs: 120 GB → 31.4 (ZeRO-1), 16.6 (ZeRO-2), 1.9 GB (ZeRO-3)
    n = 7_500_000_000
    assert scaling.training_memory(n, "mixed").total / 1e9 == pytest.approx(120, rel=1e-3)
    assert scaling.training_memory(n, "mixed", 1, 64).total / 1e9 == pytest.approx(31.4, rel=1e-2)
    assert scaling.training_memory(n, "mixed", 2, 64).total / 1e9 == pytest.approx(16.6, rel=1e-2)
    assert scaling.training_memory(n, "mixed", 3, 64).total / 1e9 == pytest.approx(1.875, rel=1e-2)


def test_memory_formula_matches_a_real_adam_step():
    model = GPT(GPTConfig(**TINY))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 32, (2, 16))
    model(x, x).loss.backward()
    opt.step()
    measured = scaling.measured_state_bytes(model, opt)
    n = sum(p.numel() for p in model.parameters())
    assert measured == scaling.training_memory(n, "fp32")


def test_memory_bad_input():
    with pytest.raises(ValueError, match="precision"):
        scaling.training_memory(10, "fp8")
    with pytest.raises(ValueError, match="zero_stage"):
        scaling.training_memory(10, zero_stage=4)
    with pytest.raises(ValueError, match="positive int"):
        scaling.training_memory(0)


def test_autocast_saves_fewer_activation_bytes():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY))
    x = torch.randint(0, 32, (4, 16))
    fp32 = scaling.saved_activation_bytes(model, x, x)
    bf16 = scaling.saved_activation_bytes(model, x, x, torch.bfloat16)
    assert 0 < bf16 < fp32


def test_accumulation_equals_big_batch():
    torch.manual_seed(0)
    model = GPT(GPTConfig(**TINY))
    x = torch.randint(0, 32, (8, 16))
    one = scaling.accumulated_grads(model, x, x, 1)
    four = scaling.accumulated_grads(model, x, x, 4)
    for name in one:
        torch.testing.assert_close(four[name], one[name], atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="equal micro-batches"):
        scaling.accumulated_grads(model, x, x, 3)


@pytest.mark.slow
def test_two_process_data_parallel_matches_one_process(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")   # the workers must not see it, the caller keeps it
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 32, (2, 8, 16), generator=g)
    tgt = torch.randint(0, 32, (2, 8, 16), generator=g)
    ref = scaling.run_data_parallel(TINY, idx, tgt, world_size=1)
    dp = scaling.run_data_parallel(TINY, idx, tgt, world_size=2)
    assert dp["world_size"] == 2 and dp["worker_gpus"] == 0
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "0"
    assert dp["losses"] == pytest.approx(ref["losses"], abs=1e-5)
    for k, v in ref["state"].items():
        torch.testing.assert_close(dp["state"][k], v, atol=1e-5, rtol=1e-4)


def test_data_parallel_bad_input():
    x = torch.zeros(2, 3, 16, dtype=torch.long)
    with pytest.raises(ValueError, match="split evenly"):
        scaling.run_data_parallel(TINY, x, x, world_size=2)
    with pytest.raises(ValueError, match=r"\[steps, batch, T\]"):
        scaling.run_data_parallel(TINY, x[0], x[0], world_size=1)
