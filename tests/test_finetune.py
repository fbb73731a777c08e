"""course_utils.finetune: label alignment, batching, the fine-tuning loop, the tweet-model cache,
LoRA merge equality and perplexity (tiny local models, no download)."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from course_utils import finetune as ft
from course_utils.finetune import IGNORE_INDEX, align_labels, word_predictions


# ----------------------------------------------------------------------------- alignment
def test_align_labels_first_subtoken() -> None:
    word_ids = [None, 0, 1, 1, 1, 2, None, None]
    assert align_labels(word_ids, [3, 1, 0]) == [-100, 3, 1, -100, -100, 0, -100, -100]
    assert align_labels(word_ids, [3, 1, 0], label_all_subtokens=True) == [-100, 3, 1, 1, 1, 0, -100, -100]
    with pytest.raises(ValueError, match="out of range"):
        align_labels([None, 0, 5], [1, 2])


def test_word_predictions_round_trip() -> None:
    word_ids = [None, 0, 1, 1, 2, None]
    assert word_predictions(word_ids, [9, 4, 5, 6, 7, 9], n_words=4, fill=0) == [4, 5, 7, 0]
    with pytest.raises(ValueError, match="differ in length"):
        word_predictions(word_ids, [1, 2], n_words=3)


@pytest.fixture(scope="module")
def wordpiece():
    from transformers import AutoTokenizer

    from course_utils import assets

    folder = assets.asset_dir("minilm")
    if not folder.exists():
        pytest.skip("MiniLM asset not fetched (run `make lab` or python -m course_utils.assets)")
    return AutoTokenizer.from_pretrained(str(assets.fetch("minilm", verbose=False)))


def test_wordpiece_alignment_english(wordpiece) -> None:
    words = ["Huggingface", "opened", "in", "Brooklyn"]
    tags = [5, 0, 0, 3]  # B-ORG O O B-LOC
    feat = ft.encode_ner(wordpiece, [words], [tags])[0]
    tokens = wordpiece.convert_ids_to_tokens(feat["input_ids"])
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]"
    assert len(tokens) > len(words) + 2, "expected at least one word split into sub-tokens"
    for tok, wid, lab in zip(tokens, feat["word_ids"], feat["labels"]):
        if wid is None or tok.startswith("##"):
            assert lab == IGNORE_INDEX, (tok, lab)
        else:
            assert lab == tags[wid], (tok, lab)
    # the labels survive the trip back to words
    assert word_predictions(feat["word_ids"], [max(x, 0) for x in feat["labels"]], len(words)) == tags


def test_char_tokenizer_alignment_with_expanding_character() -> None:
    from course_utils.zh_mlm import make_zh_tokenizer

    tok = make_zh_tokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "北", "京", "."])
    chars, tags = ["北", "京", "…"], [3, 4, 0]  # NFKC turns "…" into "...": three tokens, one word
    feat = ft.encode_ner(tok, [chars], [tags])[0]
    assert len(feat["input_ids"]) == 2 + 2 + 3
    assert feat["labels"] == [-100, 3, 4, 0, -100, -100, -100]
    assert feat["n_words"] == 3


def test_encode_errors(wordpiece) -> None:
    with pytest.raises(ValueError, match="tags"):
        ft.encode_ner(wordpiece, [["a", "b"]], [[0]])
    with pytest.raises(ValueError):
        ft.encode_classification(wordpiece, ["a", "b"], [0])


# ----------------------------------------------------------------------------- batching
def test_collate_shapes_and_padding() -> None:
    b = ft.collate([{"input_ids": [1, 2, 3], "labels": 1}, {"input_ids": [4], "labels": 0}], pad_token_id=0)
    assert b["input_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert b["labels"].tolist() == [1, 0]
    t = ft.collate([{"input_ids": [1, 2], "labels": [-100, 3]}, {"input_ids": [4, 5, 6], "labels": [-100, 1, 2]}], 0)
    assert t["labels"].tolist() == [[-100, 3, -100], [-100, 1, 2]]
    with pytest.raises(ValueError):
        ft.collate([], 0)


def test_feature_sampler_epochs_and_resume() -> None:
    feats = [{"input_ids": [i + 1], "labels": i % 2} for i in range(10)]
    s = ft.FeatureSampler(feats, batch_size=4, pad_token_id=0, seed=3)
    first = [s.next_batch()["input_ids"].flatten().tolist() for _ in range(2)]
    state = s.state_dict()
    rest = [s.next_batch()["input_ids"].flatten().tolist() for _ in range(3)]
    seen_epoch0 = first[0] + first[1] + rest[0][:2]
    assert sorted(seen_epoch0) == list(range(1, 11)), "each example once per epoch"
    s2 = ft.FeatureSampler(feats, batch_size=4, pad_token_id=0, seed=3)
    s2.load_state_dict(state)
    assert [s2.next_batch()["input_ids"].flatten().tolist() for _ in range(3)] == rest
    assert sum(len(b["labels"]) for b in s.eval_batches(100)) == 10
    with pytest.raises(ValueError):
        ft.FeatureSampler([], 4, 0)
    with pytest.raises(ValueError):
        s.load_state_dict({"kind": "mlm"})


# ----------------------------------------------------------------------------- training loop
class TinyClassifier(torch.nn.Module):
    """Mean of token embeddings -> linear; the interface of the course BERT heads."""

    def __init__(self, vocab: int = 20, num_labels: int = 2, token_level: bool = False) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, 16)
        self.head = torch.nn.Linear(16, num_labels)
        self.token_level = token_level

    def forward(self, input_ids, attention_mask=None, labels=None):
        h = self.emb(input_ids)
        if not self.token_level:
            m = attention_mask.unsqueeze(-1).float()
            h = (h * m).sum(1) / m.sum(1)
        logits = self.head(h)
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), labels.reshape(-1))
        return SimpleNamespace(loss=loss, logits=logits)


def _toy_task(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    feats = []
    for _ in range(n):
        y = int(torch.randint(0, 2, (1,), generator=g))
        length = int(torch.randint(3, 8, (1,), generator=g))
        ids = torch.randint(2 + 9 * y, 11 + 9 * y, (length,), generator=g).tolist()  # class 0: ids 2-10, 1: 11-19
        feats.append({"input_ids": ids, "labels": y})
    return feats


def test_finetune_learns_and_records_scores() -> None:
    torch.manual_seed(0)
    train, val = _toy_task(200, 0), _toy_task(60, 1)
    model = TinyClassifier()
    refs = [f["labels"] for f in val]

    def acc(m):
        preds = ft.predict(m, val, pad_token_id=0)
        return sum(p == r for p, r in zip(preds, refs)) / len(refs)

    hist = ft.finetune(model, train, val, pad_token_id=0, steps=40, lr=0.05, batch_size=16, eval_every=20,
                       score_fn=acc, progress=False)
    assert hist["eval_step"] == [0, 20, 40]
    assert len(hist["score"]) == 3
    assert hist["score"][-1] > 0.9 > hist["score"][0] - 0.2
    assert hist["val_loss"][-1] < hist["val_loss"][0]


def test_predict_token_level_and_crf_path() -> None:
    feats = [{"input_ids": [2, 3, 4, 5], "labels": [-100, 1, 2, -100], "word_ids": [None, 0, 1, None], "n_words": 3}]
    model = TinyClassifier(num_labels=3, token_level=True)
    out = ft.predict(model, feats, pad_token_id=0)
    assert len(out) == 1 and len(out[0]) == 3 and out[0][2] == 0  # the third word was cut: filled with O

    class FakeCRF(TinyClassifier):
        crf = object()

        def decode(self, input_ids, attention_mask, label_mask=None):
            assert label_mask.tolist() == [[False, True, True, False]]  # first sub-tokens only
            return [[7] * int(m.sum()) for m in label_mask]

    assert ft.predict(FakeCRF(num_labels=3, token_level=True), feats, 0) == [[7, 7, 0]]


# ----------------------------------------------------------------------------- tweet model cache
def test_tweet_classifier_cache(wordpiece, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import BertConfig, BertForSequenceClassification

    calls = []

    def fake_finetune(profile=None, output_dir=None, progress=True):
        calls.append(profile)
        cfg = BertConfig(vocab_size=wordpiece.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, num_labels=3, id2label={0: "negative", 1: "neutral", 2: "positive"},
                         label2id={"negative": 0, "neutral": 1, "positive": 2})
        return BertForSequenceClassification(cfg).eval(), wordpiece, {"test_accuracy": 0.5}

    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))
    monkeypatch.setattr(ft, "finetune_tweet_classifier", fake_finetune)
    model, tok = ft.load_or_finetune_tweet_classifier("ci", progress=False)
    assert calls == ["ci"] and (tmp_path / "models" / "minilm-tweets-ci" / "model.safetensors").is_file()
    model2, _ = ft.load_or_finetune_tweet_classifier("ci", progress=False)
    assert calls == ["ci"], "the second call must load the cached model"
    assert model2.config.id2label[2] == "positive"
    x = tok(["what a great ride"], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(model(**x).logits, model2(**x).logits, atol=1e-6)
    # a classifier cached by an older recipe is not reused: it is trained again with the new one
    monkeypatch.setitem(ft.TWEET_RECIPES, "ci", {**ft.TWEET_RECIPES["ci"], "max_steps": 7})
    ft.load_or_finetune_tweet_classifier("ci", progress=False)
    assert calls == ["ci", "ci"], "a model from another recipe must be retrained"
    ft.load_or_finetune_tweet_classifier("ci", progress=False)
    assert calls == ["ci", "ci"], "the retrained model is cached under the new recipe"


# ----------------------------------------------------------------------------- LoRA helpers
def _tiny_llama(vocab: int = 64):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64))


def test_lora_merge_equals_unmerged() -> None:
    from peft import LoraConfig, get_peft_model

    base = _tiny_llama()
    n_before = ft.count_parameters(base)
    model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0,
                                            init_lora_weights=False))  # random B, so the adapter changes outputs
    trainable, total = ft.count_parameters(model)
    # 2 layers x (q: 32->32, v: 32->16) with r=4: A is r x in, B is out x r
    assert trainable == 2 * (4 * 32 + 32 * 4 + 4 * 32 + 16 * 4)
    assert total == n_before[1] + trainable
    x = torch.randint(0, 64, (2, 12))
    model.eval()
    with torch.no_grad():
        unmerged = model(input_ids=x).logits
        with model.disable_adapter():
            base_logits = model(input_ids=x).logits
    assert (unmerged - base_logits).abs().max() > 1e-4, "the adapter should change the outputs"
    merged = model.merge_and_unload()
    assert type(merged).__name__ == "LlamaForCausalLM"
    assert ft.count_parameters(merged)[1] == n_before[1]
    with torch.no_grad():
        assert (merged(input_ids=x).logits - unmerged).abs().max().item() < 1e-5


def test_block_perplexity_of_uniform_model_is_vocab_size() -> None:
    class Uniform(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids):
            return SimpleNamespace(logits=torch.zeros(*input_ids.shape, 50) + self.w)

    blocks = torch.randint(0, 50, (3, 9))
    assert ft.block_perplexity(Uniform(), blocks, batch_size=2) == pytest.approx(50.0)
    with pytest.raises(ValueError):
        ft.block_perplexity(Uniform(), torch.zeros(5, dtype=torch.long))


def test_lm_blocks_and_logit_diff(wordpiece) -> None:
    blocks = ft.lm_blocks(wordpiece, "the cat sat on the mat " * 10, block_size=8, max_blocks=3)
    assert blocks.shape == (3, 8)
    with pytest.raises(ValueError, match="fewer than one block"):
        ft.lm_blocks(wordpiece, "hi", block_size=8)
    a, b = _tiny_llama(), _tiny_llama()
    assert ft.max_abs_logit_diff(a, b, torch.randint(0, 64, (1, 5))) == 0.0
    with pytest.raises(TypeError):
        ft.count_parameters("not a model")


def test_course_bert_token_classification_with_crf() -> None:
    from course_utils.models.bert import BertConfig, BertForTokenClassification

    torch.manual_seed(0)
    model = BertForTokenClassification(BertConfig(vocab_size=30, n_layer=1, n_head=2, n_embd=16, num_labels=3,
                                                  use_crf=True, max_position_embeddings=32))
    word_ids = [None, 0, 1, 1, 2, None]
    feats = [{"input_ids": [2, 5, 6, 7, 8, 3], "labels": align_labels(word_ids, [1, 2, 0]), "word_ids": word_ids,
              "n_words": 3}] * 4
    hist = ft.finetune(model, feats, feats, pad_token_id=0, steps=3, lr=1e-2, batch_size=2, eval_every=3, progress=False)
    assert len(hist["val_loss"]) == 2
    out = ft.predict(model, feats[:2], pad_token_id=0)
    assert len(out) == 2 and all(len(p) == 3 and all(0 <= t < 3 for t in p) for p in out)


def test_a_new_head_is_named_in_one_line_not_a_load_report(capfd) -> None:
    from transformers import AutoModelForSequenceClassification

    from course_utils import assets
    from course_utils.finetune import new_head_from_pretrained

    model = new_head_from_pretrained(AutoModelForSequenceClassification, str(assets.fetch("minilm", verbose=False)),
                                     num_labels=3)
    out, err = capfd.readouterr()
    assert model.config.num_labels == 3
    assert "new task head, trained from scratch (expected): classifier.bias, classifier.weight" in out
    assert "LOAD REPORT" not in out + err and "MISSING" not in out + err
