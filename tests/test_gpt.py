"""Tests for course_utils.models.gpt: shapes, KV cache == recompute, sampling, save/load, errors."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from course_utils.models.gpt import GPT, GPTConfig, GPTOutput, sample_next_token


def tiny(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = dict(vocab_size=37, block_size=16, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg)).eval()


def test_shapes_loss_and_attentions():
    m = tiny()
    idx = torch.randint(0, 37, (3, 10))
    out = m(idx, torch.randint(0, 37, (3, 10)), output_attentions=True, use_cache=True)
    assert isinstance(out, GPTOutput)
    assert out.logits.shape == (3, 10, 37)
    assert out.loss.ndim == 0 and math.isfinite(out.loss.item())
    # an untrained model predicts roughly uniformly: loss near ln(V)
    assert abs(out.loss.item() - math.log(37)) < 0.5
    assert len(out.attentions) == 2 and out.attentions[0].shape == (3, 2, 10, 10)
    a = out.attentions[0]
    assert torch.allclose(a.sum(-1), torch.ones(3, 2, 10), atol=1e-5)
    assert torch.all(a.triu(diagonal=1) == 0)  # causal
    assert len(out.kv_cache) == 2 and out.kv_cache[0][0].shape == (3, 2, 10, 16)


def test_naive_attention_equals_sdpa_path():
    m = tiny()
    idx = torch.randint(0, 37, (2, 12))
    fast = m(idx).logits
    slow = m(idx, output_attentions=True).logits
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=1e-5)


def test_ignore_index_in_loss():
    m = tiny()
    idx = torch.randint(0, 37, (2, 8))
    tgt = idx.clone()
    tgt[:, :4] = -100
    out = m(idx, tgt)
    ref = F.cross_entropy(out.logits[:, 4:].reshape(-1, 37), idx[:, 4:].reshape(-1))
    torch.testing.assert_close(out.loss, ref)


@pytest.mark.parametrize("chunks", [[5, 1, 1, 1], [3, 4, 2], [1] * 7])
def test_kv_cache_equals_full_recompute(chunks):
    m = tiny()
    idx = torch.randint(0, 37, (2, sum(chunks)))
    full = m(idx).logits
    cache, parts, start = None, [], 0
    for n in chunks:
        out = m(idx[:, start:start + n], kv_cache=cache, use_cache=True)
        cache, start = out.kv_cache, start + n
        parts.append(out.logits)
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)
    # the attention weights with a cache are those of the full pass, rows for the new tokens
    out_full = m(idx, output_attentions=True)
    out_c = m(idx[:, 4:6], kv_cache=m(idx[:, :4], use_cache=True).kv_cache, output_attentions=True)
    torch.testing.assert_close(out_c.attentions[1], out_full.attentions[1][:, :, 4:6, :6], atol=1e-5, rtol=1e-5)


def test_generate_cache_equals_no_cache_and_slides_past_block_size():
    m = tiny(block_size=8)
    idx = torch.randint(0, 37, (2, 3))
    a = m.generate(idx, 12, temperature=0.0, use_cache=True)
    b = m.generate(idx, 12, temperature=0.0, use_cache=False)
    assert a.shape == (2, 15)
    assert torch.equal(a, b)
    assert torch.equal(a[:, :3], idx)
    # greedy == argmax of the full recompute on the last window
    nxt = m(a[:, -9:-1]).logits[:, -1].argmax(-1)
    assert torch.equal(nxt, a[:, -1])


def test_generate_sampling_reproducible_and_training_mode_restored():
    m = tiny()
    m.train()
    idx = torch.zeros(1, 1, dtype=torch.long)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = m.generate(idx, 10, temperature=1.0, top_k=5, generator=g1)
    b = m.generate(idx, 10, temperature=1.0, top_k=5, generator=g2)
    assert torch.equal(a, b)
    assert m.training


def test_sample_next_token_filters():
    logits = torch.tensor([[0.0, 1.0, 2.0, 3.0]])
    g = torch.Generator().manual_seed(0)
    picks = {int(sample_next_token(logits, 1.0, top_k=2, generator=g)) for _ in range(50)}
    assert picks <= {2, 3} and len(picks) == 2
    # probabilities ~ [.03, .09, .24, .64]: top_p=0.5 keeps only the top token, 0.8 the top two
    assert {int(sample_next_token(logits, 1.0, top_p=0.5, generator=g)) for _ in range(30)} == {3}
    assert {int(sample_next_token(logits, 1.0, top_p=0.8, generator=g)) for _ in range(80)} == {2, 3}
    assert int(sample_next_token(logits, 0.0)) == 3


def test_weight_tying_and_init():
    m = tiny(n_layer=4, n_embd=64)
    assert m.lm_head.weight is m.transformer.wte.weight
    std_proj = m.transformer.h[0].attn.c_proj.weight.std().item()
    std_fc = m.transformer.h[0].mlp.c_fc.weight.std().item()
    assert abs(std_fc - 0.02) < 0.003
    assert abs(std_proj - 0.02 / math.sqrt(8)) < 0.002


def test_num_params_formula():
    V, T, L, C = 37, 16, 2, 32
    m = tiny()
    total = V * C + T * C + L * (12 * C * C + 13 * C) + 2 * C
    assert m.num_params(non_embedding=False) == total
    assert m.num_params() == total - T * C
    nb = tiny(bias=False)
    assert nb.num_params(non_embedding=False) == V * C + T * C + L * (12 * C * C + 2 * C) + C


def test_flops_estimate_matches_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    m = tiny()
    idx = torch.randint(0, 37, (2, 16))
    with FlopCounterMode(display=False) as fc:
        m(idx, output_attentions=True)  # explicit matmuls: QK^T and AV counted as dense
    measured = fc.get_total_flops() / idx.numel()
    assert measured == pytest.approx(m.estimate_flops_per_token(16, training=False), rel=0.01)
    assert m.estimate_flops_per_token(16) == 3 * m.estimate_flops_per_token(16, training=False)


def test_configure_optimizers_groups():
    m = tiny()
    opt = m.configure_optimizers(0.1, 1e-3, (0.9, 0.95), "cpu")
    assert opt.defaults["fused"] is True
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    n = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert n == m.num_params(non_embedding=False)


def test_training_step_reduces_loss_with_dropout():
    m = tiny(dropout=0.1).train()
    opt = m.configure_optimizers(0.0, 3e-3)
    idx = torch.randint(0, 37, (4, 16))
    first = None
    for _ in range(20):
        loss = m(idx[:, :-1], idx[:, 1:]).loss
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first - 0.5


def test_save_load_round_trip(tmp_path):
    m = tiny()
    d = m.save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "model.safetensors"]
    assert json.loads((d / "config.json").read_text())["n_layer"] == 2
    m2 = GPT.from_pretrained(d)
    assert m2.lm_head.weight is m2.transformer.wte.weight
    idx = torch.randint(0, 37, (2, 9))
    torch.testing.assert_close(m(idx).logits, m2.eval()(idx).logits)
    # saving again over an existing folder replaces it, leaving no temp folders behind
    m2.save_pretrained(d)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_bad_inputs_raise_clear_errors(tmp_path):
    m = tiny()
    with pytest.raises(ValueError, match="block_size"):
        m(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match="block_size"):
        cache = m(torch.zeros(1, 10, dtype=torch.long), use_cache=True).kv_cache
        m(torch.zeros(1, 7, dtype=torch.long), kv_cache=cache)
    with pytest.raises(TypeError, match="integer"):
        m(torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        m(torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="outside"):
        m(torch.tensor([[1, 37]]))
    with pytest.raises(ValueError, match="targets must be"):
        m(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="divisible"):
        GPTConfig(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="positive int"):
        GPTConfig(n_layer=0)
    with pytest.raises(ValueError, match="top_p"):
        m.generate(torch.zeros(1, 1, dtype=torch.long), 2, top_p=1.5)
    with pytest.raises(FileNotFoundError, match="config.json"):
        GPT.from_pretrained(tmp_path)
