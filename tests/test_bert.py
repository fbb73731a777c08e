"""Tests for course_utils.models.bert: shapes, padding mask, heads, CRF, MLM masking, save/load."""
from __future__ import annotations

import pytest
import torch

from course_utils.models.bert import (BertConfig, BertForMaskedLM, BertForSequenceClassification,
                                      BertForTokenClassification, BertModel, mask_tokens)


def cfg(**kw) -> BertConfig:
    d = dict(vocab_size=50, max_position_embeddings=20, n_layer=2, n_head=2, n_embd=32, dropout=0.0, num_labels=3)
    d.update(kw)
    return BertConfig(**d)


def test_shapes_and_attentions():
    torch.manual_seed(0)
    m = BertModel(cfg()).eval()
    ids = torch.randint(1, 50, (3, 7))
    out = m(ids, output_attentions=True)
    assert out.last_hidden_state.shape == (3, 7, 32) and out.pooler_output.shape == (3, 32)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (3, 2, 7, 7)
    torch.testing.assert_close(m(ids).last_hidden_state, out.last_hidden_state, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("output_attentions", [False, True])
def test_padding_does_not_change_real_tokens(output_attentions):
    torch.manual_seed(0)
    m = BertModel(cfg()).eval()
    ids = torch.randint(1, 50, (1, 5))
    short = m(ids, torch.ones(1, 5), output_attentions=output_attentions).last_hidden_state
    padded_ids = torch.cat([ids, torch.randint(1, 50, (1, 4))], dim=1)   # junk where the padding is
    mask = torch.tensor([[1] * 5 + [0] * 4])
    long = m(padded_ids, mask, output_attentions=output_attentions)
    torch.testing.assert_close(long.last_hidden_state[:, :5], short, atol=1e-5, rtol=1e-5)
    if output_attentions:
        assert long.attentions[0][..., 5:].abs().max() == 0
    # without the mask the junk does change them
    assert (m(padded_ids).last_hidden_state[:, :5] - short).abs().max() > 1e-3


def test_mlm_tied_and_loss():
    torch.manual_seed(0)
    m = BertForMaskedLM(cfg())
    assert m.decoder.weight is m.bert.word_embeddings.weight
    ids = torch.randint(5, 50, (2, 9))
    inp, labels = mask_tokens(ids, mask_token_id=4, vocab_size=50, special_ids=(0, 1, 2, 3), mlm_prob=0.5,
                              generator=torch.Generator().manual_seed(0))
    out = m(inp, labels=labels)
    assert out.logits.shape == (2, 9, 50) and out.loss.item() == pytest.approx(torch.log(torch.tensor(50.0)).item(), abs=1.0)


def test_mlm_labelled_only_same_loss_and_gradients():
    torch.manual_seed(0)
    m = BertForMaskedLM(cfg())
    ids = torch.randint(5, 50, (3, 11))
    inp, labels = mask_tokens(ids, mask_token_id=4, vocab_size=50, special_ids=(0, 1, 2, 3), mlm_prob=0.3,
                              generator=torch.Generator().manual_seed(1))
    full = m(inp, labels=labels)
    full.loss.backward()
    g_full = m.bert.word_embeddings.weight.grad.clone()
    m.zero_grad()
    sparse = m(inp, labels=labels, labelled_only=True)
    sparse.loss.backward()
    keep = labels != -100
    assert sparse.logits.shape == (int(keep.sum()), 50)
    torch.testing.assert_close(sparse.logits, full.logits[keep], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(sparse.loss, full.loss, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(m.bert.word_embeddings.weight.grad, g_full, atol=1e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="needs labels"):
        m(inp, labelled_only=True)


def test_pre_ln_variant():
    torch.manual_seed(0)
    post, pre = BertModel(cfg()), BertModel(cfg(pre_ln=True))
    assert post.ln_final is None and pre.ln_final is not None
    pre.load_state_dict({**post.state_dict(), **{k: v for k, v in pre.state_dict().items() if k.startswith("ln_final")}})
    # post-LN ends each layer with a LayerNorm; pre-LN adds to the residual stream untouched
    x = torch.randn(2, 6, 32) * 3 + 5
    assert post.layers[0](x, None)[0].mean(-1).abs().max() < 1e-4
    assert (pre.layers[0](x, None)[0].mean(-1) - x.mean(-1)).abs().max() < 0.1
    # ... so the pre-LN encoder needs its final LayerNorm (weight 1, bias 0 at init)
    ids = torch.randint(1, 50, (2, 6))
    torch.testing.assert_close(pre(ids).last_hidden_state.mean(-1), torch.zeros(2, 6), atol=1e-5, rtol=0)
    # the padding guarantee holds for pre-LN too
    short = pre(ids[:1, :4], torch.ones(1, 4)).last_hidden_state
    long = pre(ids[:1], torch.tensor([[1, 1, 1, 1, 0, 0]])).last_hidden_state
    torch.testing.assert_close(long[:, :4], short, atol=1e-5, rtol=1e-5)


def test_mask_tokens_proportions():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 1000, (64, 128))
    ids[:, 0] = 1  # a special token
    inp, labels = mask_tokens(ids, 3, 1000, special_ids=[1], mlm_prob=0.15, generator=g)
    picked = labels != -100
    assert not picked[:, 0].any()
    assert 0.13 < picked.float().mean().item() < 0.17
    assert torch.equal(labels[picked], ids[picked])
    frac_mask = (inp[picked] == 3).float().mean().item()
    frac_same = (inp[picked] == ids[picked]).float().mean().item()
    assert 0.76 < frac_mask < 0.84 and 0.08 < frac_same < 0.13
    assert torch.equal(inp[~picked], ids[~picked])


def test_sequence_classification_and_label_shape_error():
    m = BertForSequenceClassification(cfg())
    ids = torch.randint(1, 50, (4, 6))
    out = m(ids, labels=torch.tensor([0, 1, 2, 1]))
    assert out.logits.shape == (4, 3) and out.loss.ndim == 0
    with pytest.raises(ValueError, match="one class id per example"):
        m(ids, labels=ids)  # the classic bug: loss against input_ids


@pytest.mark.parametrize("use_crf", [False, True])
def test_token_classification_loss_and_decode(use_crf):
    torch.manual_seed(0)
    m = BertForTokenClassification(cfg(use_crf=use_crf))
    ids = torch.randint(1, 50, (2, 8))
    mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3])
    labels = torch.randint(0, 3, (2, 8))
    labels[:, 0] = -100          # [CLS]
    labels[1, 5:] = -100         # padding
    out = m(ids, mask, labels=labels)
    assert out.logits.shape == (2, 8, 3) and torch.isfinite(out.loss)
    tags = m.eval().decode(ids, mask, label_mask=labels != -100)
    assert [len(t) for t in tags] == [7, 4] and all(0 <= t < 3 for row in tags for t in row)
    if use_crf:  # a few steps of training lower the negative log-likelihood
        opt = torch.optim.Adam(m.parameters(), lr=1e-2)
        m.train()
        first = m(ids, mask, labels=labels).loss.item()
        for _ in range(15):
            loss = m(ids, mask, labels=labels).loss
            opt.zero_grad(); loss.backward(); opt.step()
        assert loss.item() < first


def test_save_load_mlm_into_heads(tmp_path, capsys):
    torch.manual_seed(0)
    mlm = BertForMaskedLM(cfg()).eval()
    mlm.save_pretrained(tmp_path / "mlm")
    ids = torch.randint(1, 50, (2, 6))
    again = BertForMaskedLM.from_pretrained(tmp_path / "mlm").eval()
    torch.testing.assert_close(again(ids).logits, mlm(ids).logits)
    assert again.loading_info == {"missing_keys": [], "unexpected_keys": []}
    clf = BertForTokenClassification.from_pretrained(tmp_path / "mlm", num_labels=7, use_crf=True).eval()
    assert set(clf.loading_info["missing_keys"]) >= {"classifier.weight", "classifier.bias"}
    assert "transform.weight" in clf.loading_info["unexpected_keys"]
    assert "newly initialised" in capsys.readouterr().out
    torch.testing.assert_close(clf.bert(ids).last_hidden_state, mlm.bert(ids).last_hidden_state)
    enc = BertModel.from_pretrained(tmp_path / "mlm", verbose=False)
    torch.testing.assert_close(enc.eval()(ids).last_hidden_state, mlm.bert(ids).last_hidden_state)


def test_bad_inputs():
    m = BertModel(cfg())
    with pytest.raises(ValueError, match="max_position_embeddings"):
        m(torch.ones(1, 21, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        m(torch.ones(1, 3))
    with pytest.raises(ValueError, match="attention_mask"):
        m(torch.ones(1, 3, dtype=torch.long), torch.ones(1, 4))
    with pytest.raises(ValueError, match="divisible"):
        cfg(n_embd=30, n_head=4)
    with pytest.raises(ValueError, match="mlm_prob"):
        mask_tokens(torch.ones(1, 3, dtype=torch.long), 1, 5, mlm_prob=0)


def test_mean_pooling_ignores_padding():
    torch.manual_seed(0)
    m = BertModel(cfg(pooling="mean", pre_ln=True)).eval()
    ids = torch.randint(5, 50, (1, 5))
    short = m(ids, torch.ones(1, 5))
    padded = m(torch.cat([ids, torch.randint(5, 50, (1, 3))], 1), torch.tensor([[1] * 5 + [0] * 3]))
    torch.testing.assert_close(padded.pooler_output, short.pooler_output, atol=1e-5, rtol=1e-5)
    expected = torch.tanh(m.pooler(short.last_hidden_state.mean(1)))
    torch.testing.assert_close(short.pooler_output, expected, atol=1e-6, rtol=1e-6)
    cls_model = BertModel(cfg())
    cls_model.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("ln_final")})
    assert not torch.allclose(cls_model.eval()(ids).pooler_output, short.pooler_output)
    with pytest.raises(ValueError, match="pooling"):
        cfg(pooling="max")


def _offset_logratios(att: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For attention rows m and m+1: log w[m, n] - log w[m, n+1] and the same one row and one key later.
    Equal when the scores depend on the offset n - m only (a Toeplitz score matrix)."""
    lw = att[0, 0].log()                                    # [T, T], layer-0 head-0 weights
    return (lw[:-1, :-2] - lw[:-1, 1:-1]), (lw[1:, 1:-1] - lw[1:, 2:])


def test_rope_attention_sees_offsets_only():
    torch.manual_seed(0)
    same_token = torch.full((1, 9), 7)                     # identical inputs: only positions tell them apart
    rope = BertModel(cfg(position_embedding_type="rope", pre_ln=True)).eval()
    assert rope.position_embeddings is None and not any("position" in k for k in rope.state_dict())
    a, b = _offset_logratios(rope(same_token, output_attentions=True).attentions[0])
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # learned absolute positions break the pattern (so the check above can fail)
    absolute = BertModel(cfg(pre_ln=True)).eval()
    a, b = _offset_logratios(absolute(same_token, output_attentions=True).attentions[0])
    assert (a - b).abs().max() > 1e-3
    # the fast path (SDPA) rotates the same way as the written-out one
    torch.testing.assert_close(rope(same_token).last_hidden_state,
                               rope(same_token, output_attentions=True).last_hidden_state, atol=1e-5, rtol=1e-5)


def test_rope_padding_save_load_and_config_errors(tmp_path):
    torch.manual_seed(0)
    m = BertForMaskedLM(cfg(position_embedding_type="rope", pre_ln=True)).eval()
    ids = torch.randint(5, 50, (1, 5))
    short = m(ids, torch.ones(1, 5)).logits
    padded = m(torch.cat([ids, torch.randint(5, 50, (1, 3))], 1), torch.tensor([[1] * 5 + [0] * 3])).logits
    torch.testing.assert_close(padded[:, :5], short, atol=1e-5, rtol=1e-5)
    m.save_pretrained(tmp_path / "rope")
    again = BertForMaskedLM.from_pretrained(tmp_path / "rope")
    assert again.config.position_embedding_type == "rope"
    assert again.loading_info == {"missing_keys": [], "unexpected_keys": []}
    torch.testing.assert_close(again.eval()(ids).logits, m(ids).logits)
    with pytest.raises(ValueError, match="position_embedding_type"):
        cfg(position_embedding_type="alibi")
    with pytest.raises(ValueError, match="even head size"):
        cfg(position_embedding_type="rope", n_embd=30, n_head=2)   # head size 15
