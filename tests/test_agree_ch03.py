"""Chapter 3's notebook and course_utils.attention compute the same thing on the same inputs.

The notebook's own definitions are executed (tests/nbsource.py), never copied here.
"""
from __future__ import annotations

import pytest
import torch

from course_utils import attention as A
from tests.nbsource import notebook_namespace

NOTEBOOK = "03_attention_math.ipynb"
NAMES = ["scaled_dot_product_attention", "causal_mask", "padding_mask", "MultiHeadAttention",
         "sinusoidal_positions", "rope_cos_sin", "rotate_half", "apply_rope"]


@pytest.fixture(scope="module")
def nb() -> dict:
    return notebook_namespace(NOTEBOOK, NAMES)


def test_attention_and_masks_agree(nb):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 6, 8, generator=g) for _ in range(3))
    am = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    assert torch.equal(nb["causal_mask"](6), A.causal_mask(6))
    assert torch.equal(nb["causal_mask"](3, 5), A.causal_mask(3, 5))
    assert torch.equal(nb["padding_mask"](am), A.padding_mask(am))
    mask = A.causal_mask(6) & A.padding_mask(am)
    float_mask = torch.zeros(6, 6).masked_fill(~A.causal_mask(6), float("-inf"))
    for kwargs in ({}, {"is_causal": True}, {"scale": 0.5}, {"mask": mask}, {"mask": float_mask}):
        ours = nb["scaled_dot_product_attention"](q, k, v, **kwargs)
        pkg = A.scaled_dot_product_attention(q, k, v, **kwargs)
        for a, b in zip(ours, pkg):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_multi_head_attention_agrees(nb):
    torch.manual_seed(1)
    notebook_mha = nb["MultiHeadAttention"](32, 4)
    pkg = A.MultiHeadAttention(32, 4)
    pkg.load_state_dict(notebook_mha.state_dict())    # same parameter names and shapes
    x, mem = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
    for args, kwargs in (((x,), {}), ((x,), {"is_causal": True}), ((x, mem), {}),
                         ((x,), {"attn_mask": A.causal_mask(5)})):
        for a, b in zip(notebook_mha(*args, **kwargs), pkg(*args, **kwargs)):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_positions_agree(nb):
    torch.testing.assert_close(nb["sinusoidal_positions"](40, 16), A.sinusoidal_positions(40, 16))
    for base in (10000.0, 100000.0):
        for a, b in zip(nb["rope_cos_sin"](12, 8, base), A.rope_cos_sin(12, 8, base)):
            torch.testing.assert_close(a, b)
    x = torch.randn(2, 12, 8)
    cos, sin = A.rope_cos_sin(12, 8)
    torch.testing.assert_close(nb["rotate_half"](x), A.rotate_half(x))
    torch.testing.assert_close(nb["apply_rope"](x, cos, sin), A.apply_rope(x, cos, sin))
