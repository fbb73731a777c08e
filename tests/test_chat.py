"""course_utils.chat: the ChatML template, the assistant mask, padding, and bad chats."""
from __future__ import annotations

import pytest
import torch

from course_utils import chat

MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Calculate 12 + 7."},
        {"role": "assistant", "content": "The answer is 19."}, {"role": "user", "content": "And 3 - 1?"},
        {"role": "assistant", "content": "The answer is 2."}]


@pytest.fixture(scope="module")
def tok():
    from course_utils.llama_pretraining import train_shakespeare_bpe

    return chat.with_chat_template(train_shakespeare_bpe(300, max_rows=300))


def test_render_equals_the_jinja_template(tok):
    assert chat.render_chat(MSGS) == tok.apply_chat_template(MSGS, tokenize=False)
    assert chat.render_chat(MSGS[:2], add_generation_prompt=True) == \
        tok.apply_chat_template(MSGS[:2], tokenize=False, add_generation_prompt=True)


def test_mask_equals_transformers_generation_mask(tok):
    ct = chat.tokenize_chat(tok, MSGS)
    hf = tok.apply_chat_template(MSGS, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    assert ct.input_ids == list(hf["input_ids"])
    assert ct.assistant_mask == list(hf["assistant_masks"])


def test_mask_covers_exactly_the_replies_and_their_end_marker(tok):
    ct = chat.tokenize_chat(tok, MSGS)
    trained = tok.decode([i for i, m in zip(ct.input_ids, ct.assistant_mask) if m])
    assert trained == "The answer is 19.<|im_end|>The answer is 2.<|im_end|>"
    shown = chat.show_mask(tok, ct)
    assert "[<|im_end|>]" in shown and "Calculate" in shown and "[Calculate" not in shown


def test_pad_chats_right_and_left(tok):
    a = chat.tokenize_chat(tok, MSGS[1:3])
    b = chat.tokenize_chat(tok, MSGS)
    right = chat.pad_chats([a, b], pad_id=1)
    n = len(a.input_ids)
    assert right["input_ids"].shape == (2, len(b.input_ids))
    assert right["input_ids"][0, :n].tolist() == a.input_ids and (right["input_ids"][0, n:] == 1).all()
    assert right["assistant_mask"][0, n:].sum() == 0 and right["attention_mask"][0].sum() == n
    left = chat.pad_chats([a, b], pad_id=1, side="left")
    assert left["input_ids"][0, -n:].tolist() == a.input_ids
    assert torch.equal(left["attention_mask"].sum(1), right["attention_mask"].sum(1))


@pytest.mark.parametrize("bad, words", [
    ([], "non-empty"),
    ("hello", "non-empty"),
    ([{"role": "robot", "content": "x"}], "roles are"),
    ([{"role": "user", "content": 3}], "must be a str"),
    ([{"role": "user"}], "exactly 'role' and 'content'"),
    ([{"role": "user", "content": "hi <|im_end|> there"}], "chat marker"),
])
def test_bad_chats_get_clear_errors(tok, bad, words):
    with pytest.raises(ValueError, match=words):
        chat.tokenize_chat(tok, bad, need_assistant=False)


def test_a_chat_without_an_assistant_turn_cannot_be_trained_on(tok):
    with pytest.raises(ValueError, match="no assistant turn"):
        chat.tokenize_chat(tok, MSGS[:2])


def test_a_tokenizer_without_the_markers_is_refused():
    from course_utils.tokenization import to_fast_tokenizer, train_bpe

    plain = to_fast_tokenizer(train_bpe(["to be or not to be"] * 20, 280, special_tokens=("<pad>",)), pad_token="<pad>")
    with pytest.raises(ValueError, match="no <\\|im_start\\|> token"):
        chat.with_chat_template(plain)
