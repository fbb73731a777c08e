"""Tests of course_utils.apps: chat generation, ChatSession trimming, summarize, the chat widget."""
from __future__ import annotations

import html

import pytest
import torch

from course_utils import apps
from course_utils.apps import ChatSession, ChatWidget


def _words(messages: list[dict]) -> int:
    """A stand-in token counter: one token per word, plus two per message (role markers)."""
    return sum(len(m["content"].split()) + 2 for m in messages)


def _session(budget: int, turns: int) -> ChatSession:
    s = ChatSession(model=None, tokenizer=None, system_prompt="be kind", max_context_tokens=budget,
                    count_tokens=_words)
    for i in range(turns):
        s.add("user", f"question {i} here")
        s.add("assistant", f"answer {i}")
    return s


def test_trimming_keeps_system_prompt_and_latest_turns() -> None:
    s = _session(budget=25, turns=5)  # system 4 tokens; a user msg 5, an assistant msg 4
    ctx = s.context()
    assert ctx[0] == {"role": "system", "content": "be kind"}
    assert ctx[1:] == s.history[-len(ctx) + 1:], "the kept messages are the latest ones, in order"
    assert ctx[1]["role"] == "user", "the kept part starts on a user turn"
    assert _words(ctx) <= 25 and len(ctx) - 1 < len(s.history)
    assert ctx[-1]["content"] == "answer 4"
    # a larger budget keeps everything
    assert _session(budget=1000, turns=5).context()[1:] == _session(budget=1000, turns=5).history


def test_newest_message_kept_even_over_budget() -> None:
    s = _session(budget=3, turns=2)
    s.add("user", "a very long question that is far over the tiny budget")
    ctx = s.context()
    assert [m["role"] for m in ctx] == ["system", "user"] and ctx[-1] == s.history[-1]


def test_session_bad_input() -> None:
    with pytest.raises(ValueError, match="max_context_tokens"):
        ChatSession(None, None, max_context_tokens=0)
    s = _session(budget=50, turns=0)
    with pytest.raises(ValueError, match="system_prompt"):
        s.add("system", "x")
    with pytest.raises(ValueError, match="role"):
        s.add("robot", "x")
    with pytest.raises(ValueError, match="non-empty"):
        s.send("   ")


def test_chat_generate_rejects_bad_messages() -> None:
    with pytest.raises(ValueError, match="empty"):
        apps.chat_prompt_ids(None, [])
    with pytest.raises(ValueError, match="role"):
        apps.chat_prompt_ids(None, [{"role": "user"}])
    with pytest.raises(ValueError, match="max_new_tokens"):
        apps.chat_generate(None, None, [{"role": "user", "content": "hi"}], max_new_tokens=0)
    with pytest.raises(ValueError, match="text"):
        apps.summarize("", None, None)


@pytest.fixture(scope="module")
def smollm2():
    from course_utils import pretrained

    return pretrained.load_smollm2()


def test_real_session_widget_and_summary(smollm2) -> None:
    """One SmolLM2 load: a chat turn through the widget's click handler, a short summary."""
    model, tokenizer = smollm2
    session = ChatSession(model, tokenizer, max_context_tokens=40, max_new_tokens=4)
    widget = ChatWidget(session, sync_delay=0)
    assert "no messages yet" in widget.transcript.value
    widget.text.value = "Say hello <b>please</b>"
    widget.on_send(widget.button)  # what a click on "Send" calls
    assert [m["role"] for m in session.history] == ["user", "assistant"]
    assert session.history[0]["content"] == "Say hello <b>please</b>" and widget.text.value == ""
    assert "&lt;b&gt;please" in widget.transcript.value, "user text is HTML-escaped"
    widget.on_send(widget.button)  # an empty field sends nothing
    assert len(session.history) == 2
    widget.text.value = "And again"
    widget.button.click()  # the registered handler runs
    assert len(session.history) == 4
    # the real chat-template counter: the trimmed context fits the budget (or is the newest turn)
    ctx = session.context()
    assert ctx[0]["role"] == "system" and ctx[-1] == session.history[-1]
    assert session.n_tokens(ctx) <= 40 or len(ctx) == 2
    widget.on_clear(widget.clear_button)
    assert session.history == [] and "no messages yet" in widget.transcript.value
    summary = apps.summarize("The cat sat on the mat all day. It did not move.", model, tokenizer,
                             max_words=5, max_new_tokens=4)
    assert isinstance(summary, str) and summary
    with pytest.raises(TypeError, match="ChatSession"):
        ChatWidget("not a session")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sync_delay"):
        ChatWidget(session, sync_delay=-1)


def test_chat_stream_yields_the_generated_reply(smollm2) -> None:
    """Streamed pieces, joined, are the greedy reply of chat_generate (same tokens, same text)."""
    model, tokenizer = smollm2
    messages = [{"role": "user", "content": "Name three colours."}]
    pieces = list(apps.chat_stream(model, tokenizer, messages, max_new_tokens=12))
    assert len(pieces) >= 2, f"a reply of 12 tokens should arrive in several pieces, got {pieces!r}"
    assert "".join(pieces).strip() == apps.chat_generate(model, tokenizer, messages, max_new_tokens=12)
    with pytest.raises(ValueError, match="max_new_tokens"):
        next(apps.chat_stream(model, tokenizer, messages, max_new_tokens=0))


def _submit(text_widget) -> None:
    """What the browser sends when Enter is pressed in an ipywidgets Text."""
    text_widget._handle_msg({"content": {"data": {"method": "custom", "content": {"event": "submit"}}},
                             "buffers": []})


def test_widget_enter_sends_shows_message_at_once_and_streams(smollm2) -> None:
    model, tokenizer = smollm2
    session = ChatSession(model, tokenizer, max_context_tokens=200, max_new_tokens=10)
    widget = ChatWidget(session, sync_delay=0)
    seen: list[tuple[str, bool, bool, str]] = []   # transcript, Send disabled, field disabled, status
    widget.transcript.observe(lambda ch: seen.append((ch["new"], widget.button.disabled, widget.text.disabled,
                                                      widget.status.value)), names="value")
    widget.text.value = "What is the capital of France?"
    _submit(widget.text)   # Enter
    assert [m["role"] for m in session.history] == ["user", "assistant"]
    first = seen[0]
    assert "capital of France" in first[0] and ChatWidget.THINKING in first[0], \
        "the user's message and the thinking state show before any token"
    assert first[1] and first[2] and ChatWidget.THINKING in first[3], "Send and the field are disabled while busy"
    streamed = [t for t, *_ in seen[1:-1]]
    assert len(streamed) >= 2 and all("▌" in t for t in streamed), "the reply grows token by token"
    assert all(b and f for _, b, f, _ in seen[:-1])
    assert not widget.button.disabled and not widget.text.disabled and not widget.busy and widget.status.value == ""
    assert html.escape(session.history[1]["content"]) in widget.transcript.value and "▌" not in widget.transcript.value
    _submit(widget.text)   # Enter on an empty field sends nothing
    assert len(session.history) == 2


class _BrokenModel(torch.nn.Linear):
    def __init__(self) -> None:
        super().__init__(1, 1)

    def generate(self, *args, **kwargs):
        raise RuntimeError("out of memory (pretend)")


def test_widget_shows_a_failed_generation_and_recovers(smollm2) -> None:
    _, tokenizer = smollm2
    session = ChatSession(_BrokenModel(), tokenizer, max_context_tokens=200, max_new_tokens=4)
    with pytest.raises(RuntimeError, match="pretend"):
        list(apps.chat_stream(session.model, tokenizer, [{"role": "user", "content": "hi"}], max_new_tokens=4))
    widget = ChatWidget(session)
    widget.text.value = "hello"
    widget.on_send()
    assert "no reply: RuntimeError: out of memory (pretend)" in widget.status.value
    assert not widget.busy and not widget.button.disabled and "hello" in widget.transcript.value
    with pytest.raises(ValueError, match="end with a user message"):
        next(ChatSession(None, None).stream_reply())


def test_widget_waits_for_the_field_value_that_arrives_after_enter(smollm2) -> None:
    """In the browser, Enter can reach the kernel before the field's last keystrokes (ipywidgets
    holds a value update back until the previous one is acknowledged). The widget sends after
    ``sync_delay`` seconds, in a thread, so the whole message goes out and the field is emptied."""
    import threading
    import time

    model, tokenizer = smollm2
    session = ChatSession(model, tokenizer, max_context_tokens=200, max_new_tokens=3)
    widget = ChatWidget(session, sync_delay=0.2)
    widget.text.value = "N"              # what the kernel has when Enter arrives
    _submit(widget.text)
    widget.text.value = "Name a colour."   # the held-back update, arriving just after Enter
    deadline = time.monotonic() + 60
    while (len(session.history) < 2 or widget.busy or widget.text.value) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert session.history[0]["content"] == "Name a colour.", "the full message was sent, not its first letter"
    assert widget.text.value == "" and not widget.busy
    assert not [t for t in threading.enumerate() if t.name == "chat_stream"], "the generation thread ended"
