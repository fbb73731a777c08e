"""Chapter 6 writes decoding out on screen; course_utils.generation holds the versions later chapters
import. These tests run the notebook's own definitions and compare them with the package's."""
from __future__ import annotations

import pytest
import torch

from course_utils import generation
from tests.nbsource import notebook_namespace

NAMES = ["top_k_filter", "top_p_filter", "apply_repetition_penalty", "greedy_decode", "beam_search_simple"]


@pytest.fixture(scope="module")
def nb():
    return notebook_namespace("06_generation.ipynb", NAMES)


@pytest.mark.parametrize("seed", [0, 1])
def test_filters_and_penalty_agree(nb, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(4, 30, generator=g) * 2
    ids = torch.randint(0, 30, (4, 7), generator=g)
    for k in (1, 3, 30, 50):
        assert torch.equal(nb["top_k_filter"](logits, k), generation.top_k_filter(logits, k))
    for p in (0.05, 0.5, 0.9, 1.0):
        assert torch.equal(nb["top_p_filter"](logits, p), generation.top_p_filter(logits, p))
    for pen in (0.7, 1.0, 1.8):
        assert torch.equal(nb["apply_repetition_penalty"](logits, ids, pen),
                           generation.apply_repetition_penalty(logits, ids, pen))
    with pytest.raises(ValueError):
        nb["top_p_filter"](logits, 0.0)
    with pytest.raises(ValueError):
        nb["top_k_filter"](logits, 0)


def test_greedy_and_beam_agree(nb):
    torch.manual_seed(0)
    table = torch.randn(6, 6, 6) * 2                 # logits depend on the last two tokens

    def step(ids, cache):
        prev = ids[:, -2] if ids.shape[1] > 1 else ids[:, -1]
        return table[prev, ids[:, -1]], None

    start = torch.tensor([[0, 3]])
    assert torch.equal(nb["greedy_decode"](step, start, 6), generation.generate(step, start, 6))
    for beams in (1, 2, 4):
        seqs, scores = nb["beam_search_simple"](step, start, 4, num_beams=beams)
        ref = generation.beam_search(step, start, 4, num_beams=beams, length_penalty=0.0)
        assert torch.equal(seqs, ref.sequences)
        assert torch.allclose(scores, ref.scores, atol=1e-5)


def test_kv_cache_formula_matches_a_gqa_model_cache():
    """Chapter 6's 2·L·n_kv·d_head count == the bytes of the DynamicCache a GQA Llama fills (random weights)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    f = notebook_namespace("06_generation.ipynb", ["kv_cache_bytes_per_token"])["kv_cache_bytes_per_token"]
    for n_kv in (1, 2, 4):                       # multi-query, grouped-query, multi-head
        cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                          num_attention_heads=4, num_key_value_heads=n_kv, max_position_embeddings=64)
        model = LlamaForCausalLM(cfg).eval()
        ids = torch.randint(0, 50, (1, 9))
        with torch.no_grad():
            cache = model(ids, use_cache=True).past_key_values
        measured = sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values))
        assert measured == 9 * f(3, n_kv, 32 // 4, 4)
