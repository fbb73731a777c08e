"""course_utils.contrastive: InfoNCE, inverse-cloze pairs, in-batch-negatives training, retrieval scores."""
from __future__ import annotations

import math

import pytest
import torch
from transformers import BertConfig, BertModel

from course_utils import contrastive, rag
from course_utils.contrastive import ict_pairs, info_nce, pair_recall, train_in_batch_negatives


def test_info_nce_is_cross_entropy_over_cosines() -> None:
    g = torch.Generator().manual_seed(0)
    q, p = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    qn, pn = q / q.norm(dim=1, keepdim=True), p / p.norm(dim=1, keepdim=True)
    expected = 0.0
    for i in range(5):                      # -log softmax of the positive, by hand
        logits = [float(qn[i] @ pn[j]) / 0.1 for j in range(5)]
        expected -= logits[i] - math.log(sum(math.exp(x) for x in logits))
    assert float(info_nce(q, p, 0.1)) == pytest.approx(expected / 5, rel=1e-5)


def test_info_nce_properties() -> None:
    e = torch.eye(4)
    # perfectly separated pairs: the loss falls towards 0 as the temperature falls
    assert float(info_nce(e, e, 0.01)) < 1e-6 < float(info_nce(e, e, 1.0))
    # identical vectors for every pair: the positive is one of B equal choices -> log B
    same = torch.ones(4, 3)
    assert float(info_nce(same, same, 0.05)) == pytest.approx(math.log(4), rel=1e-6)
    assert float(info_nce(2 * e, 5 * e, 0.1)) == pytest.approx(float(info_nce(e, e, 0.1)))   # scale-free


@pytest.mark.parametrize("temperature", [0, -1, "0.1", None])
def test_info_nce_bad_temperature(temperature) -> None:
    with pytest.raises(ValueError, match="temperature"):
        info_nce(torch.eye(2), torch.eye(2), temperature)


def test_info_nce_bad_shapes() -> None:
    with pytest.raises(ValueError, match="same shape"):
        info_nce(torch.zeros(3, 4), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="same shape"):
        info_nce(torch.zeros(4), torch.zeros(4))


def _passages() -> list[rag.Passage]:
    rows = [{"play": "p", "act": "1", "scene": str(s), "speaker": "A" if i % 2 else "BOB",
             "text": f"line number {i} of scene {s} with words\nsecond line {i} of scene {s} goes on"}
            for s in range(6) for i in range(3)]
    return rag.chunk_speeches(rows, max_words=40)


def test_ict_pairs_take_a_line_out() -> None:
    passages = _passages()
    pairs = ict_pairs(passages, 4, seed=1)
    assert len(pairs) == 4 and len({b for _, b in pairs}) == 4
    for query, rest in pairs:
        assert query not in rest                                    # removed from its passage
        source = next(p for p in passages if all(line in p.text for line in rest.splitlines()))
        assert query in source.text and not query.startswith(("A:", "BOB:"))
    assert ict_pairs(passages, 4, seed=1) == pairs                  # seeded
    with pytest.raises(ValueError, match="only"):
        ict_pairs(passages, 1000)
    with pytest.raises(ValueError, match="positive"):
        ict_pairs(passages, 0)


def test_plays_split() -> None:
    assert set(contrastive.qa_plays()) == {play for _, play, _ in rag.SHAKESPEARE_QA}


@pytest.fixture(scope="module")
def tiny():
    from course_utils import pretrained
    _, tok = pretrained.load_minilm()
    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=64))
    return model, tok


def test_training_lowers_the_loss_and_leaves_the_input_model(tiny) -> None:
    model, tok = tiny
    pairs = [(f"query about topic {w}", f"a passage all about {w} and {w}") for w in
             ("apples", "ships", "kings", "storms", "ghosts", "swords", "letters", "rings")]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trained, losses = train_in_batch_negatives(model, tok, pairs, steps=30, batch_size=8, temperature=0.1, lr=3e-3,
                                               max_length=16, progress=False)
    assert len(losses) == 30 and losses[-1] < losses[0] - 0.5
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())   # a trained copy
    assert pair_recall(trained, tok, pairs, k=1, max_length=16) > pair_recall(model, tok, pairs, k=1, max_length=16)
    assert pair_recall(model, tok, pairs, k=len(pairs)) == 1.0                       # k = all: always found
    with pytest.raises(ValueError, match="batch_size"):
        train_in_batch_negatives(model, tok, pairs, steps=1, batch_size=9)
    with pytest.raises(ValueError, match="steps"):
        train_in_batch_negatives(model, tok, pairs, steps=0)


def test_retrieval_scores_uses_rag_evaluation(tiny) -> None:
    model, tok = tiny
    passages = [rag.Passage(i, "p", "1", "1", "A", t) for i, t in
                enumerate(["the ghost walks at night", "a ring of gold", "storms at sea"])]
    qa = [("who walks at night", "p", "ghost walks"), ("what is gold", "p", "ring of gold")]
    scores = contrastive.retrieval_scores(model, tok, passages, qa, ks=(1, 3), max_length=16)
    assert set(scores) == {"recall@1", "recall@3", "MRR"} and scores["recall@3"] == 1.0
    assert 1 / 3 <= scores["MRR"] <= 1.0


def test_eval_passages_keeps_every_gold_passage() -> None:
    small = contrastive.eval_passages(n_distractors=20, seed=0)
    for _, _, quote in rag.SHAKESPEARE_QA:
        assert rag.gold_ids(small, quote)
    gold = set().union(*(rag.gold_ids(small, q) for _, _, q in rag.SHAKESPEARE_QA))
    assert len(small) == len(gold) + 20
    with pytest.raises(ValueError, match="n_distractors"):
        contrastive.eval_passages(n_distractors=-1)
