"""course_utils.quantization against the libraries: torchao's affine quantization (absmax per
tensor / per channel / per group), gguf's Q4_1, bitsandbytes' NF4; byte counts; the held-out
evaluation; bad input."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

from course_utils import quantization as Q


@pytest.fixture(scope="module")
def torchao_primitives():
    Q.quiet_quantization_imports()
    from torchao.quantization.quant_primitives import (MappingType, choose_qparams_affine, dequantize_affine,
                                                       quantize_affine)
    return MappingType, choose_qparams_affine, quantize_affine, dequantize_affine


def _weight(out_f=24, in_f=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(out_f, in_f, generator=g) * 0.05


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("granularity", ["tensor", "channel", "group16", "group32"])
def test_symmetric_quantization_equals_torchao(torchao_primitives, bits, granularity):
    MappingType, choose, quantize, dequantize = torchao_primitives
    w = _weight()
    qmax = 2 ** (bits - 1) - 1
    if granularity == "tensor":
        block, (q, scale) = tuple(w.shape), Q.absmax_quantize(w, bits)
        ours = Q.absmax_dequantize(q, scale)
    elif granularity == "channel":
        block, (q, scale) = (1, w.shape[1]), Q.absmax_quantize(w, bits, per_channel=True)
        ours = Q.absmax_dequantize(q, scale)
    else:
        g = int(granularity[5:])
        block = (1, g)
        q, scale, low = Q.groupwise_quantize(w, bits, g)
        assert low is None and scale.shape == (24, 64 // g)
        ours = Q.groupwise_dequantize(q, scale)
    s, z = choose(w, MappingType.SYMMETRIC, block, torch.int8, quant_min=-qmax, quant_max=qmax)
    assert torch.count_nonzero(z) == 0
    q_ref = quantize(w, block, s, z, torch.int8, -qmax, qmax)
    assert torch.equal(q, q_ref)
    torch.testing.assert_close(scale.reshape(s.shape), s)
    torch.testing.assert_close(ours, dequantize(q_ref, block, s, z, torch.int8, -qmax, qmax))
    assert int(q.abs().max()) == qmax                 # the largest weight lands on the end of the range


def test_asymmetric_groupwise_int4_is_gguf_q4_1():
    import gguf

    w = _weight(8, 96, seed=1)
    q, scale, low = Q.groupwise_quantize(w, 4, 32, symmetric=False, scale_dtype=torch.float16)
    assert q.dtype == torch.uint8 and int(q.max()) <= 15 and scale.dtype == torch.float16
    ref = gguf.quants.quantize(w.numpy(), gguf.GGMLQuantizationType.Q4_1)          # [8, 3 blocks x 20 bytes]
    ref_w = gguf.quants.dequantize(ref, gguf.GGMLQuantizationType.Q4_1)
    np.testing.assert_array_equal(Q.groupwise_dequantize(q, scale, low).numpy(), ref_w)
    # and the hand-written block decoder reads gguf's bytes to the same numbers
    for row, blk in [(0, 0), (3, 2), (7, 1)]:
        block = ref[row, blk * Q.Q4_1_BLOCK_BYTES:(blk + 1) * Q.Q4_1_BLOCK_BYTES]
        np.testing.assert_array_equal(Q.q4_1_dequantize_block(block), ref_w[row, blk * 32:(blk + 1) * 32])
        np.testing.assert_array_equal(Q.q4_1_dequantize_block(block.tobytes()), ref_w[row, blk * 32:(blk + 1) * 32])


def test_q4_1_block_layout_by_construction():
    d, m = np.float16(0.5), np.float16(-1.0)
    codes = np.arange(32) % 16
    packed = (codes[:16] | (codes[16:] << 4)).astype(np.uint8)
    block = np.concatenate([np.array([d]).view(np.uint8), np.array([m]).view(np.uint8), packed])
    np.testing.assert_array_equal(Q.q4_1_dequantize_block(block), 0.5 * codes.astype(np.float32) - 1.0)
    with pytest.raises(ValueError, match="20 bytes"):
        Q.q4_1_dequantize_block(block[:19])


def test_error_shrinks_with_bits_and_smaller_groups():
    w = _weight(32, 256, seed=2)
    err = {k: (Q.fake_quantize(w, *k) - w).pow(2).mean().item()
           for k in [(8, None), (4, None), (4, 128), (4, 32)]}
    assert err[(8, None)] < err[(4, 32)] < err[(4, 128)] < err[(4, None)]
    # absmax int8: each weight within half a step of the original
    q, scale = Q.absmax_quantize(w, 8, per_channel=True)
    assert ((Q.absmax_dequantize(q, scale) - w).abs() <= scale / 2 + 1e-7).all()


def test_nf4_matches_bitsandbytes_roundtrip_and_counts_bytes():
    w = _weight(16, 128, seed=3)
    w_hat, nbytes = Q.nf4_fake_quantize(w, blocksize=64)
    assert nbytes == 16 * 128 // 2 + (16 * 128 // 64) * 4
    # every block of 64 de-quantizes to at most 16 distinct values, its absmax kept exactly
    blocks, ref_blocks = w_hat.reshape(-1, 64), w.reshape(-1, 64)
    assert all(len(torch.unique(b)) <= 16 for b in blocks)
    torch.testing.assert_close(blocks.abs().amax(-1), ref_blocks.abs().amax(-1))
    assert (w_hat - w).abs().max() < 0.25 * w.abs().max()


def test_quantized_bytes_formula():
    assert Q.quantized_bytes((10, 64), 8) == 640 + 10 * 4
    assert Q.quantized_bytes((10, 64), 4, 32) == 320 + 20 * 4
    assert Q.quantized_bytes((10, 64), 4, 32, symmetric=False, scale_bytes=2) == 320 + 20 * 2 * 2  # Q4_1: 20 B / 32


@pytest.mark.parametrize("bits", [2, 3, 16, 8.0, True])
def test_bad_bits_name_the_argument(bits):
    with pytest.raises(ValueError, match="bits"):
        Q.absmax_quantize(_weight(), bits)
    with pytest.raises(ValueError, match="bits"):
        Q.groupwise_quantize(_weight(), bits, 16)


def test_bad_group_size_and_shapes():
    with pytest.raises(ValueError, match="group_size"):
        Q.groupwise_quantize(_weight(4, 60), 4, 32)
    with pytest.raises(ValueError, match="group_size"):
        Q.groupwise_quantize(_weight(), 4, 0)
    with pytest.raises(ValueError, match="2-D"):
        Q.groupwise_quantize(torch.randn(64), 4, 16)
    with pytest.raises(TypeError, match="floating-point"):
        Q.absmax_quantize(torch.arange(6).view(2, 3))
    with pytest.raises(ValueError, match="group_size"):
        Q.fake_quantize(_weight(), 4, None, symmetric=False)


class _TinyDecoder(nn.Module):
    """Shaped like a transformers causal LM: ``.model.layers`` of Linear layers, a tied head."""

    def __init__(self, V=11, C=32):
        super().__init__()
        self.model = nn.Module()
        self.model.embed_tokens = nn.Embedding(V, C)
        self.model.layers = nn.ModuleList([nn.Sequential(nn.Linear(C, 64, bias=False), nn.ReLU(),
                                                         nn.Linear(64, C, bias=False)) for _ in range(2)])
        self.lm_head = nn.Linear(C, V, bias=False)
        self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, ids):
        x = self.model.embed_tokens(ids)
        for layer in self.model.layers:
            x = x + layer(x)
        return type("Out", (), {"logits": self.lm_head(x)})()


def test_fake_quantize_linears_changes_only_block_linears_and_counts_bytes():
    torch.manual_seed(4)
    m = _TinyDecoder()
    emb = m.model.embed_tokens.weight.clone()
    assert set(Q.decoder_linears(m)) == {"model.layers.0.0", "model.layers.0.2", "model.layers.1.0", "model.layers.1.2"}
    fp32 = Q.weight_bytes(m)
    assert fp32 == 4 * (11 * 32 + 4 * 32 * 64)           # the tied head counted once
    total = Q.fake_quantize_linears_(m, lambda w: (Q.fake_quantize(w, 8), Q.quantized_bytes(tuple(w.shape), 8)))
    assert torch.equal(m.model.embed_tokens.weight, emb)
    assert total == 4 * 11 * 32 + 2 * (64 * 32 + 64 * 4) + 2 * (32 * 64 + 32 * 4)
    w = m.model.layers[0][0].weight
    assert len(torch.unique(w[0])) <= 255               # a row now holds int8 levels only


def test_weight_bytes_of_a_torchao_int8_model():
    tq = Q.quiet_quantization_imports()["torchao.quantization"]
    torch.manual_seed(5)
    m = _TinyDecoder()
    tq.quantize_(m, tq.Int8WeightOnlyConfig(), filter_fn=lambda mod, fqn: isinstance(mod, nn.Linear) and fqn != "lm_head")
    # int8 codes + one float32 scale and one int8 zero point (all 0) per output row of the four
    # block Linears; the embedding stays float32
    assert Q.weight_bytes(m) == 4 * 11 * 32 + 2 * (64 * 32 + 64 * 5) + 2 * (32 * 64 + 32 * 5)


class _CharTok:
    """A stand-in tokenizer: one token per character of 'abc'."""

    def __call__(self, text, add_special_tokens=False, return_tensors="pt"):
        return type("Enc", (), {"input_ids": torch.tensor([["abc".index(c) for c in text]])})()

    def decode(self, ids):
        return "".join("abc"[i] for i in ids)


def test_heldout_eval_bits_per_char_of_a_uniform_model():
    class Uniform(nn.Module):
        def forward(self, ids):
            return type("Out", (), {"logits": torch.zeros(*ids.shape, 3)})()

    r = Q.heldout_eval(Uniform(), _CharTok(), "abcabcabca" * 3, seq_len=8)
    assert r.n_tokens == 24 and r.n_chars == 21 and r.top1.shape == (21,)
    assert r.bits_per_char == pytest.approx(np.log2(3))
    assert r.tokens_per_s > 0
    with pytest.raises(ValueError, match="seq_len"):
        Q.heldout_eval(Uniform(), _CharTok(), "abc" * 2, seq_len=8)


def test_quiet_imports_drop_only_the_known_lines(caplog):
    Q.quiet_quantization_imports()
    import logging

    with caplog.at_level(logging.WARNING):
        logging.getLogger("torchao").warning("Failed to load /x/_C_mxfp8.so: no GPU")
        logging.getLogger("torchao").warning("something else")
    assert [r.getMessage() for r in caplog.records] == ["something else"]
