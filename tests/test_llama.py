"""The course's Llama-family decoder (course_utils.models.llama) against transformers' Llama:
each piece, a whole random model both ways, and SmolLM2-135M-Instruct's real weights."""
from __future__ import annotations

import pytest
import torch
from transformers.models.llama import modeling_llama as hf_llama

from course_utils.models import llama as L


def tiny(**kw) -> L.LlamaConfig:
    base = dict(vocab_size=97, block_size=64, n_layer=2, n_head=4, n_kv_heads=2, n_embd=32, intermediate_size=48,
                rope_theta=500.0, rms_norm_eps=1e-6)
    return L.LlamaConfig(**{**base, **kw})


def randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Perturb every parameter (norm gains too) so that no test passes on an all-ones weight."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


def hf_cfg(cfg: L.LlamaConfig):
    c = L.hf_config(cfg)
    c._attn_implementation = "eager"
    return c


# ----------------------------------------------------------------------------- the pieces
def test_rmsnorm_matches_transformers():
    torch.manual_seed(0)
    ours, ref = L.RMSNorm(16, eps=1e-6), hf_llama.LlamaRMSNorm(16, eps=1e-6)
    with torch.no_grad():
        ours.weight.copy_(torch.randn(16))
        ref.weight.copy_(ours.weight)
    x = torch.randn(3, 5, 16) * 4 + 1
    torch.testing.assert_close(ours(x), ref(x))
    assert not torch.allclose(ours(x), torch.nn.functional.layer_norm(x, (16,)))   # it is not LayerNorm


def test_rotary_matches_transformers():
    cfg = tiny()
    ours, ref = L.RotaryEmbedding(cfg.head_dim, cfg.rope_theta), hf_llama.LlamaRotaryEmbedding(hf_cfg(cfg))
    pos = torch.tensor([[0, 1, 2, 3, 4, 5], [0, 0, 0, 1, 2, 3]])
    cos, sin = ours(pos)
    ref_cos, ref_sin = ref(torch.zeros(1), pos)
    torch.testing.assert_close(cos, ref_cos)
    torch.testing.assert_close(sin, ref_sin)
    q, k = torch.randn(2, 4, 6, 8), torch.randn(2, 2, 6, 8)
    for a, b in zip(L.apply_rotary(q, k, cos, sin), hf_llama.apply_rotary_pos_emb(q, k, ref_cos, ref_sin)):
        torch.testing.assert_close(a, b)


def test_rotary_scores_depend_only_on_distance():
    rot = L.RotaryEmbedding(8, 10000.0)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)

    def score(i: int, j: int) -> float:
        cq, sq = rot(torch.tensor([[i]]))
        ck, sk = rot(torch.tensor([[j]]))
        qr, _ = L.apply_rotary(q, q, cq, sq)
        _, kr = L.apply_rotary(k, k, ck, sk)
        return float((qr * kr).sum())

    assert score(7, 3) == pytest.approx(score(24, 20), abs=1e-5)
    assert score(7, 3) != pytest.approx(score(7, 5), abs=1e-3)


def test_swiglu_matches_llama_mlp():
    cfg = tiny()
    ours, ref = randomized(L.SwiGLU(cfg.n_embd, cfg.intermediate_size)), hf_llama.LlamaMLP(hf_cfg(cfg))
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(2, 5, cfg.n_embd)
    torch.testing.assert_close(ours(x), ref(x))


def test_repeat_kv_matches_transformers_and_repeat_interleave():
    x = torch.randn(2, 3, 5, 4)
    for n in (1, 3):
        torch.testing.assert_close(L.repeat_kv(x, n), hf_llama.repeat_kv(x, n))
        torch.testing.assert_close(L.repeat_kv(x, n), x.repeat_interleave(n, dim=1))


@pytest.mark.parametrize("n_kv", [4, 2, 1])   # MHA, GQA, MQA
def test_attention_matches_llama_attention(n_kv):
    cfg = tiny(n_kv_heads=n_kv)
    ours = randomized(L.Attention(cfg))
    ref = hf_llama.LlamaAttention(hf_cfg(cfg), layer_idx=0).eval()
    ref.load_state_dict(ours.state_dict())
    B, T = 2, 7
    x = torch.randn(B, T, cfg.n_embd)
    pos = torch.arange(T)[None].expand(B, T)
    rope = L.RotaryEmbedding(cfg.head_dim, cfg.rope_theta)(pos)
    mask = L.attention_mask_4d(torch.ones(B, T), T)
    additive = torch.zeros(mask.shape).masked_fill(~mask, float("-inf"))
    y, (k, v) = ours(x, mask, rope)
    y_ref, _ = ref(x, position_embeddings=rope, attention_mask=additive)
    torch.testing.assert_close(y, y_ref, atol=1e-5, rtol=1e-5)
    assert k.shape == v.shape == (B, n_kv, T, cfg.head_dim)   # the cache keeps n_kv heads, not n_head


# ----------------------------------------------------------------------------- whole models
def padded_batch(vocab: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (3, 9), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0          # left padding, as for generation
    mask[2, :1] = 0
    ids = ids.masked_fill(mask == 0, 0)
    return ids, mask


@pytest.mark.parametrize("n_kv,tie", [(4, True), (2, False), (1, True)])
def test_random_model_equals_transformers_both_ways(n_kv, tie):
    cfg = tiny(n_kv_heads=n_kv, tie_word_embeddings=tie)
    torch.manual_seed(1)
    ours = randomized(L.LlamaForCausalLM(cfg))
    hf = L.to_hf(ours)
    ids, mask = padded_batch(cfg.vocab_size)
    pos = L.position_ids_from_mask(mask)
    with torch.no_grad():
        a = ours(ids, attention_mask=mask).logits
        b = hf(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    real = mask.bool()
    assert (a - b)[real].abs().max() <= 1e-5
    back = L.from_hf(hf)
    with torch.no_grad():
        torch.testing.assert_close(back(ids, attention_mask=mask).logits, a)
    assert back.lm_head.weight is back.embed_tokens.weight if tie else back.lm_head.weight is not back.embed_tokens.weight


def test_padding_does_not_change_the_real_tokens_logits():
    cfg = tiny()
    torch.manual_seed(2)
    m = randomized(L.LlamaForCausalLM(cfg))
    ids, mask = padded_batch(cfg.vocab_size)
    with torch.no_grad():
        padded = m(ids, attention_mask=mask).logits[1, 4:]
        alone = m(ids[1:2, 4:]).logits[0]
    torch.testing.assert_close(padded, alone, atol=1e-5, rtol=1e-5)


def test_causal_fast_path_equals_an_all_ones_mask():
    m = randomized(L.LlamaForCausalLM(tiny()))
    ids = torch.randint(0, 97, (2, 11))
    with torch.no_grad():
        torch.testing.assert_close(m(ids).logits, m(ids, attention_mask=torch.ones_like(ids)).logits)


@pytest.mark.parametrize("pos", ["rope", "learned"])
def test_kv_cache_matches_full_recompute(pos):
    cfg = tiny(pos=pos)
    torch.manual_seed(3)
    m = randomized(L.LlamaForCausalLM(cfg))
    ids, mask = padded_batch(cfg.vocab_size)
    with torch.no_grad():
        full = m(ids, attention_mask=mask).logits
        first = m(ids[:, :6], attention_mask=mask[:, :6], use_cache=True)
        rest = m(ids[:, 6:], attention_mask=mask, kv_cache=first.kv_cache, use_cache=True)
    torch.testing.assert_close(torch.cat([first.logits, rest.logits], 1)[mask.bool()], full[mask.bool()],
                               atol=1e-5, rtol=1e-5)
    assert rest.kv_cache[0][0].shape == (3, cfg.n_kv_heads, 9, cfg.head_dim)


def test_greedy_generate_equals_transformers_and_no_cache():
    cfg = tiny(n_kv_heads=1)
    torch.manual_seed(4)
    m = randomized(L.LlamaForCausalLM(cfg), seed=4)
    hf = L.to_hf(m)
    ids, mask = padded_batch(cfg.vocab_size)
    ours = m.generate(ids, 12, attention_mask=mask, temperature=0)
    no_cache = m.generate(ids, 12, attention_mask=mask, temperature=0, use_cache=False)
    ref = hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=12, min_new_tokens=12, do_sample=False,
                      pad_token_id=0)
    assert torch.equal(ours, ref) and torch.equal(ours, no_cache)


@pytest.mark.parametrize("switch", [{}, {"norm": "layer"}, {"pos": "learned"}, {"mlp": "gelu", "intermediate_size": 128}])
def test_ablation_switches_train_and_save(tmp_path, switch):
    cfg = tiny(**switch)
    torch.manual_seed(5)
    m = L.LlamaForCausalLM(cfg)
    x, y = torch.randint(0, cfg.vocab_size, (2, 2, 10))
    out = m(x, targets=y)   # (not y = x: tied embeddings favour repeating the input token)
    out.loss.backward()
    assert out.loss.item() == pytest.approx(torch.log(torch.tensor(97.0)).item(), abs=0.3)   # ≈ uniform at init
    assert all(p.grad is not None for p in m.parameters())
    assert not any(name.endswith("bias") for name, _ in m.named_parameters())
    m.save_pretrained(tmp_path / "m")
    back = L.LlamaForCausalLM.from_pretrained(tmp_path / "m").eval()
    assert back.config == cfg
    with torch.no_grad():
        torch.testing.assert_close(back(x).logits, m.eval()(x).logits)


def test_swiglu_and_gelu_param_counts():
    C = 128
    swiglu = L.LlamaForCausalLM(tiny(n_embd=C, n_head=4, intermediate_size=round(8 * C / 3)))
    gelu = L.LlamaForCausalLM(tiny(n_embd=C, n_head=4, mlp="gelu", intermediate_size=4 * C))
    assert abs(swiglu.num_params() - gelu.num_params()) <= 3 * C   # rounding of 8C/3 only


def test_bad_configs_name_the_field():
    with pytest.raises(ValueError, match="n_kv_heads"):
        tiny(n_head=4, n_kv_heads=3)
    with pytest.raises(ValueError, match="n_head"):
        tiny(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="norm"):
        tiny(norm="batch")
    with pytest.raises(ValueError, match="intermediate_size"):
        tiny(intermediate_size=0)
    with pytest.raises(TypeError):
        L.LlamaForCausalLM({"n_layer": 2})


def test_wrong_shape_weights_name_the_field(tmp_path):
    small = L.LlamaForCausalLM(tiny(n_kv_heads=2))
    small.save_pretrained(tmp_path / "m")
    cfg_file = tmp_path / "m" / "config.json"
    cfg_file.write_text(cfg_file.read_text().replace('"n_kv_heads": 2', '"n_kv_heads": 1'))
    with pytest.raises(ValueError, match="n_kv_heads"):
        L.LlamaForCausalLM.from_pretrained(tmp_path / "m")
    state = dict(small.state_dict())
    state["layers.0.mlp.up_proj.weight"] = torch.zeros(7, 32)
    with pytest.raises(ValueError, match="intermediate_size"):
        L.LlamaForCausalLM(tiny(n_kv_heads=2)).load_weights(state)


def test_bad_inputs():
    m = L.LlamaForCausalLM(tiny())
    with pytest.raises(ValueError, match="block_size"):
        m(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        m(torch.zeros(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 4))
    with pytest.raises(TypeError):
        m(torch.zeros(1, 5))
    with pytest.raises(ValueError, match="learned"):
        L.to_hf(L.LlamaForCausalLM(tiny(pos="learned")))


def test_kv_cache_bytes_formula_matches_tensors():
    for n_kv in (4, 2, 1):
        cfg = tiny(n_kv_heads=n_kv)
        m = L.LlamaForCausalLM(cfg).eval()
        with torch.no_grad():
            out = m(torch.zeros(1, 10, dtype=torch.long), use_cache=True)
        assert L.cache_nbytes(out.kv_cache) == 10 * L.kv_cache_bytes_per_token(cfg.n_layer, n_kv, cfg.head_dim, 4)
    assert L.kv_cache_bytes_per_token(30, 3, 64, 2) == 23040
    with pytest.raises(ValueError, match="n_kv_heads"):
        L.kv_cache_bytes_per_token(30, 0, 64)


# ----------------------------------------------------------------------------- SmolLM2's real weights
@pytest.fixture(scope="module")
def smollm2():
    from course_utils import pretrained

    hf, tok = pretrained.load_smollm2()
    tok.padding_side = "left"
    return hf, L.from_hf(hf), tok


PROMPTS = ["The capital of France is", "Once upon a time, in a land far away,"]


def test_smollm2_logits_match_on_a_padded_batch(smollm2):
    hf, ours, tok = smollm2
    assert ours.config.n_layer == 30 and ours.config.n_kv_heads == 3 and ours.config.rope_theta == 100000.0
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    assert (batch["attention_mask"] == 0).any()       # really padded
    with torch.no_grad():
        ref = hf(**batch, position_ids=L.position_ids_from_mask(batch["attention_mask"])).logits
        got = ours(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert (ref - got)[batch["attention_mask"].bool()].abs().max() <= 1e-4


def test_smollm2_greedy_50_tokens_identical(smollm2):
    hf, ours, tok = smollm2
    batch = tok(PROMPTS, return_tensors="pt", padding=True)
    eos = tok.eos_token_id
    got = ours.generate(batch["input_ids"], 50, attention_mask=batch["attention_mask"], temperature=0,
                        eos_token_id=eos)
    ref = hf.generate(**batch, max_new_tokens=50, do_sample=False, pad_token_id=eos, eos_token_id=eos)
    assert torch.equal(got, ref)
    assert got.shape[1] - batch["input_ids"].shape[1] == 50     # one row ran the full 50 tokens


def test_smollm2_saved_by_the_course_loads_in_transformers(smollm2, tmp_path):
    from transformers import LlamaForCausalLM

    hf, ours, tok = smollm2
    L.save_hf_pretrained(ours, tmp_path / "hf", tokenizer=tok)
    back = LlamaForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    ids = tok(PROMPTS[:1], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert (back(ids).logits - hf(ids).logits).abs().max() <= 1e-4


def test_an_additive_mask_is_refused_not_inverted() -> None:
    """A 0/-inf float mask read as 0/1 would attend to padding only; it is a clear error."""
    torch.manual_seed(0)
    cfg = L.LlamaConfig(vocab_size=50, block_size=16, n_layer=1, n_head=2, n_kv_heads=1, n_embd=16,
                        intermediate_size=32)
    model = L.LlamaForCausalLM(cfg).eval()
    idx = torch.randint(0, 50, (2, 6))
    additive = torch.zeros(2, 6)
    additive[1, :2] = float("-inf")
    with pytest.raises(ValueError, match="attention_mask"):
        model(idx, attention_mask=additive)
    with pytest.raises(ValueError, match="attention_mask"):
        model.generate(idx, 2, attention_mask=additive)
    ones = torch.ones(2, 6, dtype=torch.long)
    assert torch.equal(model(idx, attention_mask=ones).logits, model(idx, attention_mask=ones.bool()).logits)
