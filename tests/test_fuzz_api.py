"""Fuzzing the public API that the notebooks call (issue #28, item 10).

The goal: every bad input either works correctly or raises a ``ValueError``/``TypeError`` whose
message names the argument; nothing returns a silently wrong result.

* **Bad arguments, table-driven.** :data:`CASES` lists, for each public function, a valid call
  and which argument to spoil with what kind of bad value (:data:`BAD`: zero, negative, NaN, inf,
  a string, a bool, None, a float where an id is needed, a tensor of the wrong dtype or shape,
  NaN logits, ...). Each (case, bad value) pair is one test. An outcome is **clear** (a
  ValueError/TypeError naming the argument), **obscure** (another exception, or a message that
  does not name it) or **silent** (the call returned). Only "clear" passes.
* **Properties, with hypothesis.** Random valid inputs that are easy to get wrong (0/1 integer
  attention masks, ignore-index labels, top-k/top-p filters, sampling, character tokenizers,
  n-gram distributions) are checked against a reference or an invariant.

``python tests/test_fuzz_api.py`` prints the clear / obscure / silent counts and every
non-clear outcome (the numbers behind docs/RESULTS.md's reliability section).
"""
from __future__ import annotations

import math
import re
import sys
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Callable

import pytest
import torch
import torch.nn.functional as F

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from course_utils import attention as A  # noqa: E402
from course_utils import generation as G  # noqa: E402
from course_utils import metrics, ngram, profiles, risks, tokenization, train_data  # noqa: E402
from course_utils import finetune as FT  # noqa: E402
from course_utils.models import GPT, BertConfig, BertForSequenceClassification, GPTConfig  # noqa: E402

NAN, INF = float("nan"), float("inf")
FUZZ = settings(max_examples=25, deadline=None, derandomize=True, database=None)

# --------------------------------------------------------------------------- kinds of bad values
BAD: dict[str, list[Any]] = {
    # an int that must be >= 1 (sizes, counts, lengths)
    "pos_int": [0, -1, 2.5, NAN, True, "3", None],
    # an int that must be >= 0 (seeds, offsets)
    "nonneg_int": [-1, 2.5, NAN, "3"],
    # a finite float that must be > 0 (temperature, penalties, rates)
    "pos_float": [0.0, -1.0, NAN, INF, "1.0", None],
    # a probability in (0, 1]
    "prob": [0.0, -0.1, 1.5, NAN, "0.9"],
    # a string naming one of a few choices
    "choice": ["no-such-choice", 3, None],
    # a text
    "text": [None, 3, b"bytes"],
    # a tensor of token ids [B, T]
    "ids": [[[1, 2, 3]], torch.tensor([[1.0, 2.0]]), torch.tensor([1, 2, 3]), torch.zeros(1, 0, dtype=torch.long),
            torch.tensor([[1, 99]]), torch.tensor([[-1, 2]])],
    # float logits [B, V]
    "logits": [[[0.1, 0.2]], torch.tensor([[1, 2, 3]]), torch.tensor([0.1, 0.2]),
               torch.tensor([[0.1, NAN, 0.3]]), torch.tensor([[NAN, NAN, NAN]])],
    # a list of integer label ids
    "labels": [None, "012", [0.5, 1.0], [True, False], [[0, 1], [1, 0]], [-3, 1]],
}


@dataclass
class Case:
    """One public function, a valid call, and which argument to spoil with which kind of value."""

    name: str
    call: Callable[..., Any]
    base: dict[str, Any]
    arg: str
    kind: str
    names: tuple[str, ...] = ()          # words a clear message may use for the argument
    skip: tuple[Any, ...] = ()           # bad values that are in fact valid for this argument
    extra: list[Any] = field(default_factory=list)   # bad values only this argument has

    def words(self) -> tuple[str, ...]:
        return (self.arg, *self.names)

    def values(self) -> list[Any]:
        skip = [repr(v) for v in self.skip]
        return [v for v in BAD[self.kind] if repr(v) not in skip] + self.extra


@lru_cache(maxsize=None)
def _tiny_gpt() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=11, block_size=16, n_layer=1, n_head=2, n_embd=8)).eval()


@lru_cache(maxsize=None)
def _tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(vocab_size=20, max_position_embeddings=8, n_layer=1, n_head=2,
                                                    n_embd=8, num_labels=3)).eval()


@lru_cache(maxsize=None)
def _ngram() -> ngram.NGramLM:
    return ngram.NGramLM(2).fit("the cat sat on the mat".split())


def _table_step(ids: torch.Tensor, cache: Any) -> tuple[torch.Tensor, Any]:
    """A fake model for the decoders: a fixed next-token table over 11 tokens."""
    g = torch.Generator().manual_seed(0)
    table = torch.randn(11, 11, generator=g)
    return table[ids[:, -1]], cache


_Q = torch.randn(1, 2, 4, 8, generator=torch.Generator().manual_seed(0))
_LOGITS = torch.randn(2, 11, generator=torch.Generator().manual_seed(1))
_IDS = torch.tensor([[1, 2, 3], [4, 5, 6]])
_SPEECH = {"play": "hamlet", "act": "1", "scene": "1", "speaker": "HAMLET", "text": "to be or not to be " * 5}

CASES: list[Case] = [
    # ---- attention (chapter 3)
    Case("sdpa.mask", lambda **k: A.scaled_dot_product_attention(_Q, _Q, _Q, **k), {"mask": None}, "mask", "labels",
         skip=(None,), extra=[torch.tensor([0, 2, 1, 1]), torch.tensor([[1.0, NAN, 0.0, 0.0]]), "causal"]),
    Case("sdpa.dropout_p", lambda **k: A.scaled_dot_product_attention(_Q, _Q, _Q, **k), {"dropout_p": 0.0},
         "dropout_p", "prob", skip=(0.0,), extra=[1.0, INF]),
    Case("sdpa.scale", lambda **k: A.scaled_dot_product_attention(_Q, _Q, _Q, **k), {"scale": None}, "scale",
         "pos_float", skip=(None,)),
    Case("causal_mask.t_q", A.causal_mask, {"t_q": 4}, "t_q", "pos_int"),
    Case("causal_mask.offset", A.causal_mask, {"t_q": 4, "offset": 0}, "offset", "nonneg_int",
         skip=(-1,), extra=[None, 1.5]),
    Case("padding_mask", A.padding_mask, {"attention_mask": torch.ones(2, 3)}, "attention_mask", "labels",
         extra=[torch.tensor([[1, 2, 0]]), torch.ones(2, 3, 4)]),
    Case("split_heads.n_head", A.split_heads, {"x": torch.zeros(1, 3, 8), "n_head": 2}, "n_head", "pos_int"),
    Case("sinusoidal.n_positions", A.sinusoidal_positions, {"n_positions": 4, "d_model": 8}, "n_positions", "pos_int"),
    Case("sinusoidal.d_model", A.sinusoidal_positions, {"n_positions": 4, "d_model": 8}, "d_model", "pos_int",
         extra=[7]),
    Case("rope.head_dim", A.rope_cos_sin, {"n_positions": 4, "head_dim": 8}, "head_dim", "pos_int", extra=[7]),
    Case("rope.base", A.rope_cos_sin, {"n_positions": 4, "head_dim": 8, "base": 10000.0}, "base", "pos_float"),
    Case("mha.attention_mask", lambda **k: A.MultiHeadAttention(8, 2)(torch.zeros(1, 3, 8), **k),
         {"attention_mask": None}, "attention_mask", "labels", skip=(None,),
         extra=[torch.tensor([[1, 2, 0]]), torch.tensor([[0.0, -INF, 0.0]])]),
    # ---- generation (chapter 6)
    Case("apply_temperature", G.apply_temperature, {"logits": _LOGITS, "temperature": 0.7}, "temperature", "pos_float"),
    Case("apply_temperature.logits", G.apply_temperature, {"logits": _LOGITS, "temperature": 0.7}, "logits", "logits"),
    Case("top_k_filter", G.top_k_filter, {"logits": _LOGITS, "top_k": 3}, "top_k", "pos_int"),
    Case("top_p_filter", G.top_p_filter, {"logits": _LOGITS, "top_p": 0.9}, "top_p", "prob", extra=[True]),
    Case("top_p_filter.min_tokens", G.top_p_filter, {"logits": _LOGITS, "top_p": 0.9, "min_tokens_to_keep": 1},
         "min_tokens_to_keep", "pos_int"),
    Case("repetition_penalty", G.apply_repetition_penalty, {"logits": _LOGITS, "ids": _IDS, "penalty": 1.2},
         "penalty", "pos_float"),
    Case("repetition_penalty.ids", G.apply_repetition_penalty, {"logits": _LOGITS, "ids": _IDS, "penalty": 1.2},
         "ids", "ids", skip=(torch.tensor([[1, 2, 3]]),), extra=[torch.tensor([[1, 2], [3, 99]])]),
    Case("process_logits.top_k", G.process_logits, {"logits": _LOGITS, "top_k": None}, "top_k", "pos_int",
         skip=(None,)),
    Case("sample_next", G.sample_next, {"logits": _LOGITS}, "logits", "logits"),
    Case("generate.max_new_tokens", lambda **k: G.generate(_table_step, torch.tensor([[1]]), **k),
         {"max_new_tokens": 3}, "max_new_tokens", "pos_int", skip=(0,)),
    Case("generate.ids", lambda **k: G.generate(_table_step, max_new_tokens=2, **k), {"ids": torch.tensor([[1]])},
         "ids", "ids", skip=(torch.tensor([[1, 99]]),)),
    Case("generate.temperature", lambda **k: G.generate(_table_step, torch.tensor([[1]]), 2, do_sample=True, **k),
         {"temperature": 1.0}, "temperature", "pos_float"),
    Case("generate.eos_token_id", lambda **k: G.generate(_table_step, torch.tensor([[1]]), 2, **k),
         {"eos_token_id": None}, "eos_token_id", "nonneg_int"),
    Case("beam_search.num_beams", lambda **k: G.beam_search(_table_step, torch.tensor([[1]]), 2, **k),
         {"num_beams": 2}, "num_beams", "pos_int"),
    Case("beam_search.length_penalty", lambda **k: G.beam_search(_table_step, torch.tensor([[1]]), 2, **k),
         {"length_penalty": 1.0}, "length_penalty", "pos_float", skip=(0.0, -1.0)),
    Case("total_nll.context", lambda **k: G.total_nll(lambda w: torch.zeros(w.shape[0], w.shape[1], 11),
                                                      list(range(10)), **k), {"context": 4}, "context", "pos_int"),
    Case("bits_per_char.n_chars", G.bits_per_char, {"total_nll_nats": 10.0, "n_chars": 5}, "n_chars", "pos_int"),
    Case("bits_per_char.nll", G.bits_per_char, {"total_nll_nats": 10.0, "n_chars": 5}, "total_nll_nats",
         "pos_float", skip=(0.0,)),
    # ---- the course's models (chapter 4)
    Case("gpt.forward.idx", lambda **k: _tiny_gpt()(**k), {"idx": _IDS}, "idx", "ids"),
    Case("gpt.forward.targets", lambda **k: _tiny_gpt()(_IDS, **k), {"targets": _IDS}, "targets", "labels",
         skip=(None,), extra=[torch.full((2, 3), 11), torch.full((2, 3), 1.5), torch.ones(3, 2, dtype=torch.long)]),
    Case("gpt.generate.max_new_tokens", lambda **k: _tiny_gpt().generate(_IDS, **k), {"max_new_tokens": 2},
         "max_new_tokens", "pos_int", skip=(0,)),
    Case("gpt.generate.temperature", lambda **k: _tiny_gpt().generate(_IDS, 2, **k), {"temperature": 1.0},
         "temperature", "pos_float", skip=(0.0,)),                 # 0 = greedy, documented
    Case("gpt.generate.top_k", lambda **k: _tiny_gpt().generate(_IDS, 2, **k), {"top_k": None}, "top_k", "pos_int",
         skip=(None,)),
    Case("gpt.generate.top_p", lambda **k: _tiny_gpt().generate(_IDS, 2, **k), {"top_p": None}, "top_p", "prob"),
    Case("gpt.generate.idx", lambda **k: _tiny_gpt().generate(max_new_tokens=2, **k), {"idx": _IDS}, "idx", "ids"),
    Case("bert.labels", lambda **k: _tiny_bert()(torch.tensor([[1, 2, 3]]), **k), {"labels": torch.tensor([1])},
         "labels", "labels", skip=(None,), extra=[torch.tensor([3]), torch.tensor([1.0])]),
    Case("bert.attention_mask", lambda **k: _tiny_bert()(torch.tensor([[1, 2, 3]]), **k),
         {"attention_mask": torch.ones(1, 3)}, "attention_mask", "labels", skip=(None,),
         extra=[torch.tensor([[0.0, -INF, 0.0]]), torch.tensor([[1, 2, 1]])]),
    Case("gpt_config.vocab_size", GPTConfig, {"vocab_size": 11}, "vocab_size", "pos_int"),
    Case("gpt_config.dropout", GPTConfig, {"dropout": 0.1}, "dropout", "prob", skip=(0.0,), extra=[1.0, INF]),
    # ---- metrics (chapter 7)
    Case("classification_scores.predictions", metrics.classification_scores,
         {"predictions": [0, 1, 1], "references": [0, 1, 0]}, "predictions", "labels"),
    Case("classification_scores.references", metrics.classification_scores,
         {"predictions": [0, 1, 1], "references": [0, 1, 0]}, "references", "labels", extra=[[0, 1]]),
    Case("classification_scores.average", metrics.classification_scores,
         {"predictions": [0, 1], "references": [0, 1], "average": "macro"}, "average", "choice"),
    Case("confusion_matrix.num_labels", metrics.confusion_matrix,
         {"predictions": [0, 1], "references": [0, 1], "num_labels": 2}, "num_labels", "pos_int", skip=(None,),
         extra=[1]),
    Case("compare_classifiers.confidence", metrics.compare_classifiers,
         {"predictions_a": [0, 1], "predictions_b": [1, 1], "references": [0, 1], "confidence": 0.9},
         "confidence", "prob", extra=[1.0]),
    Case("compare_classifiers.n_resamples", metrics.compare_classifiers,
         {"predictions_a": [0, 1], "predictions_b": [1, 1], "references": [0, 1], "n_resamples": 10},
         "n_resamples", "pos_int"),
    Case("entity_scores", metrics.entity_scores, {"predictions": [["B-PER", "O"]], "references": [["B-PER", "O"]]},
         "predictions", "text", extra=[["B-PER", "O"], [["B-PER"]]]),
    # ---- tokenizers (chapter 2)
    Case("char_tokenizer.encode", lambda **k: tokenization.CharTokenizer.from_text("abc").encode(**k),
         {"text": "cab"}, "text", "text", extra=["abz"]),
    Case("char_tokenizer.decode", lambda **k: tokenization.CharTokenizer.from_text("abc").decode(**k),
         {"ids": [0, 1]}, "ids", "labels", extra=[[0, 7], "01", [1.0]]),
    Case("train_bpe.vocab_size", lambda **k: tokenization.train_bpe(["low lower lowest"] * 3, **k),
         {"vocab_size": 50}, "vocab_size", "pos_int"),
    Case("train_bpe.texts", lambda **k: tokenization.train_bpe(vocab_size=50, **k), {"texts": ["a b"]}, "texts",
         "text", extra=[[], [1, 2]]),
    # ---- n-grams (chapter 1)
    Case("ngram.n", ngram.NGramLM, {"n": 2}, "n", "pos_int"),
    Case("ngram.smoothing", ngram.NGramLM, {"n": 2, "smoothing": "add_k"}, "smoothing", "choice"),
    Case("ngram.k", ngram.NGramLM, {"n": 2, "k": 1.0}, "k", "pos_float"),
    Case("ngram.sample.num_tokens", lambda **k: _ngram().sample(**k, seed=0), {"num_tokens": 3}, "num_tokens",
         "pos_int", skip=(0,)),
    Case("ngram.sample.temperature", lambda **k: _ngram().sample(3, seed=0, **k), {"temperature": 1.0},
         "temperature", "pos_float"),
    Case("ngram.perplexity", lambda **k: _ngram().perplexity(**k), {"data": "the cat".split()}, "data", "text",
         extra=[[]]),
    # ---- data helpers, profiles (chapters 0, 5)
    Case("pack_blocks.block_size", train_data.pack_blocks, {"data": torch.arange(20), "block_size": 4},
         "block_size", "pos_int"),
    Case("random_block_sampler.batch_size", train_data.RandomBlockSampler,
         {"data": torch.arange(50), "block_size": 4, "batch_size": 2}, "batch_size", "pos_int"),
    Case("random_block_sampler.block_size", train_data.RandomBlockSampler,
         {"data": torch.arange(50), "block_size": 4, "batch_size": 2}, "block_size", "pos_int", extra=[60]),
    Case("random_block_sampler.data", train_data.RandomBlockSampler,
         {"data": torch.arange(50), "block_size": 4, "batch_size": 2}, "data", "text",
         extra=[torch.rand(50), torch.arange(50).view(5, 10)]),
    Case("get_profile", profiles.get_profile, {"name": "ci"}, "name", "choice", names=("profile", "COURSE_PROFILE"),
         skip=(None,)),
    # ---- fine-tuning helpers (chapter 7)
    Case("align_labels.word_labels", FT.align_labels, {"word_ids": [None, 0, 1, None], "word_labels": [1, 2]},
         "word_labels", "labels", skip=([-3, 1],), extra=[[1]]),
    Case("collate.pad_token_id", FT.collate, {"features": [{"input_ids": [1, 2], "labels": 1}], "pad_token_id": 0},
         "pad_token_id", "nonneg_int", extra=[None]),
    # ---- risks (chapter 9)
    Case("exposure.rank", risks.exposure, {"rank": 1, "n_candidates": 100}, "rank", "pos_int", extra=[101]),
    Case("exposure.n_candidates", risks.exposure, {"rank": 1, "n_candidates": 100}, "n_candidates", "pos_int"),
    Case("reliability_bins.n_bins", risks.reliability_bins,
         {"confidence": [0.1, 0.9], "correct": [False, True], "n_bins": 5}, "n_bins", "pos_int"),
    Case("reliability_bins.confidence", risks.reliability_bins,
         {"confidence": [0.1, 0.9], "correct": [False, True]}, "confidence", "labels",
         skip=([True, False], [-3, 1], [0.5, 1.0]), extra=[[NAN, 0.5], [1.5, 0.5], [0.5]]),
    Case("top_k_overlap.k", risks.top_k_overlap, {"a": [0.1, 0.5, 0.3], "b": [0.2, 0.4, 0.1], "k": 2}, "k",
         "pos_int", extra=[4]),
    Case("training_days.utilisation", risks.training_days,
         {"flops": 1e20, "n_devices": 8, "peak_flops_per_device": 1e14, "utilisation": 0.4}, "utilisation", "prob"),
    Case("training_flops.n_params", risks.training_flops, {"n_params": 1e6, "n_tokens": 1e9}, "n_params",
         "pos_float"),
]


def outcome(case: Case, bad: Any) -> tuple[str, str]:
    """``("clear" | "obscure" | "silent", detail)`` of calling ``case`` with ``bad`` as its argument."""
    try:
        result = case.call(**{**case.base, case.arg: bad})
    except (ValueError, TypeError) as err:
        msg = f"{type(err).__name__}: {err}"
        named = any(re.search(rf"(?<![A-Za-z_]){re.escape(w)}(?![A-Za-z_])", str(err)) for w in case.words())
        return ("clear" if named else "obscure"), msg[:200]
    except Exception as err:  # noqa: BLE001 -- what the fuzz is looking for
        return "obscure", f"{type(err).__name__}: {err}"[:200]
    return "silent", f"returned {type(result).__name__}"


ALL = [pytest.param(c, v, id=f"{c.name}-{i}") for c in CASES for i, v in enumerate(c.values())]


@pytest.mark.parametrize("case", [pytest.param(c, id=c.name) for c in CASES])
def test_the_valid_call_works(case: Case) -> None:
    case.call(**case.base)


@pytest.mark.parametrize("case, bad", ALL)
def test_bad_input_gets_a_clear_error(case: Case, bad: Any) -> None:
    kind, detail = outcome(case, bad)
    assert kind == "clear", f"{case.name}({case.arg}={bad!r}): {kind}: {detail}"


# --------------------------------------------------------------------------- properties
@st.composite
def _padded_batch(draw):
    b, h, t, d = draw(st.integers(1, 3)), draw(st.integers(1, 2)), draw(st.integers(1, 6)), draw(st.sampled_from([2, 4]))
    lengths = draw(st.lists(st.integers(1, t), min_size=b, max_size=b))
    dtype = draw(st.sampled_from([torch.bool, torch.long, torch.int32, torch.uint8, torch.float32]))
    seed = draw(st.integers(0, 2**16))
    return b, h, t, d, lengths, dtype, seed


@FUZZ
@given(_padded_batch())
def test_attention_masks_of_every_dtype_agree_with_torch(batch) -> None:
    b, h, t, d, lengths, dtype, seed = batch
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, t, d, generator=g) for _ in range(3))
    keep = torch.arange(t)[None, :] < torch.tensor(lengths)[:, None]          # [B, T], True = real token
    mask = keep[:, None, None, :]
    if dtype == torch.float32:          # additive: 0 keep, -inf block
        ours = torch.zeros(mask.shape).masked_fill(~mask, -INF)
    else:
        ours = mask.to(dtype)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    out, w = A.scaled_dot_product_attention(q, k, v, ours)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    assert torch.all(w.masked_select(~mask.expand_as(w)) == 0), "padding received attention"


@FUZZ
@given(st.lists(st.tuples(st.integers(0, 3), st.sampled_from([0, 1, 2, 3, -100])), min_size=1, max_size=40))
def test_classification_scores_leave_out_the_ignore_index(pairs) -> None:
    preds, refs = [p for p, _ in pairs], [r for _, r in pairs]
    kept = [(p, r) for p, r in pairs if r != -100]
    if not kept:
        with pytest.raises(ValueError, match="ignore_index"):
            metrics.classification_scores(preds, refs)
        return
    got = metrics.classification_scores(preds, refs)
    assert got == metrics.classification_scores([p for p, _ in kept], [r for _, r in kept])
    assert got["accuracy"] == pytest.approx(sum(p == r for p, r in kept) / len(kept))


@FUZZ
@given(st.integers(1, 3), st.integers(2, 30), st.integers(1, 40), st.integers(0, 2**16))
def test_top_k_keeps_the_k_largest(b, vocab, k, seed) -> None:
    logits = torch.randn(b, vocab, generator=torch.Generator().manual_seed(seed))
    out = G.top_k_filter(logits, k)
    kept = torch.isfinite(out)
    assert torch.all(kept.sum(-1) == min(k, vocab))
    assert torch.all(out[kept] == logits[kept])
    smallest_kept = torch.where(kept, logits, torch.full_like(logits, INF)).min(-1).values
    largest_dropped = torch.where(kept, torch.full_like(logits, -INF), logits).max(-1).values
    assert torch.all(smallest_kept > largest_dropped)


@FUZZ
@given(st.integers(2, 30), st.floats(0.01, 1.0), st.integers(0, 2**16))
def test_top_p_keeps_the_smallest_set_reaching_p(vocab, p, seed) -> None:
    logits = torch.randn(1, vocab, generator=torch.Generator().manual_seed(seed)) * 3
    out = G.top_p_filter(logits, p)
    kept = torch.isfinite(out)[0]
    probs = logits.softmax(-1)[0]
    assert kept.any()
    assert probs[kept].sum() >= p - 1e-6 or kept.all()
    # minimal: dropping the least likely kept token would fall below p
    if kept.sum() > 1:
        assert probs[kept].sum() - probs[kept].min() < p + 1e-6


@FUZZ
@given(st.integers(1, 4), st.integers(1, 20), st.integers(0, 2**16), st.floats(0.05, 5.0))
def test_sampling_returns_ids_from_the_kept_set(b, vocab, seed, temperature) -> None:
    g = torch.Generator().manual_seed(seed)
    logits = G.process_logits(torch.randn(b, vocab, generator=g), temperature=temperature, top_k=3)
    ids = G.sample_next(logits, generator=g)
    assert ids.shape == (b, 1) and ids.dtype == torch.long
    assert torch.all(torch.isfinite(logits.gather(1, ids)))


@FUZZ
@given(st.text(alphabet="abcxyz \n", min_size=1, max_size=30), st.text(alphabet="abcdef", min_size=1, max_size=10))
def test_char_tokenizer_round_trip_or_clear_error(vocab_text, text) -> None:
    tok = tokenization.CharTokenizer.from_text(vocab_text)
    if set(text) <= set(vocab_text):
        assert tok.decode(tok.encode(text)) == text
    else:
        with pytest.raises((ValueError, KeyError), match=r"text|character|unk"):
            tok.encode(text)


@FUZZ
@given(st.lists(st.sampled_from("abcd"), min_size=2, max_size=30), st.integers(1, 3),
       st.sampled_from(["add_k", "interpolation", "kneser_ney"]), st.lists(st.sampled_from("abcde"), max_size=3))
def test_ngram_distributions_sum_to_one(tokens, n, smoothing, context) -> None:
    try:
        lm = ngram.NGramLM(n, smoothing).fit(tokens)
    except ValueError as err:           # a smoothing that does not apply to this n says so
        assert "smoothing" in str(err) or "n" in str(err)
        return
    dist = lm.distribution(context)
    assert sum(dist.values()) == pytest.approx(1.0, abs=1e-6)
    assert all(p >= 0 for p in dist.values())


def main() -> int:
    """Print the clear / obscure / silent counts and each non-clear outcome."""
    counts: Counter[str] = Counter()
    for case in CASES:
        for bad in case.values():
            kind, detail = outcome(case, bad)
            counts[kind] += 1
            if kind != "clear":
                print(f"{kind:8s} {case.name}({case.arg}={bad!r:.40}) -> {detail}")
    total = sum(counts.values())
    print(f"\n{total} calls: " + ", ".join(f"{counts[k]} {k} ({100 * counts[k] / total:.0f} %)"
                                         for k in ("clear", "obscure", "silent")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
