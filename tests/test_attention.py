"""course_utils.attention against PyTorch and transformers references; bad input -> clear error."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from course_utils import attention as A

ATOL = 1e-5


@pytest.fixture
def qkv() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return (torch.randn(2, 3, 5, 8, generator=g), torch.randn(2, 3, 7, 8, generator=g),
            torch.randn(2, 3, 7, 4, generator=g))


def test_sdpa_matches_torch_plain_and_scaled(qkv):
    q, k, v = qkv
    out, w = A.scaled_dot_product_attention(q, k, v)
    assert out.shape == (2, 3, 5, 4) and w.shape == (2, 3, 5, 7)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), atol=ATOL, rtol=0)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 3, 5), atol=ATOL, rtol=0)
    out2, _ = A.scaled_dot_product_attention(q, k, v, scale=0.3)
    torch.testing.assert_close(out2, F.scaled_dot_product_attention(q, k, v, scale=0.3), atol=ATOL, rtol=0)


def test_sdpa_causal_and_masks_match_torch(qkv):
    q, k, v = qkv
    out, w = A.scaled_dot_product_attention(q, k, v, is_causal=True)
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=ATOL, rtol=0)
    assert torch.all(w[..., 0, 1:] == 0), "query 0 must see key 0 only"
    bool_mask = torch.rand(2, 1, 5, 7, generator=torch.Generator().manual_seed(1)) > 0.3
    bool_mask[..., 0] = True                                   # no fully masked row
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=bool_mask)
    torch.testing.assert_close(A.scaled_dot_product_attention(q, k, v, bool_mask)[0], ref, atol=ATOL, rtol=0)
    float_mask = torch.zeros(5, 7).masked_fill(~bool_mask[0, 0], float("-inf"))
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=float_mask)
    torch.testing.assert_close(A.scaled_dot_product_attention(q, k, v, float_mask)[0], ref, atol=ATOL, rtol=0)


def test_causal_mask_shapes_and_offset():
    m = A.causal_mask(3)
    assert m.dtype == torch.bool and m.tolist() == [[True, False, False], [True, True, False], [True, True, True]]
    m = A.causal_mask(2, 5, offset=3)                          # 3 cached tokens, 2 new queries
    assert m.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]
    with pytest.raises(ValueError, match="positive int"):
        A.causal_mask(0)


def test_padding_mask_ignores_pad_keys():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 1, 4, 8, generator=g)                        # [B, H, T, d]
    padded = torch.cat([x, torch.randn(1, 1, 2, 8, generator=g)], dim=2)
    am = torch.tensor([[1, 1, 1, 1, 0, 0]])
    out, w = A.scaled_dot_product_attention(padded, padded, padded, A.padding_mask(am))
    ref, _ = A.scaled_dot_product_attention(x, x, x)
    torch.testing.assert_close(out[:, :, :4], ref, atol=ATOL, rtol=0)
    assert torch.all(w[..., 4:] == 0)
    assert A.padding_mask(am).shape == (1, 1, 1, 6)
    with pytest.raises(ValueError, match=r"\[B, T\]"):
        A.padding_mask(torch.ones(1, 1, 6))


def test_combine_masks():
    a, b = A.causal_mask(3), torch.tensor([True, True, False])
    assert torch.equal(A.combine_masks(a, None, b), a & b)
    assert A.combine_masks(None) is None
    with pytest.raises(TypeError, match="boolean"):
        A.combine_masks(torch.zeros(3))


def test_sdpa_rejects_bad_input(qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match="share d_k"):
        A.scaled_dot_product_attention(q, k[..., :4], v)
    with pytest.raises(ValueError, match="same T_k"):
        A.scaled_dot_product_attention(q, k, v[..., :3, :])
    with pytest.raises(TypeError, match="torch.Tensor"):
        A.scaled_dot_product_attention(q.tolist(), k, v)
    with pytest.raises(ValueError, match="does not broadcast"):
        A.scaled_dot_product_attention(q, k, v, torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="dropout_p"):
        A.scaled_dot_product_attention(q, k, v, dropout_p=1.5)


def test_entropy_limits():
    assert float(A.attention_entropy(torch.full((8,), 1 / 8))) == pytest.approx(math.log(8), abs=1e-6)
    assert float(A.attention_entropy(torch.tensor([1.0, 0.0, 0.0]))) == 0.0


@pytest.mark.parametrize("bias", [True, False])
def test_mha_matches_torch_multihead_attention(bias):
    torch.manual_seed(3)
    mha = torch.nn.MultiheadAttention(32, 4, bias=bias, batch_first=True).eval()
    ours = A.MultiHeadAttention.from_torch(mha).eval()
    x = torch.randn(2, 6, 32)
    ref, ref_w = mha(x, x, x, average_attn_weights=False)
    out, w = ours(x)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(w, ref_w, atol=ATOL, rtol=0)
    # causal + padding: torch masks are "True = blocked"
    am = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    causal = A.causal_mask(6)
    ref, _ = mha(x, x, x, attn_mask=~causal, key_padding_mask=am == 0, need_weights=False)
    out, _ = ours(x, attn_mask=causal, attention_mask=am)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    out_c, _ = ours(x, is_causal=True, attention_mask=am)
    torch.testing.assert_close(out_c, ref, atol=ATOL, rtol=0)


def test_mha_cross_attention_and_errors():
    torch.manual_seed(4)
    mha = torch.nn.MultiheadAttention(16, 2, batch_first=True)
    ours = A.MultiHeadAttention.from_torch(mha)
    q, kv = torch.randn(1, 3, 16), torch.randn(1, 5, 16)
    out, w = ours(q, kv)
    torch.testing.assert_close(out, mha(q, kv, kv)[0], atol=ATOL, rtol=0)
    assert w.shape == (1, 2, 3, 5)
    with pytest.raises(ValueError, match="multiple of n_head"):
        A.MultiHeadAttention(10, 3)
    with pytest.raises(ValueError, match=r"query must be \[B, T, 16\]"):
        ours(torch.randn(1, 3, 8))
    with pytest.raises(ValueError, match="attention_mask must be"):
        ours(q, attention_mask=torch.ones(1, 4))
    with pytest.raises(TypeError, match="MultiheadAttention"):
        A.MultiHeadAttention.from_torch(torch.nn.Linear(2, 2))


def test_split_merge_heads_roundtrip():
    x = torch.randn(2, 5, 12)
    h = A.split_heads(x, 3)
    assert h.shape == (2, 3, 5, 4)
    assert torch.equal(A.merge_heads(h), x)
    with pytest.raises(ValueError, match="divisible"):
        A.split_heads(x, 5)


def test_sinusoidal_formula_and_modules():
    pe = A.sinusoidal_positions(50, 16)
    p, i = 7, 3
    assert float(pe[p, 2 * i]) == pytest.approx(math.sin(p / 10000 ** (2 * i / 16)), abs=1e-6)
    assert float(pe[p, 2 * i + 1]) == pytest.approx(math.cos(p / 10000 ** (2 * i / 16)), abs=1e-6)
    x = torch.zeros(2, 4, 16)
    torch.testing.assert_close(A.SinusoidalPositionalEncoding(16, 50)(x, offset=3)[0], pe[3:7])
    learned = A.LearnedPositionalEmbedding(10, 16)
    torch.testing.assert_close(learned(x)[1], learned.wpe.weight[:4])
    with pytest.raises(ValueError, match="exceed max_positions"):
        learned(torch.zeros(1, 11, 16))
    with pytest.raises(ValueError, match="even d_model"):
        A.sinusoidal_positions(5, 7)


def test_rope_matches_transformers_llama():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

    cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, max_position_embeddings=32, rope_theta=10000.0)
    q, k = torch.randn(2, 1, 4, 9, 16).unbind(0)
    pos = torch.arange(9)[None]
    cos_ref, sin_ref = LlamaRotaryEmbedding(cfg)(q, pos)
    q_ref, k_ref = apply_rotary_pos_emb(q, k, cos_ref, sin_ref)
    cos, sin = A.rope_cos_sin(9, 16)
    torch.testing.assert_close(cos, cos_ref[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(A.apply_rope(q, cos, sin), q_ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(A.apply_rope(k, cos, sin), k_ref, atol=ATOL, rtol=0)


def test_rope_score_depends_only_on_offset():
    g = torch.Generator().manual_seed(5)
    q, k = torch.randn(2, 32, generator=g).unbind(0)
    cos, sin = A.rope_cos_sin(40, 32)
    rq = A.apply_rope(q.expand(40, 32), cos, sin)          # the same q at every position
    rk = A.apply_rope(k.expand(40, 32), cos, sin)
    scores = rq @ rk.T                                      # [m, n]
    for offset in (0, 3, -5):
        diag = torch.diagonal(scores, offset=offset)
        assert float(diag.std()) < 1e-4 * float(scores.abs().max()), "RoPE score must depend on m - n only"
    assert float(scores[0, 0]) == pytest.approx(float(q @ k), abs=1e-4)   # no rotation at offset 0
    with pytest.raises(ValueError, match="even"):
        A.rope_cos_sin(4, 5)
    with pytest.raises(ValueError, match="cos/sin"):
        A.apply_rope(torch.randn(3, 8), cos, sin)


# --------------------------------------------------------------------------- issue 28, item 8: mask dtypes
def _padded_key_mask() -> torch.Tensor:
    """``[2, 1, 1, 7]`` key mask: example 0 has 2 padding keys, example 1 has 4."""
    m = torch.ones(2, 1, 1, 7, dtype=torch.long)
    m[0, ..., 5:] = 0
    m[1, ..., 3:] = 0
    return m


@pytest.mark.parametrize("dtype", [torch.long, torch.int32, torch.uint8, torch.int8])
def test_sdpa_integer_01_mask_masks_padding_like_torch(qkv, dtype):
    q, k, v = qkv
    int_mask = _padded_key_mask().to(dtype)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=int_mask.bool())
    out, w = A.scaled_dot_product_attention(q, k, v, int_mask)
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    assert torch.all(w[0, ..., 5:] == 0) and torch.all(w[1, ..., 3:] == 0), "padding keys got attention"


def test_sdpa_float_mask_is_additive_like_torch(qkv):
    q, k, v = qkv
    add = torch.zeros(2, 1, 1, 7)
    add[0, ..., 5:] = float("-inf")
    add[1, ..., 0] = -1.5                                      # a bias, not a block
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=add)
    torch.testing.assert_close(A.scaled_dot_product_attention(q, k, v, add)[0], ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("bad", [torch.tensor([0, 1, 2]), torch.tensor([-1, 1, 1])])
def test_sdpa_rejects_integer_masks_that_are_not_01(bad):
    q = k = v = torch.randn(1, 3, 4)
    with pytest.raises(ValueError, match=r"mask.*0 and 1"):
        A.scaled_dot_product_attention(q, k, v, bad)


def test_sdpa_rejects_nan_float_mask():
    q = k = v = torch.randn(1, 3, 4)
    with pytest.raises(ValueError, match="mask.*NaN"):
        A.scaled_dot_product_attention(q, k, v, torch.tensor([0.0, float("nan"), 0.0]))


@pytest.mark.parametrize("dtype", [torch.long, torch.uint8, torch.bool])
def test_mha_integer_attn_mask_matches_torch_with_padding(dtype):
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(16, 4, batch_first=True).eval()
    ours = A.MultiHeadAttention.from_torch(mha).eval()
    x = torch.randn(2, 7, 16)
    keep = _padded_key_mask()[:, 0]                                # [2, 1, 7]
    # torch's bool attn_mask is True = *blocked*; ours is True = may attend.
    torch_mask = (~keep.bool()).expand(2, 7, 7).repeat_interleave(4, dim=0)   # [B*H, T, S]
    ref, _ = mha(x, x, x, attn_mask=torch_mask)
    out, w = ours(x, attn_mask=keep[:, None].to(dtype))          # [2, 1, 1, 7]
    torch.testing.assert_close(out, ref, atol=ATOL, rtol=0)
    assert torch.all(w[0, ..., 5:] == 0) and torch.all(w[1, ..., 3:] == 0)


def test_mha_integer_attn_mask_combines_with_attention_mask():
    torch.manual_seed(0)
    ours = A.MultiHeadAttention(16, 4).eval()
    x = torch.randn(2, 7, 16)
    pad = torch.ones(2, 7, dtype=torch.long)
    pad[0, 6:] = 0
    causal = A.causal_mask(7)
    out_int, w = ours(x, attn_mask=causal.long(), attention_mask=pad)
    out_bool, _ = ours(x, attn_mask=causal, attention_mask=pad.bool())
    torch.testing.assert_close(out_int, out_bool, atol=ATOL, rtol=0)
    assert torch.all(w[0, :, :, 6] == 0)


@pytest.mark.parametrize("bad", [torch.tensor([[1, 1, 2]]), torch.tensor([[0.0, float("-inf"), 0.0]])])
def test_padding_mask_rejects_values_other_than_01(bad):
    with pytest.raises(ValueError, match=r"attention_mask.*0.*1"):
        A.padding_mask(bad)


def test_mha_attention_mask_must_be_a_tensor():
    ours = A.MultiHeadAttention(8, 2)
    with pytest.raises(TypeError, match="attention_mask"):
        ours(torch.randn(1, 3, 8), attention_mask=[[1, 1, 0]])


def test_fused_attention_is_sdpa_and_attends_cpu_bf16_in_fp32():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=g) for _ in range(3))
    mask = torch.ones(5, 5, dtype=torch.bool).tril()
    assert torch.equal(A.fused_attention(q, k, v, attn_mask=mask), F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    assert torch.equal(A.fused_attention(q, k, v, is_causal=True), F.scaled_dot_product_attention(q, k, v, is_causal=True))
    # under CPU bf16 autocast: the output stays bf16 for the next matmul, computed from fp32 softmax,
    # so it is the fp32 result rounded once, and gradients reach bf16 inputs
    qb, kb, vb = (t.to(torch.bfloat16).requires_grad_() for t in (q, k, v))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = A.fused_attention(qb, kb, vb, is_causal=True)
    assert y.dtype == torch.bfloat16
    exact = F.scaled_dot_product_attention(qb.float(), kb.float(), vb.float(), is_causal=True)
    assert torch.equal(y, exact.to(torch.bfloat16))
    y.float().sum().backward()
    assert qb.grad is not None and qb.grad.dtype == torch.bfloat16 and torch.isfinite(qb.grad.float()).all()
