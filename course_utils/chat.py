"""Chats as token sequences: a ChatML template with roles, and the assistant-only loss mask.

A chat is a list of messages ``{"role": "system" | "user" | "assistant", "content": str}``.
:data:`CHAT_TEMPLATE` renders it in the ChatML layout SmolLM2 and Qwen use::

    <|im_start|>user
    Calculate 5 - 3 - 6.<|im_end|>
    <|im_start|>assistant
    The answer is -4.<|im_end|>

The assistant's text and its closing ``<|im_end|>`` sit inside ``{% generation %}`` tags, which is
how transformers (``apply_chat_template(..., return_assistant_tokens_mask=True)``) and TRL's
``assistant_only_loss=True`` find the tokens to train on. :func:`tokenize_chat` computes the same
mask from character offsets, so it works for any fast tokenizer; supervised fine-tuning puts the
loss on those tokens only (the model learns to answer and to stop, not to write questions).

Defined in chapter 12, Post-training.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
ROLES: tuple[str, ...] = ("system", "user", "assistant")

#: ChatML with the assistant's turns wrapped in ``{% generation %}`` (content + ``<|im_end|>``).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<|im_start|>assistant\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\n' }}"
    "{% else %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def check_messages(messages: Sequence[dict[str, str]], need_assistant: bool = False) -> None:
    """Raise ValueError naming the first malformed message (role, content), or, with
    ``need_assistant``, a chat without an assistant turn (nothing to train on)."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or len(messages) == 0:
        raise ValueError("a chat is a non-empty list of {'role': ..., 'content': ...} messages, "
                         f"got {type(messages).__name__}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or set(m) - {"role", "content"} or "role" not in m or "content" not in m:
            raise ValueError(f"message {i} must be a dict with exactly 'role' and 'content', got {m!r:.80}")
        if m["role"] not in ROLES:
            raise ValueError(f"message {i} has role {m['role']!r}; roles are {ROLES}")
        if not isinstance(m["content"], str):
            raise ValueError(f"message {i}'s content must be a str, got {type(m['content']).__name__}")
        if IM_START in m["content"] or IM_END in m["content"]:
            raise ValueError(f"message {i}'s content contains a chat marker ({IM_START} or {IM_END}); "
                             "remove it: it would end the turn early")
    if need_assistant and not any(m["role"] == "assistant" for m in messages):
        raise ValueError("this chat has no assistant turn, so supervised fine-tuning has nothing to learn "
                         "from it: add {'role': 'assistant', 'content': ...} or drop the chat")


def render_chat(messages: Sequence[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """The chat as text, exactly as :data:`CHAT_TEMPLATE` renders it (written out in Python)."""
    check_messages(messages)
    parts = []
    for m in messages:
        parts.append(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n")
    if add_generation_prompt:
        parts.append(f"{IM_START}assistant\n")
    return "".join(parts)


def assistant_spans(messages: Sequence[dict[str, str]]) -> list[tuple[int, int]]:
    """Character spans ``[start, end)`` of :func:`render_chat`'s text that the assistant wrote:
    each assistant content plus its closing ``<|im_end|>``."""
    spans, pos = [], 0
    for m in messages:
        head = f"{IM_START}{m['role']}\n"
        body = f"{m['content']}{IM_END}"
        if m["role"] == "assistant":
            spans.append((pos + len(head), pos + len(head) + len(body)))
        pos += len(head) + len(body) + 1
    return spans


def with_chat_template(tokenizer: Any) -> Any:
    """Give ``tokenizer`` (a transformers fast tokenizer whose vocabulary has ``<|im_start|>``
    and ``<|im_end|>`` as special tokens) :data:`CHAT_TEMPLATE`; returns it."""
    for marker in (IM_START, IM_END):
        ids = tokenizer.convert_tokens_to_ids(marker)
        if ids is None or ids == tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no {marker} token; train it with the chat markers as special "
                             "tokens (llama_pretraining.train_shakespeare_bpe reserves them)")
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


@dataclass
class ChatTokens:
    """One tokenized chat: ``input_ids`` [T] and ``assistant_mask`` [T] (1 = a token the
    assistant wrote, trained on; 0 = template, system and user tokens)."""

    input_ids: list[int]
    assistant_mask: list[int]


def tokenize_chat(tokenizer: Any, messages: Sequence[dict[str, str]], need_assistant: bool = True) -> ChatTokens:
    """Tokenize a chat and mark the assistant's tokens by their character offsets.

    A token belongs to the assistant when its characters start inside an assistant span
    (:func:`assistant_spans`). Equal to transformers' ``return_assistant_tokens_mask`` with
    :data:`CHAT_TEMPLATE` (a test checks it).
    """
    check_messages(messages, need_assistant=need_assistant)
    text = render_chat(messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans = assistant_spans(messages)
    mask = [int(any(a <= s < b for a, b in spans) and e > s) for s, e in enc["offset_mapping"]]
    return ChatTokens(list(enc["input_ids"]), mask)


def pad_chats(chats: Sequence[ChatTokens], pad_id: int, max_len: int | None = None,
              side: str = "right") -> dict[str, torch.Tensor]:
    """A batch of tokenized chats padded to the longest (or cut to ``max_len``).

    Returns ``input_ids`` [B, T], ``attention_mask`` [B, T] (1 = real token) and
    ``assistant_mask`` [B, T] (0 on padding). ``side="left"`` pads in front, for generation.
    """
    if not chats:
        raise ValueError("pad_chats needs at least one chat")
    if side not in ("left", "right"):
        raise ValueError(f"side must be 'left' or 'right', got {side!r}")
    longest = max(len(c.input_ids) for c in chats)
    T = longest if max_len is None else min(longest, max_len)
    ids = torch.full((len(chats), T), pad_id, dtype=torch.long)
    att = torch.zeros(len(chats), T, dtype=torch.long)
    am = torch.zeros(len(chats), T, dtype=torch.long)
    for i, c in enumerate(chats):
        n = min(len(c.input_ids), T)
        sl = slice(0, n) if side == "right" else slice(T - n, T)
        ids[i, sl] = torch.tensor(c.input_ids[:n])
        att[i, sl] = 1
        am[i, sl] = torch.tensor(c.assistant_mask[:n])
    return {"input_ids": ids, "attention_mask": att, "assistant_mask": am}


def show_mask(tokenizer: Any, chat: ChatTokens) -> str:
    """The chat's tokens with the trained ones in [brackets]: what the SFT loss sees."""
    out = []
    for tid, m in zip(chat.input_ids, chat.assistant_mask):
        piece = tokenizer.decode([tid])
        out.append(f"[{piece}]" if m else piece)
    return "".join(out)
