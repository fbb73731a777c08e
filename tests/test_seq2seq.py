"""Tests for course_utils.models.seq2seq: shapes, masks, cross-attention, greedy decoding, learning."""
from __future__ import annotations

import pytest
import torch

from course_utils.models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer, sinusoidal_positions


def model(**kw) -> Seq2SeqTransformer:
    torch.manual_seed(0)
    d = dict(src_vocab_size=20, tgt_vocab_size=22, max_len=16, n_layer=2, n_head=2, n_embd=32)
    d.update(kw)
    return Seq2SeqTransformer(Seq2SeqConfig(**d)).eval()


def test_shapes_and_cross_attention():
    m = model()
    src, tgt = torch.randint(0, 20, (3, 9)), torch.randint(0, 22, (3, 5))
    out = m(src, tgt, labels=tgt, output_attentions=True)
    assert out.logits.shape == (3, 5, 22) and out.loss.ndim == 0
    assert len(out.cross_attentions) == 2 and out.cross_attentions[0].shape == (3, 2, 5, 9)
    torch.testing.assert_close(out.cross_attentions[0].sum(-1), torch.ones(3, 2, 5))
    torch.testing.assert_close(m(src, tgt).logits, out.logits, atol=1e-5, rtol=1e-5)


def test_decoder_is_causal_and_src_padding_ignored():
    m = model()
    src, tgt = torch.randint(0, 20, (1, 6)), torch.randint(0, 22, (1, 5))
    full = m(src, tgt).logits
    torch.testing.assert_close(m(src, tgt[:, :3]).logits, full[:, :3], atol=1e-5, rtol=1e-5)
    padded = torch.cat([src, torch.randint(0, 20, (1, 3))], 1)
    mask = torch.tensor([[1] * 6 + [0] * 3])
    out = m(padded, tgt, src_mask=mask, output_attentions=True)
    torch.testing.assert_close(out.logits, full, atol=1e-5, rtol=1e-5)
    assert out.cross_attentions[1][..., 6:].abs().max() == 0


def test_greedy_decode_matches_argmax_and_learns_copy():
    m = model(dropout=0.0).train()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-2)
    g = torch.Generator().manual_seed(0)
    src = torch.randint(3, 20, (8, 5), generator=g)   # fit one batch of a copy task: target = BOS + source
    tgt = torch.cat([torch.ones(8, 1, dtype=torch.long), src], 1)
    for _ in range(40):
        loss = m(src, tgt[:, :-1], labels=tgt[:, 1:]).loss
        opt.zero_grad(); loss.backward(); opt.step()
    assert loss.item() < 1.0  # ln(22) = 3.1 at the start
    assert torch.equal(m.greedy_decode(src, bos_id=1, max_len=6), tgt)
    src = torch.randint(3, 20, (4, 5), generator=g)
    out = m.greedy_decode(src, bos_id=1, max_len=6)
    assert out.shape == (4, 6) and bool((out[:, 0] == 1).all())
    assert torch.equal(m(src, out[:, :-1]).logits.argmax(-1), out[:, 1:])


def test_sinusoidal_and_save_load(tmp_path):
    pe = sinusoidal_positions(10, 8)
    assert pe.shape == (10, 8) and torch.allclose(pe[0, 1::2], torch.ones(4))
    m = model()
    m.save_pretrained(tmp_path / "s2s")
    m2 = Seq2SeqTransformer.from_pretrained(tmp_path / "s2s").eval()
    src, tgt = torch.randint(0, 20, (2, 4)), torch.randint(0, 22, (2, 3))
    torch.testing.assert_close(m2(src, tgt).logits, m(src, tgt).logits)


def test_bad_inputs():
    m = model()
    with pytest.raises(ValueError, match="max_len"):
        m(torch.zeros(1, 17, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        m(torch.zeros(1, 3), torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="outside"):
        m(torch.zeros(1, 3, dtype=torch.long), torch.full((1, 2), 22))
    with pytest.raises(ValueError, match="divisible"):
        Seq2SeqConfig(n_embd=30, n_head=4)
