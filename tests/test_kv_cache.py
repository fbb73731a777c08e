"""course_utils.kv_cache: the static (pre-allocated) KV cache gives the dynamic cache's tokens
and logits, at batch 1 and batch > 1, through the model, generation.generate, beam search and
the decode loop the benchmark times; its step has fixed shapes (compiled: a slow test)."""
from __future__ import annotations

import pytest
import torch

from course_utils import generation as G
from course_utils.kv_cache import StaticKVCache, decode_step_fn, greedy_decode
from course_utils.models.gpt import GPT, GPTConfig

VOCAB = 29


def _gpt(block: int = 48, n_layer: int = 2, n_embd: int = 32, n_head: int = 4) -> GPT:
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=block, n_layer=n_layer, n_head=n_head, n_embd=n_embd))
    with torch.no_grad():  # larger weights than the init: sharper, less tied logits
        for p in model.parameters():
            p.mul_(4.0)
    return model.eval()


def _prompt(batch: int, length: int = 5, seed: int = 1) -> torch.Tensor:
    return torch.randint(VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_static_cache_logits_equal_a_full_recompute_step_by_step():
    model, ids = _gpt(), _prompt(3, 6)
    cache = StaticKVCache.for_model(model, batch_size=3)
    assert cache.max_len == 48 and len(cache) == 2 and cache.layers[0].keys.shape == (3, 4, 48, 8)
    assert cache.nbytes == 2 * 2 * 3 * 48 * 32 * 4
    with torch.no_grad():
        out = model(ids[:, :4], kv_cache=cache)                       # a prompt of 4 in one pass
        assert out.kv_cache is cache and cache.length == 4
        torch.testing.assert_close(out.logits, model(ids[:, :4]).logits, rtol=1e-5, atol=1e-5)
        for t in range(4, 6):                                         # then one token at a time
            step = model(ids[:, t:t + 1], kv_cache=cache).logits[:, -1]
            torch.testing.assert_close(step, model(ids[:, :t + 1]).logits[:, -1], rtol=1e-5, atol=1e-5)
        assert cache.length == 6
        # the attention weights of the static path hide the unwritten slots
        cache.reset()
        att = model(ids, kv_cache=cache, output_attentions=True).attentions[0]   # [B, H, T, max_len]
        assert att.shape == (3, 4, 6, 48) and float(att[..., 6:].abs().max()) == 0.0
        torch.testing.assert_close(att[..., :6], model(ids, output_attentions=True).attentions[0])


@pytest.mark.parametrize("batch", [1, 4])
def test_greedy_tokens_identical_to_the_dynamic_cache(batch):
    model, prompt = _gpt(), _prompt(batch)
    dynamic = greedy_decode(model, prompt, 40, cache="dynamic")
    static = greedy_decode(model, prompt, 40, cache="static")
    assert dynamic.shape == (batch, 45) and torch.equal(static, dynamic)
    assert len(set(dynamic[0, 5:].tolist())) > 3                     # not one token repeated
    # the same tokens as generation.generate with and without caches
    assert torch.equal(G.generate(model, prompt, 40, cache="static"), dynamic)
    assert torch.equal(G.generate(model, prompt, 40, use_cache=False), dynamic)


def test_generate_static_slides_past_block_size_and_beam_search_reorders_it():
    model, prompt = _gpt(block=16), _prompt(2)
    # past block_size both caches fall back to recomputing the last 16 tokens
    assert torch.equal(G.generate(model, prompt, 30, cache="static"), G.generate(model, prompt, 30))
    one = prompt[:1]
    a = G.beam_search(model, one, 8, num_beams=3, cache="static")
    b = G.beam_search(model, one, 8, num_beams=3, cache="dynamic")
    assert torch.equal(a.sequences, b.sequences)
    torch.testing.assert_close(a.scores, b.scores, rtol=1e-5, atol=1e-5)


def test_decode_step_reuses_one_cache_across_calls():
    model, prompt = _gpt(), _prompt(2)
    cache = StaticKVCache.for_model(model, batch_size=2, max_len=30)
    step = decode_step_fn(model, cache)                              # eager: the same function
    first = greedy_decode(model, prompt, 25, cache="static", step=step, static_cache=cache)
    address = cache.layers[0].keys.data_ptr()
    again = greedy_decode(model, prompt, 25, cache="static", step=step, static_cache=cache)
    assert torch.equal(first, again) and cache.layers[0].keys.data_ptr() == address   # written in place
    assert torch.equal(first, greedy_decode(model, prompt, 25))
    with pytest.raises(ValueError, match="needs batch 2 x 31"):
        greedy_decode(model, prompt, 26, cache="static", static_cache=cache)


def test_bad_inputs_say_what_is_wrong():
    model = _gpt(block=16)
    with pytest.raises(ValueError, match="batch_size"):
        StaticKVCache(2, 0, 4, 16, 8)
    with pytest.raises(ValueError, match="max_len"):
        StaticKVCache.for_model(model, 1, max_len=17)
    with pytest.raises(TypeError, match="course GPT"):
        StaticKVCache.for_model(torch.nn.Linear(2, 2), 1)
    cache = StaticKVCache.for_model(model, 1, max_len=8)
    with torch.no_grad():
        model(_prompt(1, 6), kv_cache=cache)
        with pytest.raises(ValueError, match="no room for 3"):
            model(_prompt(1, 3), kv_cache=cache)
        with pytest.raises(ValueError, match="batch 1"):
            model(_prompt(2, 1), kv_cache=cache)
        with pytest.raises(ValueError, match="StaticKVCache"):
            model(_prompt(1, 1), cache_position=torch.tensor([3]))
    with pytest.raises(ValueError, match="block_size=16"):
        greedy_decode(model, _prompt(1, 6), 11)
    with pytest.raises(ValueError, match="cache must be"):
        greedy_decode(model, _prompt(1), 3, cache="paged")
    with pytest.raises(ValueError, match="compile"):
        decode_step_fn(model, cache, compile="fast")
    with pytest.raises(ValueError, match="cache must be one of"):
        G.generate(model, _prompt(1), 3, cache="paged")
    with pytest.raises(ValueError, match="course GPT"):
        G.step_fn(torch.nn.Linear(2, 2), cache="static")


@pytest.mark.slow
def test_compiled_decode_step_gives_the_same_tokens_on_cpu():
    """The step compiled with fixed shapes (inductor on CPU; on CUDA the GPU check adds
    mode="reduce-overhead", a CUDA graph) decodes the same tokens without recompiling per token."""
    model, prompt = _gpt(n_layer=1), _prompt(2)
    cache = StaticKVCache.for_model(model, batch_size=2, max_len=25)
    step = decode_step_fn(model, cache, compile="always", mode="default")
    torch._dynamo.reset()
    with torch._dynamo.config.patch(error_on_recompile=True):
        out = greedy_decode(model, prompt, 20, cache="static", step=step, static_cache=cache)
    assert torch.equal(out, greedy_decode(model, prompt, 20))


def test_gpt_generate_with_a_static_cache():
    model, prompt = _gpt(block=16), _prompt(3)
    for n in (8, 30):                                               # within the block, and sliding past it
        assert torch.equal(model.generate(prompt, n, temperature=0, cache="static"),
                           model.generate(prompt, n, temperature=0))
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    assert torch.equal(model.generate(prompt, 9, top_k=5, generator=g1, cache="static"),
                       model.generate(prompt, 9, top_k=5, generator=g2))
    with pytest.raises(ValueError, match="cache must be"):
        model.generate(prompt, 2, cache="paged")
