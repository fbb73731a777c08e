"""Chapter 4's notebook and the package agree: the notebook's hand-written definitions
(executed from the notebook itself) give the package's numbers on the same inputs."""
from __future__ import annotations

import pytest
import torch

from course_utils.models.gpt import GPT, GPTConfig
from tests.nbsource import notebook_namespace

NB = "04_transformer.ipynb"


@pytest.fixture(scope="module")
def ns():
    return notebook_namespace(NB, ["layer_norm", "block_forward", "gpt_param_count", "gpt_flops_per_token"])


@pytest.mark.parametrize("bias", [True, False])
def test_block_forward_matches_package_block(ns, bias):
    torch.manual_seed(0)
    m = GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=1, n_head=4, n_embd=32, bias=bias)).eval()
    with torch.no_grad():
        for p in m.parameters():          # random LayerNorm parameters too
            p.add_(0.05 * torch.randn_like(p))
        x = torch.randn(2, 9, 32)
        torch.testing.assert_close(ns["block_forward"](m.transformer.h[0], x), m.transformer.h[0](x)[0],
                                   atol=1e-5, rtol=1e-5)
        ln = m.transformer.h[0].ln_1
        torch.testing.assert_close(ns["layer_norm"](x, ln), ln(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("V,T,L,C,bias", [(65, 64, 4, 128, True), (100, 8, 3, 48, False), (50257, 1024, 12, 768, True)])
def test_param_and_flop_formulas_match_package(ns, V, T, L, C, bias):
    with torch.device("meta"):
        m = GPT(GPTConfig(vocab_size=V, block_size=T, n_layer=L, n_head=4, n_embd=C, bias=bias))
    assert ns["gpt_param_count"](V, T, L, C, bias) == m.num_params(non_embedding=False)
    for training in (True, False):
        assert ns["gpt_flops_per_token"](V, T, L, C, training) == m.estimate_flops_per_token(T, training=training)
