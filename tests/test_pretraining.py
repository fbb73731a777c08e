"""Tests of course_utils.pretraining and course_utils.zh_mlm (tiny recipes, synthetic data)."""
from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from course_utils import pretraining
from course_utils.pretraining import Recipe
from course_utils.profiles import PROFILE_NAMES
from course_utils.zh_mlm import (
    ZH_SPECIALS, MLMBlockSampler, count_chars, fill_mask, lines_to_ids, load_zh_tokenizer, make_zh_tokenizer,
    unk_rate, zh_vocab,
)

ZH_TEXTS = ["中华人民共和国成立了。", "北京是中国的首都。", "今天天气很好，我们去公园。", "１９９８年的人民日报。"] * 20


@pytest.fixture(autouse=True)
def isolated_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "data"))
    yield tmp_path / "data"


@pytest.fixture()
def zh_tok():
    return make_zh_tokenizer(zh_vocab(count_chars(ZH_TEXTS), min_freq=1), model_max_length=64)


# ------------------------------------------------------------------ recipes and folders
@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_recipes_are_valid(profile: str) -> None:
    from course_utils.models.gpt import GPTConfig

    gpt = pretraining.CHAR_GPT_RECIPES[profile]
    gpt.train_config()
    GPTConfig(vocab_size=80, **gpt.model)
    from course_utils.models.bert import BertConfig

    bert = pretraining.ZH_BERT_RECIPES[profile]
    bert.train_config()
    BertConfig(vocab_size=5000, **bert.model)
    assert bert.model["max_position_embeddings"] >= bert.extra["seq_len"]
    assert {"max_rows"} <= set(gpt.extra) and {"seq_len", "min_freq", "max_lines"} <= set(bert.extra)


def test_ci_recipes_are_tiny() -> None:
    assert pretraining.CHAR_GPT_RECIPES["ci"].train["max_steps"] <= 100
    assert pretraining.ZH_BERT_RECIPES["ci"].train["max_steps"] <= 100


# ------------------------------------------------------------------ char GPT: train once, then load
def _tiny_char_gpt(monkeypatch: pytest.MonkeyPatch):
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n\n" * 30
    from course_utils.tokenization import CharTokenizer

    tok = CharTokenizer.from_text(text)
    ids = torch.tensor(tok.encode(text), dtype=torch.long)
    monkeypatch.setitem(pretraining.CHAR_GPT_RECIPES, "ci", Recipe(
        model=dict(n_layer=1, n_head=2, n_embd=16, block_size=8, dropout=0.0),
        train=dict(max_steps=6, lr=1e-2, warmup_steps=1, batch_size=4, eval_interval=3, eval_iters=2),
        extra=dict(max_rows=None)))
    monkeypatch.setattr(pretraining, "char_gpt_data", lambda tokenizer=None, max_rows=None: (tok, ids, ids))
    return tok


def test_load_or_pretrain_char_gpt_trains_once(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    tok = _tiny_char_gpt(monkeypatch)
    model, tok1 = pretraining.load_or_pretrain_char_gpt("ci", progress=False)
    assert "training one" in capsys.readouterr().out
    folder = pretraining.model_dir(pretraining.CHAR_GPT_NAME, "ci")
    assert pretraining.is_complete(folder)

    def must_not_train(*a, **k):
        raise AssertionError("a saved model should be loaded, not retrained")

    monkeypatch.setattr(pretraining, "pretrain_char_gpt", must_not_train)
    again, tok2 = pretraining.load_or_pretrain_char_gpt("ci")
    for p, q in zip(model.parameters(), again.parameters()):
        assert torch.equal(p, q)
    assert tok2.encode("hear me") == tok.encode("hear me") == tok1.encode("hear me")
    out = again.generate(torch.tensor([tok2.encode("First")]), 5, temperature=0)
    assert out.shape == (1, 10)


def test_pretrain_char_gpt_learns(monkeypatch: pytest.MonkeyPatch) -> None:
    _tiny_char_gpt(monkeypatch)
    _, _, hist = pretraining.pretrain_char_gpt("ci", progress=False, max_steps=30, eval_interval=10)
    assert hist["val_loss"][-1] < hist["val_loss"][0] - 0.5


# ------------------------------------------------------------------ Chinese tokenizer
def test_zh_vocab_order_and_min_freq() -> None:
    counts = count_chars(["aab", "ab c"])
    assert zh_vocab(counts, 1) == list(ZH_SPECIALS) + ["a", "b", "c"]
    assert zh_vocab(counts, 2) == list(ZH_SPECIALS) + ["a", "b"]
    with pytest.raises(ValueError, match="min_freq"):
        zh_vocab(counts, 0)


def test_zh_tokenizer_characters_specials_and_nfkc(zh_tok, tmp_path: Path) -> None:
    enc = zh_tok("１９９８年，北京")
    toks = zh_tok.convert_ids_to_tokens(enc["input_ids"])
    assert toks == ["[CLS]", "1", "9", "9", "8", "年", ",", "北", "京", "[SEP]"]
    assert zh_tok.convert_ids_to_tokens(zh_tok("北", "京")["input_ids"]) == ["[CLS]", "北", "[SEP]", "京", "[SEP]"]
    assert zh_tok("龘")["input_ids"][1] == zh_tok.unk_token_id
    assert zh_tok.decode(zh_tok("北京是中国的首都")["input_ids"], skip_special_tokens=True) == "北京是中国的首都"
    batch = zh_tok(["北京", "中国人民"], padding=True)
    assert batch["attention_mask"] == [[1, 1, 1, 1, 0, 0], [1] * 6]
    assert [zh_tok.convert_tokens_to_ids(t) for t in ZH_SPECIALS] == [0, 1, 2, 3, 4]
    zh_tok.save_pretrained(str(tmp_path))
    again = load_zh_tokenizer(tmp_path)
    assert again("今天天气很好")["input_ids"] == zh_tok("今天天气很好")["input_ids"]
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_zh_tokenizer(tmp_path / "nothing")
    with pytest.raises(ValueError, match="start with"):
        make_zh_tokenizer(["a", "b"])


def test_unk_rate_and_lines_to_ids(zh_tok) -> None:
    assert unk_rate(zh_tok, ["北京"]) == 0.0
    assert unk_rate(zh_tok, ["北龘"]) == 0.5
    ids = lines_to_ids(zh_tok, ["北京", "", "中国"])
    assert zh_tok.convert_ids_to_tokens(ids.tolist()) == ["北", "京", "[SEP]", "中", "国", "[SEP]"]


# ------------------------------------------------------------------ MLM batches and fill-mask
def test_mlm_sampler_frames_masks_and_resumes(zh_tok) -> None:
    pytest.importorskip("course_utils.models.bert")
    ids = lines_to_ids(zh_tok, ZH_TEXTS)
    s = MLMBlockSampler(ids, zh_tok, seq_len=16, batch_size=8, seed=0)
    b = s.next_batch()
    assert b["input_ids"].shape == b["labels"].shape == b["attention_mask"].shape == (8, 16)
    assert (b["input_ids"][:, 0] == zh_tok.cls_token_id).all() and (b["input_ids"][:, -1] == zh_tok.sep_token_id).all()
    special = torch.isin(torch.where(b["labels"] == -100, b["input_ids"], b["labels"]), torch.arange(5))
    assert (b["labels"][special] == -100).all()       # specials are never prediction targets
    state = s.state_dict()
    want = [s.next_batch() for _ in range(3)]
    t = MLMBlockSampler(ids, zh_tok, seq_len=16, batch_size=8, seed=0)
    t.load_state_dict(state)
    got = [t.next_batch() for _ in range(3)]
    assert all(torch.equal(w[k], g[k]) for w, g in zip(want, got) for k in w)
    e1 = list(s.eval_batches(2))
    e2 = list(s.eval_batches(2))
    assert all(torch.equal(a["input_ids"], c["input_ids"]) for a, c in zip(e1, e2))
    with pytest.raises(ValueError, match="seq_len"):
        MLMBlockSampler(ids, zh_tok, seq_len=2, batch_size=8)


def test_fill_mask_ranks_by_probability(zh_tok) -> None:
    target = zh_tok.convert_tokens_to_ids("和")

    class Fake(torch.nn.Module):
        def forward(self, input_ids, attention_mask=None):
            logits = torch.zeros(*input_ids.shape, len(zh_tok))
            logits[..., target] = 5.0
            return SimpleNamespace(logits=logits)

    out = fill_mask(Fake(), zh_tok, "中华人民共[MASK]国", k=3)
    assert len(out) == 1 and out[0][0][0] == "和" and out[0][0][1] > 0.5 and len(out[0]) == 3
    assert len(fill_mask(Fake(), zh_tok, "[MASK]京[MASK]", k=2)) == 2
    with pytest.raises(ValueError, match=r"\[MASK\]"):
        fill_mask(Fake(), zh_tok, "没有")


def test_load_or_pretrain_zh_bert_trains_once(zh_tok, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("course_utils.models.bert")
    ids = lines_to_ids(zh_tok, ZH_TEXTS)
    monkeypatch.setitem(pretraining.ZH_BERT_RECIPES, "ci", Recipe(
        model=dict(n_layer=1, n_head=2, n_embd=16, intermediate_size=32, max_position_embeddings=16, dropout=0.0),
        train=dict(max_steps=4, lr=1e-2, warmup_steps=1, batch_size=4, eval_interval=2, eval_iters=1),
        extra=dict(seq_len=16, min_freq=1, max_lines=None)))
    monkeypatch.setattr(pretraining, "zh_tokenizer_for", lambda profile=None: zh_tok)
    monkeypatch.setattr(pretraining, "zh_corpus_ids", lambda tok, max_lines=None: (ids, ids))
    model, tok = pretraining.load_or_pretrain_zh_bert("ci", progress=False)
    monkeypatch.setattr(pretraining, "pretrain_zh_bert", lambda *a, **k: pytest.fail("retrained"))
    again, tok2 = pretraining.load_or_pretrain_zh_bert("ci")
    for p, q in zip(model.parameters(), again.parameters()):
        assert torch.equal(p, q)
    assert tok2("北京")["input_ids"] == zh_tok("北京")["input_ids"]
    assert len(fill_mask(again, tok2, "北[MASK]", k=5)[0]) == 5


def test_a_model_from_an_older_recipe_is_retrained(zh_tok, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    ids = lines_to_ids(zh_tok, ZH_TEXTS)
    recipe = Recipe(
        model=dict(n_layer=1, n_head=2, n_embd=16, intermediate_size=32, max_position_embeddings=16, dropout=0.0,
                   pre_ln=True),
        train=dict(max_steps=4, lr=1e-2, warmup_steps=1, batch_size=4, eval_interval=2, eval_iters=1),
        extra=dict(seq_len=16, min_freq=1, max_lines=None, mlm_prob=0.4))
    monkeypatch.setitem(pretraining.ZH_BERT_RECIPES, "ci", recipe)
    monkeypatch.setattr(pretraining, "zh_tokenizer_for", lambda profile=None: zh_tok)
    monkeypatch.setattr(pretraining, "zh_corpus_ids", lambda tok, max_lines=None: (ids, ids))
    first, _ = pretraining.load_or_pretrain_zh_bert("ci", progress=False)
    folder = pretraining.model_dir(pretraining.ZH_BERT_NAME, "ci")
    assert first.config.pre_ln and pretraining.is_current(folder, recipe)
    capsys.readouterr()
    # the course changes the recipe: the cached copy no longer counts and is trained again
    newer = Recipe(model={**recipe.model, "pre_ln": False}, train=recipe.train, extra=recipe.extra)
    monkeypatch.setitem(pretraining.ZH_BERT_RECIPES, "ci", newer)
    assert pretraining.is_complete(folder) and not pretraining.is_current(folder, newer)
    second, _ = pretraining.load_or_pretrain_zh_bert("ci", progress=False)
    assert "older recipe" in capsys.readouterr().out
    assert not second.config.pre_ln and pretraining.is_current(folder, newer)


def test_mlm_loss_is_the_full_loss(zh_tok) -> None:
    from course_utils.models.bert import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=len(zh_tok), n_layer=1, n_head=2, n_embd=16,
                                       max_position_embeddings=16, dropout=0.0, pre_ln=True))
    sampler = MLMBlockSampler(lines_to_ids(zh_tok, ZH_TEXTS), zh_tok, 16, 4, seed=0, mlm_prob=0.4)
    batch = sampler.next_batch()
    share = (batch["labels"] != -100).float().mean().item()
    assert 0.2 < share < 0.5      # ~40 % of the non-special positions
    torch.testing.assert_close(pretraining.mlm_loss(model, batch), model(**batch).loss, atol=1e-6, rtol=1e-6)


def test_unigram_loss_by_hand(zh_tok) -> None:
    from course_utils.zh_mlm import unigram_loss

    a, b, sep = zh_tok.convert_tokens_to_ids(["北", "京"]) + [zh_tok.sep_token_id]
    train = torch.tensor([a, a, a, sep, b])          # [SEP] is never predicted: left out
    val = torch.tensor([a, b, sep])
    V = len(zh_tok) - len(ZH_SPECIALS)                # add-one over the non-special vocabulary
    p_a, p_b = 4 / (4 + V), 2 / (4 + V)
    expected = -(math.log(p_a) + math.log(p_b)) / 2
    assert unigram_loss(train, val, zh_tok) == pytest.approx(expected, rel=1e-9)
    with pytest.raises(ValueError, match="besides special"):
        unigram_loss(torch.tensor([sep]), val, zh_tok)


def test_adapt_zh_bert_learns_the_new_text_on_a_copy(zh_tok) -> None:
    from course_utils.models.bert import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    base = BertForMaskedLM(BertConfig(vocab_size=len(zh_tok), pad_token_id=zh_tok.pad_token_id, n_layer=1, n_head=2,
                                      n_embd=32, intermediate_size=64, max_position_embeddings=16, dropout=0.0,
                                      pre_ln=True, position_embedding_type="rope"))
    before = {k: v.clone() for k, v in base.state_dict().items()}
    texts = ["今天天气很好，我们去公园。", "北京是中国的首都。"] * 30
    adapted, hist = pretraining.adapt_zh_bert(base, zh_tok, texts, texts[:30], steps=60, lr=5e-3, batch_size=8,
                                              progress=False)
    assert adapted is not base and all(torch.equal(v, base.state_dict()[k]) for k, v in before.items())
    assert adapted.bert.layers[0].attn.rope and len(hist["val_loss"]) >= 2
    assert hist["val_loss"][-1] < hist["val_loss"][0] - 0.5          # two sentences repeated: easy to learn
    with pytest.raises(ValueError, match="non-empty"):
        pretraining.adapt_zh_bert(base, zh_tok, [], texts, steps=2)
    with pytest.raises(ValueError, match="steps"):
        pretraining.adapt_zh_bert(base, zh_tok, texts, texts, steps=0)
