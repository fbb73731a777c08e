"""Chapter 11's notebook and the package agree: the pieces of the Llama block written out on screen
(executed from the notebook itself) give the numbers of course_utils.models.llama."""
from __future__ import annotations

import pytest
import torch

from course_utils.models import llama as L
from tests.nbsource import notebook_namespace

NB = "11_modern_decoder.ipynb"


@pytest.fixture(scope="module")
def ns():
    return notebook_namespace(NB, ["rms_norm", "rope_cos_sin", "rotate", "swiglu", "repeat_kv_by_hand",
                                   "gqa_attention"])


def cfg(n_kv: int = 2) -> L.LlamaConfig:
    return L.LlamaConfig(vocab_size=50, block_size=32, n_layer=1, n_head=4, n_kv_heads=n_kv, n_embd=32,
                         intermediate_size=40, rope_theta=500.0, rms_norm_eps=1e-6)


def test_rms_norm(ns):
    norm = L.RMSNorm(16, eps=1e-6)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(3, 4, 16) * 2 + 0.5
    torch.testing.assert_close(ns["rms_norm"](x, norm.weight, 1e-6), norm(x))


def test_rope(ns):
    pos = torch.tensor([[0, 1, 2, 9], [0, 0, 1, 2]])
    cos, sin = ns["rope_cos_sin"](pos, 8, 500.0)
    ref_cos, ref_sin = L.RotaryEmbedding(8, 500.0)(pos)
    torch.testing.assert_close(cos, ref_cos)
    torch.testing.assert_close(sin, ref_sin)
    q, k = torch.randn(2, 4, 4, 8), torch.randn(2, 2, 4, 8)
    rq, rk = L.apply_rotary(q, k, cos, sin)
    torch.testing.assert_close(ns["rotate"](q, cos, sin), rq)
    torch.testing.assert_close(ns["rotate"](k, cos, sin), rk)


def test_swiglu(ns):
    c = cfg()
    mlp = L.SwiGLU(c.n_embd, c.intermediate_size)
    x = torch.randn(2, 5, 32)
    torch.testing.assert_close(ns["swiglu"](x, mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight), mlp(x))


@pytest.mark.parametrize("n_kv", [4, 2, 1])
def test_repeat_kv_and_attention(ns, n_kv):
    x = torch.randn(2, 3, 5, 8)
    torch.testing.assert_close(ns["repeat_kv_by_hand"](x, 4 // n_kv), L.repeat_kv(x, 4 // n_kv))
    c = cfg(n_kv)
    attn = L.Attention(c).eval()
    h = torch.randn(2, 6, 32)
    pos = torch.arange(6)[None].expand(2, 6)
    cos, sin = L.RotaryEmbedding(c.head_dim, c.rope_theta)(pos)
    with torch.no_grad():
        want, _ = attn(h, None, (cos, sin))
        got = ns["gqa_attention"](h, attn, cos, sin, c.n_head, n_kv)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
