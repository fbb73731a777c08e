"""Chapter 11's mixture-of-experts and quantization cells agree with the package: the router,
the balancing loss, absmax / group-wise quantization and the by-hand Q4_1 decoder, executed
from the notebook itself, give course_utils.moe's and course_utils.quantization's numbers."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from course_utils import moe
from course_utils import quantization as Q
from tests.nbsource import notebook_namespace

NOTEBOOK = "11_modern_decoder.ipynb"
NAMES = ["route_top_k", "load_balancing_loss", "absmax_quantize", "groupwise_quantize", "dequantize",
         "q4_1_dequantize_block"]


@pytest.fixture(scope="module")
def ns():
    return notebook_namespace(NOTEBOOK, NAMES)


@pytest.mark.parametrize("top_k", [1, 2, 4])
def test_router_and_balancing_loss_match_package(ns, top_k):
    torch.manual_seed(top_k)
    logits = torch.randn(40, 6) * 2
    ours = ns["route_top_k"](logits, top_k)
    ref = moe.route_top_k(logits, top_k)
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(ns["load_balancing_loss"](ours[0], ours[2]), moe.load_balancing_loss(*ref[::2]))


@pytest.mark.parametrize("bits", [8, 4])
def test_quantizers_match_package(ns, bits):
    torch.manual_seed(bits)
    w = torch.randn(12, 64) * 0.1
    w[2, 5] = 3.0
    for per_channel in (False, True):
        q, s = ns["absmax_quantize"](w, bits, per_channel)
        q_ref, s_ref = Q.absmax_quantize(w, bits, per_channel)
        assert torch.equal(q, q_ref)
        torch.testing.assert_close(s, s_ref)
        torch.testing.assert_close(ns["dequantize"](q, s), Q.absmax_dequantize(q_ref, s_ref))
    for g in (16, 32, 64):
        q, s = ns["groupwise_quantize"](w, bits, g)
        q_ref, s_ref, low = Q.groupwise_quantize(w, bits, g)
        assert low is None and torch.equal(q, q_ref)
        torch.testing.assert_close(s, s_ref)
        torch.testing.assert_close(ns["dequantize"](q, s), Q.groupwise_dequantize(q_ref, s_ref))


def test_q4_1_block_decoder_matches_package_and_gguf(ns):
    import gguf

    rng = np.random.default_rng(0)
    blocks = gguf.quants.quantize(rng.normal(0, 0.05, (4, 64)).astype(np.float32), gguf.GGMLQuantizationType.Q4_1)
    ref = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.Q4_1)
    for row in range(4):
        for b in range(2):
            raw = blocks[row, 20 * b:20 * (b + 1)]
            np.testing.assert_array_equal(ns["q4_1_dequantize_block"](raw), Q.q4_1_dequantize_block(raw))
            np.testing.assert_array_equal(ns["q4_1_dequantize_block"](raw), ref[row, 32 * b:32 * (b + 1)])
