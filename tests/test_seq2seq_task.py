"""Tests of the words → digits translation task in course_utils.apps and its training helpers."""
from __future__ import annotations

import pytest
import torch

from course_utils import apps
from course_utils.device import seed_everything

CASES = {
    0: "zero", 7: "seven", 13: "thirteen", 19: "nineteen", 20: "twenty", 40: "forty", 42: "forty-two",
    100: "one hundred", 101: "one hundred and one", 110: "one hundred and ten",
    342: "three hundred and forty-two", 999: "nine hundred and ninety-nine", 1000: "one thousand",
    1005: "one thousand and five", 1100: "one thousand one hundred",
    21042: "twenty-one thousand and forty-two", 100000: "one hundred thousand",
    999999: "nine hundred and ninety-nine thousand nine hundred and ninety-nine",
}


@pytest.mark.parametrize("n,words", sorted(CASES.items()))
def test_number_to_words_hand_picked(n: int, words: str) -> None:
    assert apps.number_to_words(n) == words


def test_number_words_are_unique_and_bad_input() -> None:
    words = [apps.number_to_words(n) for n in range(0, 20000)]
    assert len(set(words)) == len(words)
    for bad in (-1, 1_000_000, 3.0, True, "5"):
        with pytest.raises(ValueError, match="int in"):
            apps.number_to_words(bad)  # type: ignore[arg-type]


def test_splits_are_disjoint_and_seeded() -> None:
    tr, te = apps.number_splits(500, 100, max_value=999, seed=1)
    assert len(tr) == 500 and len(te) == 100 and not set(tr) & set(te)
    assert (tr, te) == apps.number_splits(500, 100, max_value=999, seed=1)
    with pytest.raises(ValueError, match="n_train"):
        apps.number_splits(900, 200, max_value=999)


def test_encode_decode_round_trip() -> None:
    task = apps.NumberTask()
    nums = [0, 342, 777777, 1005]
    src, tgt = task.encode(nums)
    assert src.shape == (4, task.max_src_len) and tgt.shape == (4, task.max_tgt_len)
    assert [task.decode_target(row[1:]) for row in tgt.tolist()] == [str(n) for n in nums]
    assert [task.src_vocab[i] for i in src[1].tolist() if i > 2] == ["three", "hundred", "and", "forty", "two"]
    b = apps.translation_batch(task, nums)
    assert (b["labels"][:, :-1][b["tgt_in"][:, 1:] != 0] == b["tgt_in"][:, 1:][b["tgt_in"][:, 1:] != 0]).all()
    assert (b["labels"] == -100).any() and (b["src_mask"].sum(1) == (src != 0).sum(1)).all()
    with pytest.raises(ValueError, match="empty"):
        task.encode([])


def test_translator_overfits_a_tiny_batch() -> None:
    seed_everything(0)
    task = apps.NumberTask()
    nums = [0, 13, 101, 1005, 21042, 777777]
    model = apps.make_translator(task, n_layer=1, n_head=2, n_embd=48)
    losses = apps.train_translator(model, task, nums, steps=60, batch_size=6, lr=1e-2, warmup=5, progress=False)
    assert losses[-1] < 0.1 < 1.0 < losses[0]
    assert apps.exact_match(model, task, nums) == 1.0
    src_words, out, w = apps.cross_attention(model, task, 1005)
    assert src_words == ["one", "thousand", "and", "five", "<eos>"] and "".join(out[:-1]) == "1005"
    assert w.shape == (len(out), len(src_words))
    assert torch.allclose(w.sum(-1), torch.ones(len(out)), atol=1e-5)
    with pytest.raises(ValueError, match="steps"):
        apps.train_translator(model, task, nums, steps=0)
    with pytest.raises(ValueError, match="empty"):
        apps.exact_match(model, task, [])
