"""Applications of pretrained and home-trained models: chat, summarization, a chat box, translation.

* :func:`chat_generate` — one reply of a chat model (SmolLM2) to a list of messages, through the
  model's own chat template;
* :func:`chat_stream` — the same reply, yielded piece by piece as it is generated
  (``transformers.TextIteratorStreamer``);
* :class:`ChatSession` — keeps a conversation and trims it to a token budget (the system prompt
  and the latest turns stay); :class:`ChatWidget` — an ipywidgets chat box around a session
  (Enter sends, the message shows at once, "thinking…" until the first token, the reply streams in);
* :func:`summarize` — a summary by instruction;
* translation with an encoder–decoder: :func:`number_to_words` generates exact-answer data
  ("three hundred and forty-two" → "342"), :class:`NumberTask` turns it into tensors, and
  :func:`train_translator` / :func:`translate` / :func:`exact_match` train and score a
  :class:`~course_utils.models.seq2seq.Seq2SeqTransformer` on it.

Defined in chapter 8, Applications.
"""
from __future__ import annotations

import html
import random
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch

Message = dict[str, str]
ROLES = ("system", "user", "assistant")


def _check_messages(messages: Sequence[Message]) -> None:
    if not messages:
        raise ValueError("messages is empty")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
            raise ValueError(f"message {i} must be {{'role': one of {ROLES}, 'content': str}}, got {m!r}")


def chat_prompt_ids(tokenizer: Any, messages: Sequence[Message]) -> torch.Tensor:
    """Token ids [1, T] of ``messages`` in the tokenizer's chat template, ending with the
    assistant's turn opened (``add_generation_prompt=True``)."""
    _check_messages(messages)
    text = tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
    return tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]


@torch.no_grad()
def chat_generate(model: Any, tokenizer: Any, messages: Sequence[Message], max_new_tokens: int = 80,
                  do_sample: bool = False, temperature: float = 0.7, top_p: float = 0.9,
                  repetition_penalty: float = 1.1) -> str:
    """The assistant's reply to ``messages`` (greedy unless ``do_sample``), special tokens removed.

    Defined in chapter 8, Applications.
    """
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    ids = chat_prompt_ids(tokenizer, messages).to(next(model.parameters()).device)
    kwargs = _generate_kwargs(tokenizer, max_new_tokens, do_sample, temperature, top_p, repetition_penalty)
    out = model.generate(ids, attention_mask=torch.ones_like(ids), **kwargs)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


def _generate_kwargs(tokenizer: Any, max_new_tokens: int, do_sample: bool, temperature: float, top_p: float,
                     repetition_penalty: float) -> dict[str, Any]:
    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, do_sample=do_sample,
                                  repetition_penalty=repetition_penalty,
                                  pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    if do_sample:
        kwargs.update(temperature=temperature, top_p=top_p)
    return kwargs


def chat_stream(model: Any, tokenizer: Any, messages: Sequence[Message], max_new_tokens: int = 80,
                do_sample: bool = False, temperature: float = 0.7, top_p: float = 0.9,
                repetition_penalty: float = 1.1) -> Iterator[str]:
    """Yield the assistant's reply to ``messages`` in pieces as the model generates them.

    ``model.generate`` runs in a background thread and feeds a ``transformers.TextIteratorStreamer``
    (prompt and special tokens skipped); joined, the pieces are :func:`chat_generate`'s text before
    its ``strip()``. An exception in generation is raised here, after the pieces produced so far.
    Defined in chapter 8, Applications.
    """
    from transformers import TextIteratorStreamer

    if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be a positive int, got {max_new_tokens!r}")
    ids = chat_prompt_ids(tokenizer, messages).to(next(model.parameters()).device)
    kwargs = _generate_kwargs(tokenizer, max_new_tokens, do_sample, temperature, top_p, repetition_penalty)
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    failure: list[BaseException] = []

    def work() -> None:
        try:
            with torch.no_grad():
                model.generate(ids, attention_mask=torch.ones_like(ids), streamer=streamer, **kwargs)
        except BaseException as exc:  # handed to the reader below, which would otherwise wait forever
            failure.append(exc)
            streamer.end()

    thread = threading.Thread(target=work, name="chat_stream", daemon=True)
    thread.start()
    for piece in streamer:
        if piece:
            yield piece
    thread.join()
    if failure:
        raise failure[0]


@dataclass
class ChatSession:
    """A conversation with a chat model that fits a context budget.

    ``history`` holds every turn; :meth:`context` is what the model sees: the system prompt and
    the longest run of latest messages whose chat-template length is at most ``max_context_tokens``
    (older turns are dropped first; the newest message is always kept).
    ``count_tokens`` (messages → int) defaults to the tokenizer's chat-template length.
    Defined in chapter 8, Applications.
    """

    model: Any
    tokenizer: Any
    system_prompt: str = "You are a helpful assistant. Answer briefly."
    max_context_tokens: int = 512
    max_new_tokens: int = 80
    count_tokens: Callable[[list[Message]], int] | None = None
    history: list[Message] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not isinstance(self.max_context_tokens, int) or self.max_context_tokens < 1:
            raise ValueError(f"max_context_tokens must be a positive int, got {self.max_context_tokens!r}")
        if not isinstance(self.system_prompt, str):
            raise TypeError("system_prompt must be a string")

    def n_tokens(self, messages: list[Message]) -> int:
        if self.count_tokens is not None:
            return int(self.count_tokens(messages))
        return int(chat_prompt_ids(self.tokenizer, messages).shape[1])

    def context(self) -> list[Message]:
        """System prompt + the latest messages that fit in ``max_context_tokens``."""
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        kept: list[Message] = []
        for message in reversed(self.history):
            trial = [message] + kept
            if kept and self.n_tokens(system + trial) > self.max_context_tokens:
                break
            kept = trial
        while len(kept) > 1 and kept[0]["role"] == "assistant":  # start on a user turn
            kept = kept[1:]
        return system + kept

    def add(self, role: str, content: str) -> None:
        _check_messages([{"role": role, "content": content}])
        if role == "system":
            raise ValueError("set system_prompt instead of adding a system message")
        self.history.append({"role": role, "content": content})

    def send(self, text: str) -> str:
        """Add the user's ``text``, generate the reply from the trimmed context, keep both."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("the message must be a non-empty string")
        self.add("user", text.strip())
        reply = chat_generate(self.model, self.tokenizer, self.context(), max_new_tokens=self.max_new_tokens)
        self.add("assistant", reply)
        return reply

    def stream(self, text: str) -> Iterator[str]:
        """Like :meth:`send`, but yield the reply in pieces as it is generated; the user's message
        is in :attr:`history` before the first piece, the whole reply (stripped) after the last."""
        if not isinstance(text, str) or not text.strip():
            raise ValueError("the message must be a non-empty string")
        self.add("user", text.strip())
        yield from self.stream_reply()

    def stream_reply(self) -> Iterator[str]:
        """Generate the reply to the conversation so far (it must end with a user message), yield
        it in pieces, and keep it (stripped) in :attr:`history` once it is complete."""
        if not self.history or self.history[-1]["role"] != "user":
            raise ValueError("the conversation must end with a user message to reply to")
        pieces: list[str] = []
        for piece in chat_stream(self.model, self.tokenizer, self.context(), max_new_tokens=self.max_new_tokens):
            pieces.append(piece)
            yield piece
        self.add("assistant", "".join(pieces).strip())

    def clear(self) -> None:
        """Forget the conversation (the system prompt stays)."""
        self.history.clear()


def summarize(text: str, model: Any, tokenizer: Any, max_words: int = 40, max_new_tokens: int = 80) -> str:
    """A summary of ``text`` in about ``max_words`` words, written by an instruction-tuned model.

    Defined in chapter 8, Applications.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("text must be a non-empty string")
    if not isinstance(max_words, int) or max_words < 1:
        raise ValueError(f"max_words must be a positive int, got {max_words!r}")
    # The text first, fenced, and the instruction after it. With the instruction first, SmolLM2-135M
    # answered a Midsummer Night's Dream passage with "Catchy summary!"; asked after the text, it
    # summarised what the passage is about (chapter 8, laptop run of 2026-11-24).
    messages = [{"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": f'Text:\n"""\n{text.strip()}\n"""\n\n'
                                            f"Summarize this text in one or two plain sentences "
                                            f"(at most {max_words} words)."}]
    return chat_generate(model, tokenizer, messages, max_new_tokens=max_new_tokens)


class ChatWidget:
    """An ipywidgets chat box around a :class:`ChatSession`: transcript, text field, Send, Clear.

    It behaves like a chat: Enter (or Send) sends; the message shows at once with a
    "thinking…" bubble; the reply streams in token by token (:meth:`ChatSession.stream_reply`);
    Send and the text field are disabled while the model generates; Clear forgets the
    conversation. ``display(widget.box)`` shows it. Enter and Send call :meth:`on_send` after
    ``sync_delay`` seconds in a background thread (see :meth:`_request_send`; ``0``: at once, in
    the caller's thread); a headless run calls :meth:`on_send` directly.
    Defined in chapter 8, Applications.
    """

    THINKING = "thinking…"

    def __init__(self, session: ChatSession, sync_delay: float = 0.3):
        import ipywidgets as widgets

        if not isinstance(session, ChatSession):
            raise TypeError(f"session must be a ChatSession, got {type(session).__name__}")
        if not isinstance(sync_delay, (int, float)) or not 0 <= sync_delay <= 5:
            raise ValueError(f"sync_delay must be a number of seconds in [0, 5], got {sync_delay!r}")
        self.session = session
        self.sync_delay = float(sync_delay)
        self._busy = False
        self._lock = threading.Lock()   # one reply at a time, whichever thread asks
        self.text = widgets.Text(placeholder="Type a message and press Enter",
                                 layout=widgets.Layout(width="70%"))
        self.button = widgets.Button(description="Send", button_style="primary", tooltip="send (Enter)")
        self.clear_button = widgets.Button(description="Clear", tooltip="forget the conversation")
        self.status = widgets.HTML(value="")
        self.transcript = widgets.HTML(value=self.render())
        self.button.on_click(self._request_send)
        self.clear_button.on_click(self.on_clear)
        self.text.on_msg(self._on_text_msg)   # Enter: the front end sends {"event": "submit"}
        self.box = widgets.VBox([self.transcript, widgets.HBox([self.text, self.button, self.clear_button]),
                                 self.status])
        self.box.add_class("cu-chat")

    @property
    def busy(self) -> bool:
        """True while a reply is being generated."""
        return self._busy

    @staticmethod
    def _bubble(who: str, text_html: str) -> str:
        align, color = ("right", "#e3f2fd") if who == "you" else ("left", "#f1f8e9")
        return (f'<div class="cu-chat-{"user" if who == "you" else "assistant"}" style="text-align:{align};margin:4px">'
                f'<span style="background:{color};padding:4px 8px;border-radius:8px;display:inline-block;'
                f'max-width:80%;white-space:pre-wrap"><b>{who}:</b> {text_html}</span></div>')

    def render(self, pending: str | None = None) -> str:
        """The transcript as HTML (user on the right, assistant on the left, text escaped).

        ``pending``: the reply being generated (``""``: not started, shown as "thinking…")."""
        rows = [self._bubble("you" if m["role"] == "user" else "assistant", html.escape(m["content"]))
                for m in self.session.history]
        if pending is not None:
            rows.append(self._bubble("assistant", f"{html.escape(pending)}▌" if pending
                                     else f'<i class="cu-chat-thinking">{self.THINKING}</i>'))
        return '<div class="cu-chat-transcript">' + ("".join(rows) or "<i>(no messages yet)</i>") + "</div>"

    def _set_busy(self, busy: bool) -> None:
        self._busy = busy
        self.button.disabled = self.text.disabled = self.clear_button.disabled = busy
        self.status.value = f"<i>{self.THINKING}</i>" if busy else ""

    def _on_text_msg(self, _widget: Any, content: dict, _buffers: Any) -> None:
        if isinstance(content, dict) and content.get("event") == "submit":
            self._request_send()

    def _request_send(self, _button: Any = None) -> None:
        """Enter or Send: send after ``sync_delay`` seconds, in a background thread.

        The browser sends Enter and clicks at once, but holds back the text field's latest value
        while the kernel has not acknowledged the previous one (ipywidgets' throttling); read at
        once, the value can be a few keystrokes short (measured in the browser test: "N" for
        "Name a colour."). The delay lets the value arrive; the thread keeps the kernel free to
        process it, and the reply streams from there.
        """
        if self.sync_delay == 0:
            self.on_send()
            return
        timer = threading.Timer(self.sync_delay, self.on_send)
        timer.daemon = True
        timer.start()

    def on_send(self, _button: Any = None) -> None:
        """Send the text field's message (nothing when it is empty or a reply is being generated)."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            message = self.text.value.strip()
            if message:
                self._reply_to(message)
        finally:
            self._lock.release()

    def _reply_to(self, message: str) -> None:
        self._set_busy(True)
        self.text.value = ""
        self.session.add("user", message)
        self.transcript.value = self.render(pending="")   # the message at once, then "thinking…"
        pending, error = "", ""
        try:
            for piece in self.session.stream_reply():
                pending += piece
                self.transcript.value = self.render(pending=pending)
        except Exception as exc:  # shown in the box: a callback's exception would go to the log only
            error = f"{type(exc).__name__}: {exc}"
        finally:
            self._set_busy(False)
            self.transcript.value = self.render()
            if error:
                self.status.value = f'<span class="cu-chat-error" style="color:#b00">no reply: {html.escape(error)}</span>'

    def on_clear(self, _button: Any = None) -> None:
        """Forget the conversation and empty the transcript (ignored while busy)."""
        if self._busy:
            return
        self.session.clear()
        self.transcript.value = self.render()


# ------------------------------------------------------------------ translation: words → digits
_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
         "fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
MAX_NUMBER = 999_999


def _below_thousand(n: int) -> str:
    hundreds, rest = divmod(n, 100)
    words = f"{_ONES[hundreds]} hundred" if hundreds else ""
    if rest:
        tens, ones = divmod(rest, 10)
        tail = _ONES[rest] if rest < 20 else _TENS[tens] + (f"-{_ONES[ones]}" if ones else "")
        words = f"{words} and {tail}" if words else tail
    return words


def number_to_words(n: int) -> str:
    """British English words for ``0 <= n <= 999,999``: 342 → "three hundred and forty-two",
    1005 → "one thousand and five". Defined in chapter 8, Applications."""
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= MAX_NUMBER:
        raise ValueError(f"n must be an int in [0, {MAX_NUMBER}], got {n!r}")
    if n == 0:
        return "zero"
    thousands, rest = divmod(n, 1000)
    parts = [f"{_below_thousand(thousands)} thousand"] if thousands else []
    if rest:
        parts.append(("and " if thousands and rest < 100 else "") + _below_thousand(rest))
    return " ".join(parts)


def number_splits(n_train: int, n_test: int, max_value: int = MAX_NUMBER, seed: int = 0) -> tuple[list[int], list[int]]:
    """Disjoint random numbers in [0, max_value]: the test numbers are never seen in training."""
    if not 0 < max_value <= MAX_NUMBER:
        raise ValueError(f"max_value must be in [1, {MAX_NUMBER}], got {max_value}")
    if n_train < 1 or n_test < 1 or n_train + n_test > max_value + 1:
        raise ValueError(f"need 1 <= n_train, n_test and n_train + n_test <= {max_value + 1}; "
                         f"got {n_train} + {n_test}")
    numbers = random.Random(seed).sample(range(max_value + 1), n_train + n_test)
    return numbers[n_test:], numbers[:n_test]


PAD, BOS, EOS = 0, 1, 2
SPECIALS = ("<pad>", "<bos>", "<eos>")


class NumberTask:
    """Vocabularies and tensors for words → digits. Source tokens are words (hyphens split:
    "forty-two" → forty, two); target tokens are digits. Ids 0/1/2 are pad/bos/eos in both.
    Defined in chapter 8, Applications."""

    def __init__(self) -> None:
        words = sorted(set(_ONES + _TENS[2:] + ["hundred", "thousand", "and"]))
        self.src_vocab = list(SPECIALS) + words
        self.tgt_vocab = list(SPECIALS) + list("0123456789")
        self.src_index = {w: i for i, w in enumerate(self.src_vocab)}
        self.tgt_index = {c: i for i, c in enumerate(self.tgt_vocab)}
        self.max_src_len = len(self.source_tokens(777_777)) + 1  # the longest numeral, + eos
        self.max_tgt_len = len(str(MAX_NUMBER)) + 2  # bos + digits + eos

    @staticmethod
    def source_tokens(n: int) -> list[str]:
        return number_to_words(n).replace("-", " ").split()

    def encode(self, numbers: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(src [B, S] word ids + eos, padded; tgt [B, T] bos + digit ids + eos, padded)."""
        if len(numbers) == 0:
            raise ValueError("numbers is empty")
        src = torch.full((len(numbers), self.max_src_len), PAD, dtype=torch.long)
        tgt = torch.full((len(numbers), self.max_tgt_len), PAD, dtype=torch.long)
        for i, n in enumerate(numbers):
            s = [self.src_index[w] for w in self.source_tokens(n)] + [EOS]
            t = [BOS] + [self.tgt_index[c] for c in str(n)] + [EOS]
            src[i, :len(s)] = torch.tensor(s)
            tgt[i, :len(t)] = torch.tensor(t)
        return src, tgt

    def decode_target(self, ids: Sequence[int]) -> str:
        """Digits of a generated id sequence, stopping at eos (bos and pad skipped)."""
        out = []
        for i in (int(x) for x in ids):
            if i == EOS:
                break
            if i > EOS:
                out.append(self.tgt_vocab[i])
        return "".join(out)


def make_translator(task: NumberTask, n_layer: int = 2, n_head: int = 4, n_embd: int = 128,
                    dropout: float = 0.0):
    """A :class:`~course_utils.models.seq2seq.Seq2SeqTransformer` sized for ``task``'s vocabularies."""
    from .models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer

    cfg = Seq2SeqConfig(src_vocab_size=len(task.src_vocab), tgt_vocab_size=len(task.tgt_vocab),
                        max_len=max(task.max_src_len, task.max_tgt_len), n_layer=n_layer, n_head=n_head,
                        n_embd=n_embd, dropout=dropout)
    return Seq2SeqTransformer(cfg)


def translation_batch(task: NumberTask, numbers: Sequence[int], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """Model inputs for ``numbers``: src [B, S], src_mask [B, S], tgt_in [B, T-1], labels [B, T-1]
    (the target shifted left, pads → -100 so the loss ignores them)."""
    src, tgt = task.encode(numbers)
    labels = tgt[:, 1:].clone()
    labels[labels == PAD] = -100
    batch = {"src": src, "src_mask": (src != PAD).long(), "tgt_in": tgt[:, :-1], "labels": labels}
    return {k: v.to(device) for k, v in batch.items()}


def train_translator(model: torch.nn.Module, task: NumberTask, numbers: Sequence[int], steps: int,
                     batch_size: int = 64, lr: float = 1e-3, warmup: int = 20, seed: int = 0,
                     progress: bool = True) -> list[float]:
    """Teacher-forced training on shuffled batches of ``numbers`` (AdamW, warm-up then cosine decay).

    Returns the loss of every step. Defined in chapter 8, Applications.
    """
    import math

    if not isinstance(steps, int) or steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be positive ints, got {steps!r}, {batch_size!r}")
    if len(numbers) == 0:
        raise ValueError("numbers is empty")
    rng = random.Random(seed)
    device = next(model.parameters()).device
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, warmup))
                                              * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    model.train()
    losses: list[float] = []
    it: Any = range(steps)
    if progress:
        from tqdm.auto import tqdm
        it = tqdm(it, desc="training", unit="step")
    pool: list[int] = []
    for _ in it:
        if len(pool) < batch_size:  # epochs: every number once, in a new order each time
            pool += rng.sample(list(numbers), len(numbers))
        picked, pool = pool[:batch_size], pool[batch_size:]
        batch = translation_batch(task, picked, device)
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if progress and len(losses) % 20 == 0:
            it.set_postfix(loss=f"{sum(losses[-20:]) / 20:.3f}")
    model.eval()
    return losses


@torch.no_grad()
def translate(model: Any, task: NumberTask, numbers: Sequence[int], batch_size: int = 512) -> list[str]:
    """Greedy translations (digit strings) of ``numbers`` written in words."""
    device = next(model.parameters()).device
    out: list[str] = []
    for i in range(0, len(numbers), batch_size):
        b = translation_batch(task, numbers[i:i + batch_size], device)
        ids = model.greedy_decode(b["src"], bos_id=BOS, eos_id=EOS, max_len=task.max_tgt_len,
                                  src_mask=b["src_mask"])
        out += [task.decode_target(row[1:]) for row in ids.tolist()]
    return out


def exact_match(model: Any, task: NumberTask, numbers: Sequence[int]) -> float:
    """Fraction of ``numbers`` whose translation is exactly right. Defined in chapter 8, Applications."""
    if len(numbers) == 0:
        raise ValueError("numbers is empty")
    return sum(p == str(n) for p, n in zip(translate(model, task, numbers), numbers)) / len(numbers)


@torch.no_grad()
def cross_attention(model: Any, task: NumberTask, n: int, layer: int = -1) -> tuple[list[str], list[str], torch.Tensor]:
    """(source words, generated digits, weights [T, S]) of one translation: the cross-attention
    of decoder ``layer`` averaged over heads, rows = generated tokens (eos included)."""
    b = translation_batch(task, [n], next(model.parameters()).device)
    ids = model.greedy_decode(b["src"], bos_id=BOS, eos_id=EOS, max_len=task.max_tgt_len, src_mask=b["src_mask"])
    ids = ids[:, : next((i + 1 for i, t in enumerate(ids[0].tolist()) if t == EOS), ids.size(1))]
    out = model(b["src"], ids[:, :-1], src_mask=b["src_mask"], output_attentions=True)
    s = int(b["src_mask"].sum())
    weights = out.cross_attentions[layer][0].mean(0)[:, :s].cpu()  # [T, S]
    return task.source_tokens(n) + ["<eos>"], [task.tgt_vocab[i] for i in ids[0, 1:].tolist()], weights
