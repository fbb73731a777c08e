"""Tests for course_utils.generation: decoding against hand-computed cases, exhaustive search and
transformers' own processors / generate() on the same model (a tiny random Llama built from a
config, and SmolLM2 when its asset is present)."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from course_utils import generation as G
from course_utils.models.gpt import GPT, GPTConfig


# ------------------------------------------------------------------------------ fake models
def table_step(table: torch.Tensor):
    """A fake model whose next-token logits depend only on the last token: ``table[last]``."""
    def step(ids, cache):
        return table[ids[:, -1]], None
    return step


def bigram_pair_step(table: torch.Tensor):
    """Logits depend on the last two tokens: ``table[prev, last]`` (prev = last for 1 token)."""
    def step(ids, cache):
        prev = ids[:, -2] if ids.shape[1] > 1 else ids[:, -1]
        return table[prev, ids[:, -1]], None
    return step


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0, initializer_range=0.3)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():                       # make EOS likely enough that some beams end early
        model.lm_head.weight[2] *= 2.0
    return model


# ------------------------------------------------------------------------------ processors
def test_top_k_keeps_the_k_largest():
    logits = torch.tensor([[1.0, 3.0, 2.0, 5.0, -1.0]])
    out = G.top_k_filter(logits, 2)
    assert torch.isfinite(out).tolist() == [[False, True, False, True, False]]
    assert torch.equal(out[torch.isfinite(out)], torch.tensor([3.0, 5.0]))
    assert torch.equal(G.top_k_filter(logits, 99), logits)            # k >= V keeps all


def test_top_p_keeps_the_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    kept = lambda p: torch.isfinite(G.top_p_filter(logits, p))[0].tolist()
    assert kept(0.4) == [True, False, False, False]                   # top token alone has 0.5 >= 0.4
    assert kept(0.75) == [True, True, False, False]                   # 0.5 + 0.3 = 0.8 >= 0.75
    assert kept(0.9) == [True, True, True, False]                     # needs 0.95
    assert kept(1.0) == [True, True, True, True]


def test_temperature_and_repetition_penalty_by_hand():
    logits = torch.tensor([[2.0, -1.0, 0.5, 4.0]])
    assert torch.allclose(G.apply_temperature(logits, 0.5), logits * 2)
    ids = torch.tensor([[0, 1, 1]])
    out = G.apply_repetition_penalty(logits, ids, 2.0)
    assert torch.allclose(out, torch.tensor([[1.0, -2.0, 0.5, 4.0]]))  # +: divided, -: multiplied
    assert torch.equal(G.apply_repetition_penalty(logits, ids.int(), 2.0), out)   # int32 ids work too


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_processors_equal_transformers(seed):
    from transformers.generation.logits_process import (RepetitionPenaltyLogitsProcessor,
                                                         TemperatureLogitsWarper, TopKLogitsWarper,
                                                         TopPLogitsWarper)
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 50, generator=g) * 3
    ids = torch.randint(0, 50, (3, 12), generator=g)
    for k in (1, 5, 50):
        assert torch.equal(G.top_k_filter(logits, k), TopKLogitsWarper(k)(ids, logits))
    for p in (0.1, 0.5, 0.9, 1.0):
        assert torch.equal(G.top_p_filter(logits, p), TopPLogitsWarper(p)(ids, logits))
    for t in (0.3, 1.7):
        assert torch.equal(G.apply_temperature(logits, t), TemperatureLogitsWarper(t)(ids, logits))
    for pen in (1.3, 0.8):
        ref = RepetitionPenaltyLogitsProcessor(pen)(ids, logits.clone())
        assert torch.equal(G.apply_repetition_penalty(logits, ids, pen), ref)
    chained = TopPLogitsWarper(0.8)(ids, TopKLogitsWarper(10)(ids, TemperatureLogitsWarper(0.7)(
        ids, RepetitionPenaltyLogitsProcessor(1.2)(ids, logits.clone()))))
    ours = G.process_logits(logits, ids, temperature=0.7, top_k=10, top_p=0.8, repetition_penalty=1.2)
    assert torch.equal(ours, chained)


@pytest.mark.parametrize("bad", [dict(top_p=0.0), dict(top_p=1.5), dict(top_p=-0.1), dict(top_k=0),
                                 dict(top_k=2.5), dict(temperature=0.0), dict(temperature=-1.0),
                                 dict(repetition_penalty=0.0)])
def test_bad_arguments_raise_clear_errors(bad):
    step = table_step(torch.zeros(3, 3))
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        G.generate(step, torch.zeros(1, 1, dtype=torch.long), 2, do_sample=True, **bad)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"\[batch, vocab\]"):
        G.top_k_filter(torch.zeros(5), 2)
    with pytest.raises(ValueError, match="seq_len"):
        G.generate(table_step(torch.zeros(3, 3)), torch.zeros(3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="one prompt"):
        G.beam_search(table_step(torch.zeros(3, 3)), torch.zeros(2, 1, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="num_beams"):
        G.beam_search(table_step(torch.zeros(3, 3)), torch.zeros(1, 1, dtype=torch.long), 2, num_beams=0)
    with pytest.raises(TypeError, match="step function"):
        G.generate("gpt", torch.zeros(1, 1, dtype=torch.long), 2)


# ------------------------------------------------------------------------------ greedy / sampling
def test_greedy_follows_the_transition_table():
    # 0 -> 2 -> 1 -> 3 -> 3 ... (row = current token, argmax = next token)
    table = torch.tensor([[0., 1., 5., 2.], [0., 0., 1., 9.], [1., 7., 0., 0.], [0., 0., 0., 4.]])
    out = G.generate(table_step(table), torch.tensor([[0]]), 5)
    assert out.tolist() == [[0, 2, 1, 3, 3, 3]]
    out = G.generate(table_step(table), torch.tensor([[0]]), 5, eos_token_id=1)   # stops at EOS
    assert out.tolist() == [[0, 2, 1]]
    # repetition penalty: from [3, 2, 1], row 1 prefers 3 (9.0), but 3 was seen: 9 / 100 < 0.5 (token 0)
    table = torch.tensor([[2., 0., 0., 1.], [0.5, 0., 1., 9.], [1., 7., 0., 0.], [0., 0., 0., 4.]])
    assert G.generate(table_step(table), torch.tensor([[3, 2]]), 2).tolist() == [[3, 2, 1, 3]]
    out = G.generate(table_step(table), torch.tensor([[3, 2]]), 2, repetition_penalty=100.0)
    assert out.tolist() == [[3, 2, 1, 0]]


def test_sampling_is_reproducible_and_respects_filters():
    torch.manual_seed(123)
    table = torch.randn(6, 6)
    step = table_step(table)
    ids = torch.zeros(4, 1, dtype=torch.long)
    a = G.generate(step, ids, 30, do_sample=True, generator=torch.Generator().manual_seed(7))
    b = G.generate(step, ids, 30, do_sample=True, generator=torch.Generator().manual_seed(7))
    c = G.generate(step, ids, 30, do_sample=True, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    top2 = table.topk(2, dim=-1).indices
    out = G.generate(step, ids, 40, do_sample=True, top_k=2, generator=torch.Generator().manual_seed(0))
    for row in out:
        for prev, nxt in zip(row[:-1].tolist(), row[1:].tolist()):
            assert nxt in top2[prev].tolist()


def test_sampling_frequencies_match_softmax():
    logits = torch.tensor([[1.0, 0.0, -1.0, 2.0]])
    step = lambda ids, cache: (logits.expand(ids.shape[0], -1), None)
    out = G.generate(step, torch.zeros(4000, 1, dtype=torch.long), 1, do_sample=True, temperature=0.8,
                     generator=torch.Generator().manual_seed(0))[:, 1]
    freq = torch.bincount(out, minlength=4).float() / out.numel()
    assert torch.allclose(freq, F.softmax(logits[0] / 0.8, dim=-1), atol=0.03)


# ------------------------------------------------------------------------------ beam search
def _exhaustive(step, prompt, vocab, length, eos=None, length_penalty=1.0):
    """Every finished hypothesis (ending in EOS, or at ``length`` new tokens) with its score."""
    hyps = []
    for n in range(1, length + 1):
        for tail in itertools.product(range(vocab), repeat=n):
            if eos is not None and (eos in tail[:-1] or (n < length and tail[-1] != eos)):
                continue
            if eos is None and n < length:
                continue
            seq = prompt + list(tail)
            logp = 0.0
            for i in range(len(prompt), len(seq)):
                logits, _ = step(torch.tensor([seq[:i]]), None)
                logp += float(F.log_softmax(logits.double(), dim=-1)[0, seq[i]])
            hyps.append((logp / n ** length_penalty, seq))
    return sorted(hyps, key=lambda h: -h[0])


def test_beam_search_equals_exhaustive_search_without_eos():
    torch.manual_seed(0)
    vocab, length = 3, 3
    step = bigram_pair_step(torch.randn(vocab, vocab, vocab) * 2)
    truth = _exhaustive(step, [0], vocab, length)
    out = G.beam_search(step, torch.tensor([[0]]), length, num_beams=vocab ** (length - 1))
    assert [s.tolist() for s in out.sequences] == [h[1] for h in truth[:vocab ** (length - 1)]]
    assert torch.allclose(out.scores.double(), torch.tensor([h[0] for h in truth[:9]], dtype=torch.double), atol=1e-5)
    # a narrow beam is not exhaustive, but it can never beat the true optimum
    narrow = G.beam_search(step, torch.tensor([[0]]), length, num_beams=1)
    assert narrow.scores[0] <= truth[0][0] + 1e-6
    assert narrow.sequences[0].tolist() == G.generate(step, torch.tensor([[0]]), length)[0].tolist()


def test_beam_search_equals_exhaustive_search_with_eos():
    torch.manual_seed(1)
    vocab, length, eos = 3, 3, 2
    step = bigram_pair_step(torch.randn(vocab, vocab, vocab) * 2)
    truth = _exhaustive(step, [0], vocab, length, eos=eos, length_penalty=0.0)
    out = G.beam_search(step, torch.tensor([[0]]), length, num_beams=12, eos_token_id=eos,
                        pad_token_id=eos, length_penalty=0.0)
    got = [s[: 1 + int(n)].tolist() for s, n in zip(out.sequences, out.lengths)]
    assert got == [h[1] for h in truth[: len(got)]]
    assert any(h[1][-1] == eos and len(h[1]) < 1 + length for h in truth[: len(got)])   # early EOS exercised


def test_length_penalty_changes_the_winner():
    # from 0: EOS (2) right away has p=0.5; token 1 then EOS has 0.45*0.99
    table = torch.log(torch.tensor([[1e-6, 0.45, 0.5], [1e-6, 0.01, 0.99], [1 / 3, 1 / 3, 1 / 3]]))
    step = table_step(table)
    short = G.beam_search(step, torch.tensor([[0]]), 3, num_beams=2, eos_token_id=2, length_penalty=0.0)
    long = G.beam_search(step, torch.tensor([[0]]), 3, num_beams=2, eos_token_id=2, length_penalty=2.0)
    assert short.sequences[0, :2].tolist() == [0, 2] and int(short.lengths[0]) == 1
    assert long.sequences[0, :3].tolist() == [0, 1, 2] and int(long.lengths[0]) == 2


# ------------------------------------------------------------------------------ real models
def test_kv_cache_equals_recompute_for_course_gpt():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=30, block_size=48, n_layer=2, n_head=2, n_embd=32)).eval()
    ids = torch.randint(0, 30, (2, 6))
    assert torch.equal(G.generate(model, ids, 25, use_cache=True), G.generate(model, ids, 25, use_cache=False))
    a = G.beam_search(model, ids[:1], 8, num_beams=3, use_cache=True)
    b = G.beam_search(model, ids[:1], 8, num_beams=3, use_cache=False)
    assert torch.equal(a.sequences, b.sequences) and torch.allclose(a.scores, b.scores, atol=1e-5)
    # past block_size (48) both slide a window over the last 48 tokens and still agree
    long_cached = G.generate(model, ids, 50, use_cache=True)
    assert long_cached.shape == (2, 56) and torch.equal(long_cached, G.generate(model, ids, 50, use_cache=False))


def test_reorder_cache_nested():
    cache = (3, [(torch.arange(6.).view(3, 2), torch.arange(3.))])
    out = G.reorder_cache(cache, torch.tensor([2, 2, 0]))
    assert out[0] == 3 and out[1][0][1].tolist() == [2.0, 2.0, 0.0]


@pytest.mark.parametrize("prompt", [[1, 7, 9], [1, 30, 4, 4, 11], [1, 5]])
def test_greedy_and_beam_equal_transformers_generate(tiny_llama, prompt):
    ids = torch.tensor([prompt])
    ref = tiny_llama.generate(ids, max_new_tokens=8, do_sample=False, eos_token_id=2, pad_token_id=0)
    assert torch.equal(G.generate(tiny_llama, ids, 8, eos_token_id=2), ref)
    assert torch.equal(G.generate(tiny_llama, ids, 8, eos_token_id=2, use_cache=False), ref)
    for beams, lp in ((3, 1.0), (4, 0.5)):
        ref = tiny_llama.generate(ids, max_new_tokens=8, do_sample=False, num_beams=beams,
                                  num_return_sequences=beams, length_penalty=lp, eos_token_id=2,
                                  pad_token_id=0, output_scores=True, return_dict_in_generate=True)
        ours = G.beam_search(tiny_llama, ids, 8, num_beams=beams, length_penalty=lp, eos_token_id=2, pad_token_id=0)
        assert ours.sequences.shape == ref.sequences.shape
        for seq, ref_seq, n in zip(ours.sequences, ref.sequences, ours.lengths):
            # transformers pads with EOS when pad_token_id is 0 (``0 or eos``); compare the beams proper
            assert torch.equal(seq[: len(prompt) + n], ref_seq[: len(prompt) + n])
        assert torch.allclose(ours.scores, ref.sequences_scores, atol=1e-4)


def test_tiny_llama_beams_end_early_sometimes(tiny_llama):
    """Guard that the comparison above exercises EOS handling (some beam shorter than the max)."""
    lengths = [G.beam_search(tiny_llama, torch.tensor([p]), 8, num_beams=3, eos_token_id=2).lengths
               for p in ([1, 7, 9], [1, 30, 4, 4, 11], [1, 5])]
    assert any(int(n.min()) < 8 for n in lengths)


# ------------------------------------------------------------------------------ perplexity
def test_total_nll_sliding_window_is_exact_for_a_bigram_model():
    torch.manual_seed(0)
    table = torch.randn(7, 7)
    logits_fn = lambda w: table[w]                          # [1, L] -> [1, L, V]
    ids = torch.randint(0, 7, (50,))
    ref = -float(F.log_softmax(table[ids[:-1]], dim=-1).gather(1, ids[1:, None]).sum())
    for context, stride in ((50, None), (8, 4), (5, 1), (6, 5)):
        nll, n = G.total_nll(logits_fn, ids, context, stride)
        assert n == 49 and math.isclose(nll, ref, rel_tol=1e-5)
    assert math.isclose(G.bits_per_char(ref, 100), ref / math.log(2) / 100)
    with pytest.raises(ValueError, match="stride"):
        G.total_nll(logits_fn, ids, 8, 8)
    with pytest.raises(ValueError, match="n_chars"):
        G.bits_per_char(1.0, 0)


def test_total_nll_matches_full_context_gpt():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=20, block_size=64, n_layer=1, n_head=2, n_embd=16)).eval()
    ids = torch.randint(0, 20, (40,))
    with torch.no_grad():
        ref = model(ids[None, :-1], ids[None, 1:]).loss.item() * 39
    nll, n = G.total_nll(lambda w: model(w).logits, ids, context=64)
    assert n == 39 and math.isclose(nll, ref, rel_tol=1e-4)


# ------------------------------------------------------------------------------ SmolLM2 (real model)
@pytest.fixture(scope="module")
def smollm2():
    from course_utils import pretrained
    try:
        return pretrained.load_smollm2()
    except FileNotFoundError as err:  # pragma: no cover - the asset is present in CI
        pytest.skip(f"SmolLM2 asset not available ({err}); run `make lab` or `python -m course_utils.assets`")


def test_smollm2_greedy_beam_and_processors_equal_transformers(smollm2):
    from transformers.generation.logits_process import (RepetitionPenaltyLogitsProcessor,
                                                         TemperatureLogitsWarper, TopKLogitsWarper,
                                                         TopPLogitsWarper)
    model, tok = smollm2
    msgs = [{"role": "user", "content": "Name a colour."}]
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)["input_ids"]
    eos = tok.eos_token_id
    ref = model.generate(ids, max_new_tokens=6, do_sample=False, eos_token_id=eos, pad_token_id=eos)
    assert torch.equal(G.generate(model, ids, 6, eos_token_id=eos), ref)
    ref = model.generate(ids, max_new_tokens=4, do_sample=False, num_beams=2, num_return_sequences=2,
                         eos_token_id=eos, pad_token_id=eos, output_scores=True, return_dict_in_generate=True)
    ours = G.beam_search(model, ids, 4, num_beams=2, eos_token_id=eos, pad_token_id=eos)
    assert torch.equal(ours.sequences, ref.sequences)
    assert torch.allclose(ours.scores, ref.sequences_scores, atol=1e-4)
    logits, _ = G.step_fn(model)(ids, None)                         # real next-token logits [1, V]
    assert torch.equal(G.top_k_filter(logits, 40), TopKLogitsWarper(40)(ids, logits))
    assert torch.equal(G.top_p_filter(logits, 0.9), TopPLogitsWarper(0.9)(ids, logits))
    assert torch.equal(G.apply_temperature(logits, 0.7), TemperatureLogitsWarper(0.7)(ids, logits))
    assert torch.equal(G.apply_repetition_penalty(logits, ids, 1.3),
                       RepetitionPenaltyLogitsProcessor(1.3)(ids, logits.clone()))
