"""From a base model to an assistant: SFT, DPO and GRPO on a model pretrained here.

The pipeline of chapter 12, in miniature and on tasks with exact answers
(:mod:`course_utils.verifiable_tasks`):

1. **base** -- the chapter 11 Llama-style decoder and byte-level BPE, pretrained on speeches of
   the plays mixed with arithmetic written as prose (:func:`pretrain_base`). It continues text;
   it has never seen a chat.
2. **SFT** -- supervised fine-tuning on chats with the loss on the assistant's tokens only
   (:func:`train_sft`; the mask comes from :func:`course_utils.chat.tokenize_chat`).
3. **DPO** -- pairs from the SFT model's own samples judged by the verifier, chosen = correct,
   rejected = wrong (:func:`build_preference_pairs`), and the DPO loss against the frozen SFT model
   as reference (:func:`train_dpo`).
4. **GRPO** -- sample a group of answers per problem, reward them with the verifier, normalise
   the rewards within each group and push up the log-probability of better-than-average answers
   with the clipped ratio objective, optionally with a KL penalty to the SFT model (:func:`train_grpo`).

:func:`sample` generates (batched, left-padded, KV cache) and keeps the token ids RL needs;
:func:`evaluate_model` gives format rate and accuracy with 95 % intervals; :func:`sample_pass_at_k`
the pass@k of a model. :func:`load_or_train` caches every stage with
:mod:`course_utils.model_cache`, keyed by the recipe of that stage and of all before it.

The losses themselves are written out in :mod:`course_utils.post_training_losses` (and checked
against TRL's trainers there). Defined in chapter 12, Post-training.
"""
from __future__ import annotations

import copy
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from . import chat as chat_lib
from . import verifiable_tasks as vt
from .model_cache import model_dir, publish, recipe_record
from .post_training_losses import completion_logprobs as _completion_logprobs
from .post_training_losses import dpo_loss, group_advantages, grpo_loss, model_logprobs, sft_loss
from .profiles import get_profile
from .train import TrainConfig, Trainer, configure_optimizer, get_lr

STAGES: tuple[str, ...] = ("base", "sft", "dpo", "rpo", "grpo")
CACHE_PREFIX = "posttrain"


@dataclass(frozen=True)
class PostTrainingRecipe:
    """Sizes and settings of every stage for one profile (plain dicts, recorded with each model)."""

    model: dict[str, Any]
    data: dict[str, Any]
    base: dict[str, Any]
    sft: dict[str, Any]
    dpo: dict[str, Any]
    grpo: dict[str, Any]
    eval: dict[str, Any] = field(default_factory=dict)

    def task_config(self) -> dict[str, Any]:
        """reasoning-gym's settings: :data:`verifiable_tasks.TASK_CONFIG` with ``data["task"]``'s changes."""
        return {**vt.TASK_CONFIG, **self.data.get("task", {})}

    def upto(self, stage: str) -> dict[str, Any]:
        """The settings that determine ``stage``'s model: its own and every earlier stage's."""
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        keep = STAGES[: STAGES.index(stage) + 1]
        out = {"model": self.model, "data": self.data, "task": {"name": vt.TASK, **self.task_config(),
                                                                "reasoning_gym": _rg_version()}}
        out.update({s: getattr(self, s) for s in keep if hasattr(self, s)})   # "rpo" lives in dpo's settings
        return recipe_record(out)


def _rg_version() -> str:
    from importlib.metadata import version

    return version("reasoning-gym")


# The teacher of the SFT chats drops the carry on half of the sums that have one (47 + 38 -> 75):
# SFT learns that mistake, the verifier of DPO and GRPO does not make it. Laptop, measured on
# 2026-12-04 (docs/RESULTS.md §10): SFT greedy accuracy 56 %, pass@8 81 %; GRPO (150 steps) 75 %.
_TEACHER = dict(teacher_error=0.5, teacher_mistake="drop_carry")

RECIPES: dict[str, PostTrainingRecipe] = {
    # a smoke test: every stage runs a few steps; its numbers mean nothing
    "ci": PostTrainingRecipe(
        model=dict(n_layer=2, n_head=2, n_kv_heads=1, n_embd=64, intermediate_size=172, block_size=64,
                   rope_theta=10000.0, dropout=0.0),
        data=dict(vocab_size=512, play_rows=1500, n_train=1500, n_heldout=48, seed=0, **_TEACHER),
        base=dict(max_steps=60, lr=3e-3, warmup_steps=10, batch_size=16, eval_interval=30, eval_iters=4),
        sft=dict(max_steps=30, lr=2e-3, warmup_steps=5, batch_size=16, eval_interval=30, eval_iters=2),
        dpo=dict(n_prompts=48, samples=4, temperature=1.0, beta=0.1, max_steps=10, lr=2e-4, batch_size=8,
                 gold_chosen=True, rpo_alpha=1.0, rpo_lr=2e-4),
        grpo=dict(steps=4, prompts=8, group=4, temperature=1.0, lr=5e-4, epsilon=0.2, beta=0.0,
                  inner_steps=1, max_new_tokens=10),
        eval=dict(max_new_tokens=10, pass_k=4)),
    "laptop": PostTrainingRecipe(
        model=dict(n_layer=4, n_head=4, n_kv_heads=2, n_embd=128, intermediate_size=344, block_size=64,
                   rope_theta=10000.0, dropout=0.0),
        data=dict(vocab_size=2048, play_rows=4000, n_train=20000, n_heldout=500, seed=0, **_TEACHER),
        base=dict(max_steps=1500, lr=2e-3, warmup_steps=100, batch_size=24, eval_interval=300, eval_iters=10),
        sft=dict(max_steps=800, lr=1e-3, warmup_steps=30, batch_size=32, eval_interval=200, eval_iters=5),
        dpo=dict(n_prompts=4000, samples=4, temperature=1.0, beta=0.1, max_steps=150, lr=2e-5, batch_size=32,
                 gold_chosen=False, rpo_alpha=1.0, rpo_lr=1e-4),
        grpo=dict(steps=150, prompts=16, group=8, temperature=1.0, lr=1e-4, epsilon=0.2, beta=0.0,
                  inner_steps=1, max_new_tokens=10),
        eval=dict(max_new_tokens=10, pass_k=8)),
    "gpu": PostTrainingRecipe(
        model=dict(n_layer=6, n_head=6, n_kv_heads=2, n_embd=384, intermediate_size=1024, block_size=64,
                   rope_theta=10000.0, dropout=0.0),
        data=dict(vocab_size=2048, play_rows=None, n_train=50000, n_heldout=1000, seed=0, **_TEACHER),
        base=dict(max_steps=4000, lr=1e-3, warmup_steps=200, batch_size=64, eval_interval=500, eval_iters=20),
        sft=dict(max_steps=1500, lr=5e-4, warmup_steps=50, batch_size=64, eval_interval=300, eval_iters=10),
        dpo=dict(n_prompts=8000, samples=4, temperature=1.0, beta=0.1, max_steps=300, lr=2e-5, batch_size=64,
                 gold_chosen=False, rpo_alpha=1.0, rpo_lr=5e-5),
        grpo=dict(steps=400, prompts=32, group=8, temperature=1.0, lr=1e-4, epsilon=0.2, beta=0.0,
                  inner_steps=1, max_new_tokens=10),
        eval=dict(max_new_tokens=10, pass_k=8)),
}


def get_recipe(profile: str | None = None) -> PostTrainingRecipe:
    """The profile's :class:`PostTrainingRecipe`."""
    return RECIPES[get_profile(profile).name]


# ------------------------------------------------------------------------------ data
def task_splits(recipe: PostTrainingRecipe) -> tuple[list[vt.Problem], list[vt.Problem]]:
    """The recipe's (train, held-out) problems."""
    d = recipe.data
    return vt.make_splits(d["n_train"], d["n_heldout"], seed=d["seed"], config=recipe.task_config())


def base_corpus_texts(problems: Sequence[vt.Problem], play_rows: int | None, seed: int = 0,
                      per_paragraph: int = 6) -> tuple[list[str], list[str]]:
    """``(speeches, prose paragraphs)``: the plays' training speeches (the first ``play_rows``)
    and the problems as paragraphs of running text (:func:`verifiable_tasks.prose`)."""
    from .llama_pretraining import speech_rows
    from .pretraining import shakespeare_row_text

    rng = random.Random(seed)
    speeches = [shakespeare_row_text(r) for r in speech_rows("train", play_rows)]
    sentences = [vt.prose(p, rng) for p in problems]
    paragraphs = [" ".join(sentences[i:i + per_paragraph]) + "\n\n" for i in range(0, len(sentences), per_paragraph)]
    return speeches, paragraphs


def interleave_ids(tokenizer: Any, texts_a: Sequence[str], texts_b: Sequence[str], seed: int = 0) -> torch.Tensor:
    """One id stream [N] of two text collections shuffled together, each text whole."""
    from .llama_pretraining import encode_plain

    enc = encode_plain(tokenizer)
    texts = list(texts_a) + list(texts_b)
    random.Random(seed).shuffle(texts)
    return torch.tensor([i for t in texts for i in enc(t)], dtype=torch.long)


def chat_examples(tokenizer: Any, problems: Sequence[vt.Problem],
                  answers: Sequence[str] | None = None) -> list[chat_lib.ChatTokens]:
    """Each problem as a tokenized chat with its answer (the reference, or ``answers[i]``, e.g. a
    teacher's) and the assistant mask."""
    if answers is not None and len(answers) != len(problems):
        raise ValueError(f"{len(answers)} answers for {len(problems)} problems")
    return [chat_lib.tokenize_chat(tokenizer, vt.to_chat(p, answer=None if answers is None else answers[i]))
            for i, p in enumerate(problems)]


def sft_answers(recipe: "PostTrainingRecipe", problems: Sequence[vt.Problem]) -> list[str]:
    """The answers of the SFT chats, written by the recipe's teacher: ``data["teacher_error"]`` and
    ``data["teacher_mistake"]`` (see :func:`verifiable_tasks.teacher_answers`)."""
    return vt.teacher_answers(problems, recipe.data.get("teacher_error", 0.0), seed=recipe.data["seed"],
                              mistake=recipe.data.get("teacher_mistake", "off_by_one"))


class ChatBatches:
    """Random batches of examples for :class:`course_utils.train.Trainer` (a ``BatchSource``).

    ``collate(list of examples) -> batch``; ``eval_batches(n)`` are the first ``n`` batches of a
    fixed order, the same at every evaluation.
    """

    def __init__(self, examples: Sequence[Any], batch_size: int, collate: Callable[[list[Any]], Any],
                 seed: int = 0) -> None:
        if not examples:
            raise ValueError("ChatBatches needs at least one example")
        self.examples, self.batch_size, self.collate = list(examples), batch_size, collate
        self.generator = torch.Generator().manual_seed(seed)

    def next_batch(self) -> Any:
        idx = torch.randint(len(self.examples), (self.batch_size,), generator=self.generator)
        return self.collate([self.examples[i] for i in idx.tolist()])

    def eval_batches(self, n: int):
        for i in range(n):
            chunk = [self.examples[(i * self.batch_size + j) % len(self.examples)] for j in range(self.batch_size)]
            yield self.collate(chunk)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def im_end_id(tokenizer: Any) -> int:
    """The id of ``<|im_end|>``, the token that ends an assistant turn (generation stops there)."""
    return tokenizer.convert_tokens_to_ids(chat_lib.IM_END)


# ------------------------------------------------------------------------------ log-probabilities
def sequence_token_logprobs(model: torch.nn.Module, input_ids: torch.Tensor,
                            attention_mask: torch.Tensor) -> torch.Tensor:
    """log p(input_ids[:, t] | input_ids[:, :t]) for t >= 1 -> [B, T-1] (any padding side)."""
    return model_logprobs(model, input_ids, attention_mask)


def sft_batch_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """SFT loss of a :func:`course_utils.chat.pad_chats` batch (assistant tokens only)."""
    logits = model(batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return sft_loss(logits.float(), batch["input_ids"], batch["assistant_mask"])


# ------------------------------------------------------------------------------ generation
@dataclass
class Samples:
    """Completions of a batch of prompts: ``sequences`` [B, P + C] (prompts left-padded to P),
    ``attention_mask`` [B, P + C], ``completion_mask`` [B, C] (1 up to and including the first
    ``<|im_end|>``), ``texts`` (the replies, without the marker) and the ``problems``."""

    sequences: torch.Tensor
    attention_mask: torch.Tensor
    completion_mask: torch.Tensor
    prompt_len: int
    texts: list[str]
    problems: list[vt.Problem]


@torch.no_grad()
def sample(model: Any, tokenizer: Any, problems: Sequence[vt.Problem], *, n: int = 1, temperature: float = 0.0,
           max_new_tokens: int = 10, batch_size: int = 256, generator: torch.Generator | None = None) -> Samples:
    """``n`` completions of each problem's chat prompt (row ``i * n + j`` is sample ``j`` of problem
    ``i``); greedy when ``temperature == 0``. Stops at ``<|im_end|>``."""
    from .chat import render_chat

    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    stop = im_end_id(tokenizer)
    pad = _pad_id(tokenizer)
    device = next(model.parameters()).device
    prompts = [render_chat(vt.to_chat(p, with_answer=False), add_generation_prompt=True) for p in problems]
    enc = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in prompts for _ in range(n)]
    P = max(len(e) for e in enc)
    rows, masks = [], []
    for start in range(0, len(enc), batch_size):
        chunk = enc[start:start + batch_size]
        ids = torch.full((len(chunk), P), pad, dtype=torch.long)
        att = torch.zeros(len(chunk), P, dtype=torch.long)
        for i, e in enumerate(chunk):
            ids[i, P - len(e):] = torch.tensor(e)
            att[i, P - len(e):] = 1
        out = model.generate(ids.to(device), max_new_tokens, attention_mask=att.to(device), temperature=temperature,
                             eos_token_id=stop, generator=generator).cpu()
        if out.size(1) < P + max_new_tokens:   # every row stopped early: pad to a common width
            out = torch.cat((out, torch.full((out.size(0), P + max_new_tokens - out.size(1)), stop)), dim=1)
        rows.append(out)
        masks.append(att)
    seqs = torch.cat(rows)
    comp = seqs[:, P:]
    is_stop = comp == stop
    before_stop = (is_stop.cumsum(1) - is_stop.long()) == 0            # up to and including the first stop
    completion_mask = before_stop.long()
    attention = torch.cat((torch.cat(masks), completion_mask), dim=1)
    texts = [tokenizer.decode(c[m.bool()].tolist(), skip_special_tokens=False) for c, m in zip(comp, completion_mask)]
    texts = [vt.completion_text(t) for t in texts]
    return Samples(seqs, attention, completion_mask, P, texts, [p for p in problems for _ in range(n)])


def completion_logprobs(model: torch.nn.Module, s: Samples) -> torch.Tensor:
    """Per-token log-probabilities of the completions of ``s`` under ``model`` -> [B, C]
    (zero where ``completion_mask`` is 0)."""
    P, dev = s.prompt_len, next(model.parameters()).device
    seq, att, cm = s.sequences.to(dev), s.attention_mask.to(dev), s.completion_mask.to(dev)
    lp = _completion_logprobs(model, seq[:, :P], att[:, :P], seq[:, P:], cm)
    return lp * cm


# ------------------------------------------------------------------------------ evaluation
def evaluate_model(model: Any, tokenizer: Any, problems: Sequence[vt.Problem], max_new_tokens: int = 10,
                   batch_size: int = 256) -> dict[str, Any]:
    """Greedy answers to ``problems``: ``format_rate``, ``accuracy`` (exact answers), their 95 %
    Wilson intervals, per-problem ``correct`` flags, ``examples`` and ``seconds``."""
    start = time.perf_counter()
    s = sample(model, tokenizer, problems, max_new_tokens=max_new_tokens, batch_size=batch_size)
    rewards = vt.score(s.texts, s.problems)
    n, k = len(problems), int(rewards.sum())
    f = sum(vt.format_ok(t) for t in s.texts)
    return {"n": n, "format_rate": f / n, "format_ci": vt.wilson_interval(f, n),
            "accuracy": k / n, "accuracy_ci": vt.wilson_interval(k, n),
            "correct": [bool(r) for r in rewards.tolist()], "examples": list(zip([p.question for p in problems], s.texts)),
            "seconds": time.perf_counter() - start}


def sample_pass_at_k(model: Any, tokenizer: Any, problems: Sequence[vt.Problem], k: int, temperature: float = 1.0,
                     max_new_tokens: int = 10, seed: int = 0) -> dict[int, float]:
    """pass@j for j = 1, 2, 4, ... k: the chance that at least one of j samples (temperature
    ``temperature``) is correct, estimated without bias from k samples per problem."""
    g = torch.Generator().manual_seed(seed)
    s = sample(model, tokenizer, problems, n=k, temperature=temperature, max_new_tokens=max_new_tokens, generator=g)
    correct = vt.score(s.texts, s.problems).view(len(problems), k).sum(1).long().tolist()
    js = sorted({1, *[2 ** i for i in range(1, k.bit_length()) if 2 ** i <= k], k})
    return {j: sum(vt.pass_at_k(k, c, j) for c in correct) / len(problems) for j in js}


# ------------------------------------------------------------------------------ stage 1: base
def pretrain_base(recipe: PostTrainingRecipe, problems: Sequence[vt.Problem], heldout: Sequence[vt.Problem],
                  progress: bool = True) -> tuple[Any, Any, dict[str, list[float]]]:
    """Train the chapter 11 BPE on the plays, then the Llama-style model on plays + arithmetic
    prose -> ``(model, tokenizer with the chat template, history)``."""
    from .llama_pretraining import train_shakespeare_bpe
    from .models.llama import LlamaConfig, LlamaForCausalLM
    from .pretraining import fit_causal_lm

    d = recipe.data
    tok = chat_lib.with_chat_template(train_shakespeare_bpe(d["vocab_size"], d["play_rows"]))
    speeches, paragraphs = base_corpus_texts(problems, d["play_rows"], seed=d["seed"])
    val_speeches, val_paragraphs = base_corpus_texts(heldout, 400, seed=d["seed"] + 1)
    train_ids = interleave_ids(tok, speeches, paragraphs, seed=d["seed"])
    val_ids = interleave_ids(tok, val_speeches[:200], val_paragraphs, seed=d["seed"] + 1)
    cfg = TrainConfig(**recipe.base, progress=progress, weight_decay=0.1, grad_clip=1.0)
    torch.manual_seed(cfg.seed)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), **recipe.model))
    model, history = fit_causal_lm(model, cfg, train_ids, val_ids, recipe.model["block_size"])
    return model, tok, history


# ------------------------------------------------------------------------------ stage 2: SFT
def train_sft(model: Any, tokenizer: Any, recipe: PostTrainingRecipe, problems: Sequence[vt.Problem],
              heldout: Sequence[vt.Problem], progress: bool = True,
              all_tokens: bool = False) -> tuple[Any, dict[str, list[float]]]:
    """Supervised fine-tuning of a copy of ``model`` on the problems as chats, the loss on the
    assistant's tokens only (on every token with ``all_tokens``, the exercise's contrast) ->
    ``(model, history)``. Validation: held-out chats, assistant tokens."""
    pad = _pad_id(tokenizer)
    collate = lambda ex: chat_lib.pad_chats(ex, pad)                                      # noqa: E731
    examples = chat_examples(tokenizer, problems, sft_answers(recipe, problems))
    if all_tokens:
        examples = [chat_lib.ChatTokens(c.input_ids, [1] * len(c.input_ids)) for c in examples]
    train = ChatBatches(examples, recipe.sft["batch_size"], collate, seed=1)
    val = ChatBatches(chat_examples(tokenizer, heldout), recipe.sft["batch_size"], collate, seed=2)
    cfg = TrainConfig(**recipe.sft, progress=progress, weight_decay=0.0, grad_clip=1.0)
    trainer = Trainer(copy.deepcopy(model), cfg, train, val, loss_fn=sft_batch_loss)
    history = trainer.fit()
    return trainer.unwrapped_model.cpu().eval(), history


# ------------------------------------------------------------------------------ stage 3: DPO
@dataclass
class PreferencePairs:
    """Chosen and rejected completions of the same prompts, as token sequences with the
    completion marked (``chosen[i]``, ``rejected[i]`` share a prompt), and the reference model's
    summed log-probabilities of each completion."""

    chosen: list[chat_lib.ChatTokens]
    rejected: list[chat_lib.ChatTokens]
    questions: list[str]
    chosen_texts: list[str]
    rejected_texts: list[str]
    ref_chosen: torch.Tensor | None = None
    ref_rejected: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.chosen)


def build_preference_pairs(model: Any, tokenizer: Any, problems: Sequence[vt.Problem], samples: int = 4,
                           temperature: float = 1.0, max_new_tokens: int = 10, seed: int = 0,
                           gold_chosen: bool = False) -> PreferencePairs:
    """Sample ``samples`` answers per problem from ``model``; where the verifier finds both a
    correct and a wrong one, the pair (first correct, first wrong) is kept. Problems the model
    always or never solves give no pair: they carry no preference.

    ``gold_chosen`` also pairs a problem the model never solved with its reference answer as the
    chosen reply (off-policy; the ``ci`` smoke test needs it, its model solves nothing)."""
    g = torch.Generator().manual_seed(seed)
    s = sample(model, tokenizer, problems, n=samples, temperature=temperature, max_new_tokens=max_new_tokens,
               generator=g)
    rewards = vt.score(s.texts, s.problems).view(len(problems), samples)
    P = s.prompt_len
    pairs = PreferencePairs([], [], [], [], [])

    def tokens(row: int) -> chat_lib.ChatTokens:
        keep = s.attention_mask[row].bool()
        ids = s.sequences[row][keep].tolist()
        n_prompt = int(s.attention_mask[row, :P].sum())
        return chat_lib.ChatTokens(ids, [0] * n_prompt + [1] * (len(ids) - n_prompt))

    def gold(i: int, p: vt.Problem) -> chat_lib.ChatTokens:
        n_prompt = int(s.attention_mask[i * samples, :P].sum())
        prompt = tokens(i * samples).input_ids[:n_prompt]
        reply = tokenizer(vt.ANSWER_TEMPLATE.format(answer=p.answer) + chat_lib.IM_END,
                          add_special_tokens=False)["input_ids"]
        return chat_lib.ChatTokens(prompt + reply, [0] * n_prompt + [1] * len(reply))

    for i, p in enumerate(problems):
        good = (rewards[i] == 1).nonzero().flatten().tolist()
        bad = (rewards[i] == 0).nonzero().flatten().tolist()
        if bad and (good or gold_chosen):
            b = i * samples + bad[0]
            if good:
                a = i * samples + good[0]
                pairs.chosen.append(tokens(a))
                pairs.chosen_texts.append(s.texts[a])
            else:
                pairs.chosen.append(gold(i, p))
                pairs.chosen_texts.append(vt.ANSWER_TEMPLATE.format(answer=p.answer))
            pairs.rejected.append(tokens(b))
            pairs.questions.append(p.question)
            pairs.rejected_texts.append(s.texts[b])
    return pairs


@torch.no_grad()
def pair_logprobs(model: Any, pairs: PreferencePairs, pad_id: int, batch_size: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed completion log-probabilities of every chosen and rejected sequence -> ([N], [N])."""
    model.eval()
    out = []
    for seqs in (pairs.chosen, pairs.rejected):
        parts = []
        for i in range(0, len(seqs), batch_size):
            b = chat_lib.pad_chats(seqs[i:i + batch_size], pad_id)
            lp = sequence_token_logprobs(model, b["input_ids"], b["attention_mask"])
            parts.append((lp * b["assistant_mask"][:, 1:]).sum(1))
        out.append(torch.cat(parts) if parts else torch.zeros(0))
    return out[0], out[1]


def _collate_pairs(pad_id: int) -> Callable[[list[Any]], dict[str, torch.Tensor]]:
    def collate(items: list[tuple[chat_lib.ChatTokens, chat_lib.ChatTokens, float, float]]) -> dict[str, torch.Tensor]:
        b = chat_lib.pad_chats([c for c, _, _, _ in items] + [r for _, r, _, _ in items], pad_id)
        b["ref_chosen"] = torch.tensor([rc for _, _, rc, _ in items])
        b["ref_rejected"] = torch.tensor([rr for _, _, _, rr in items])
        return b
    return collate


def dpo_batch_loss(beta: float, rpo_alpha: float = 0.0) -> Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor]:
    """The Trainer loss of a pair batch: chosen rows first, then rejected; DPO against the
    reference log-probabilities carried in the batch. ``rpo_alpha > 0`` adds that much of the
    chosen answers' mean token NLL (the SFT loss on them; TRL's ``rpo_alpha``), which keeps the
    chosen answers likely while DPO separates the pairs."""
    def loss_fn(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        lp = sequence_token_logprobs(model, batch["input_ids"], batch["attention_mask"])
        mask = batch["assistant_mask"][:, 1:]
        seq = (lp * mask).sum(1)
        n = seq.size(0) // 2
        loss = dpo_loss(seq[:n], seq[n:], batch["ref_chosen"], batch["ref_rejected"], beta)[0]
        if rpo_alpha > 0:
            loss = loss + rpo_alpha * -(seq[:n].sum() / mask[:n].sum())
        return loss
    return loss_fn


def implicit_reward_accuracy(policy: Any, reference: Any, pairs: PreferencePairs, beta: float,
                             pad_id: int) -> dict[str, float]:
    """How often DPO's implicit reward β·(log π − log π_ref) ranks the chosen answer above the
    rejected one (ties count as wrong), and the mean margin."""
    if len(pairs) == 0:
        raise ValueError("no preference pairs to score")
    pc, pr = pair_logprobs(policy, pairs, pad_id)
    rc, rr = pair_logprobs(reference, pairs, pad_id)
    margin = beta * ((pc - rc) - (pr - rr))
    k = int((margin > 0).sum())
    return {"accuracy": k / len(pairs), "ci": vt.wilson_interval(k, len(pairs)), "margin": float(margin.mean()),
            "n": len(pairs)}


def train_dpo(model: Any, tokenizer: Any, recipe: PostTrainingRecipe, pairs: PreferencePairs,
              progress: bool = True, rpo: bool = False) -> tuple[Any, dict[str, list[float]]]:
    """DPO on ``pairs`` of a copy of ``model`` (the SFT model, also the frozen reference).

    ``rpo=True`` adds ``dpo["rpo_alpha"]`` times the SFT loss on the chosen answers (at
    ``dpo["rpo_lr"]``): DPO alone may lower the chosen answers' probability too, as long as the
    rejected ones fall faster."""
    r = dict(recipe.dpo)
    if rpo:
        r.update(lr=r["rpo_lr"])
    if len(pairs) == 0:
        raise ValueError("no preference pairs: the SFT model solved every sampled problem or none; "
                         "sample more problems or at a higher temperature")
    pad = _pad_id(tokenizer)
    ref_c, ref_r = pair_logprobs(model, pairs, pad)
    items = list(zip(pairs.chosen, pairs.rejected, ref_c.tolist(), ref_r.tolist()))
    train = ChatBatches(items, r["batch_size"], _collate_pairs(pad), seed=3)
    cfg = TrainConfig(max_steps=r["max_steps"], lr=r["lr"], warmup_steps=max(1, r["max_steps"] // 10),
                      batch_size=r["batch_size"], eval_interval=r["max_steps"], eval_iters=1,
                      weight_decay=0.0, grad_clip=1.0, progress=progress)
    trainer = Trainer(copy.deepcopy(model), cfg, train, None, loss_fn=dpo_batch_loss(r["beta"], r["rpo_alpha"] if rpo else 0.0))
    history = trainer.fit()
    return trainer.unwrapped_model.cpu().eval(), history


# ------------------------------------------------------------------------------ stage 4: GRPO
def train_grpo(model: Any, tokenizer: Any, recipe: PostTrainingRecipe, problems: Sequence[vt.Problem],
               reference: Any | None = None, progress: bool = True,
               reward_fn: Callable[[str, vt.Problem], float] = vt.reward,
               device: str | torch.device | None = None) -> tuple[Any, dict[str, list[float]]]:
    """GRPO of a copy of ``model`` on ``device`` (default :func:`course_utils.device.get_device`;
    the returned model is back on the CPU): each step samples ``group`` answers to each of ``prompts``
    problems, scores them with ``reward_fn`` (checked: one finite number per answer), turns the
    rewards into group-normalised advantages and takes ``inner_steps`` optimizer steps on the
    clipped-ratio objective (KL to ``reference`` when ``beta > 0``).

    Returns ``(model, history)`` with per step the mean ``reward``, the share of groups whose
    rewards differ (only those carry a learning signal), ``loss`` and ``elapsed`` seconds.
    """
    from tqdm.auto import tqdm

    r = recipe.grpo
    if r["beta"] > 0 and reference is None:
        raise ValueError("beta > 0 needs the reference model (the SFT model) for the KL penalty")
    from .device import get_device

    dev = get_device(device)
    policy = copy.deepcopy(model).to(dev).train()
    if reference is not None and r["beta"] > 0 and next(reference.parameters()).device != dev:
        reference = copy.deepcopy(reference).to(dev)  # the caller's model stays where it is
    opt = configure_optimizer(policy, r["lr"], weight_decay=0.0)
    rng = random.Random(4)
    g = torch.Generator().manual_seed(4)
    history: dict[str, list[float]] = {"step": [], "reward": [], "informative": [], "loss": [], "elapsed": []}
    start = time.perf_counter()
    bar = tqdm(range(r["steps"]), desc="GRPO", disable=not progress, dynamic_ncols=True)
    for step in bar:
        batch = rng.sample(list(problems), r["prompts"])
        policy.eval()
        s = sample(policy, tokenizer, batch, n=r["group"], temperature=r["temperature"],
                   max_new_tokens=r["max_new_tokens"], generator=g)
        rewards = vt.check_rewards([reward_fn(t, p) for t, p in zip(s.texts, s.problems)], len(s.texts),
                                   getattr(reward_fn, "__name__", "reward function"))
        adv = group_advantages(rewards, r["group"]).to(next(policy.parameters()).device)
        with torch.no_grad():
            old = completion_logprobs(policy, s)
            ref = completion_logprobs(reference, s) if r["beta"] > 0 else None
        policy.train()
        for _ in range(r["inner_steps"]):
            lr = get_lr(step, max_lr=r["lr"], warmup_steps=0, max_steps=r["steps"], min_lr=r["lr"] / 10)
            for group in opt.param_groups:
                group["lr"] = lr
            logps = completion_logprobs(policy, s)
            loss = grpo_loss(logps, old, adv, s.completion_mask.to(logps.device), epsilon=r["epsilon"],
                             beta=r["beta"], ref_logps=ref)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            opt.step()
        spread = rewards.view(-1, r["group"]).std(1) > 0
        history["step"].append(step + 1)
        history["reward"].append(float(rewards.mean()))
        history["informative"].append(float(spread.float().mean()))
        history["loss"].append(float(loss.detach()))
        history["elapsed"].append(time.perf_counter() - start)
        bar.set_postfix(reward=f"{float(rewards.mean()):.2f}", refresh=False)
    return policy.cpu().eval(), history


# ------------------------------------------------------------------------------ cache
def stage_dir(stage: str, profile: str | None = None) -> Path:
    """``<data dir>/models/posttrain-<stage>-<profile>``."""
    return model_dir(f"{CACHE_PREFIX}-{stage}", profile)


def save_stage(stage: str, model: Any, tokenizer: Any, profile: str | None, meta: dict[str, Any]) -> Path:
    """Publish a stage's model, tokenizer and metadata (``meta`` must be JSON data)."""
    from .pretraining import _save_model_into

    recipe = get_recipe(profile)

    def build(tmp: Path) -> dict[str, Any]:
        _save_model_into(model, tmp)
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
        return {"name": f"{CACHE_PREFIX}-{stage}", "profile": get_profile(profile).name,
                "recipe": recipe.upto(stage), **json.loads(json.dumps(meta))}

    return publish(build, stage_dir(stage, profile), True, None)


def load_stage(stage: str, profile: str | None = None) -> tuple[Any, Any, dict[str, Any]] | None:
    """``(model, tokenizer, metadata)`` of a cached stage trained with the current recipe, else None."""
    from transformers import PreTrainedTokenizerFast

    from .model_cache import DONE_FILE, is_complete
    from .models.llama import LlamaForCausalLM

    folder = stage_dir(stage, profile)
    if not is_complete(folder, quiet=False):
        return None
    meta = json.loads((folder / DONE_FILE).read_text(encoding="utf-8"))
    if meta.get("recipe") != get_recipe(profile).upto(stage):
        return None
    tok = chat_lib.with_chat_template(PreTrainedTokenizerFast.from_pretrained(str(folder / "tokenizer")))
    return LlamaForCausalLM.from_pretrained(folder).eval(), tok, meta


def load_or_train(stage: str, profile: str | None, train: Callable[[], tuple[Any, Any, dict[str, Any]]]
                  ) -> tuple[Any, Any, dict[str, Any]]:
    """The cached model of ``stage`` if one was trained with the current recipe, else
    ``train()`` -> ``(model, tokenizer, meta)``, published with ``meta`` (JSON data: history,
    scores, ``seconds``) before it is returned. ``meta["cached"]`` says which happened."""
    got = load_stage(stage, profile)
    if got is not None:
        model, tok, meta = got
        print(f"{stage}: loaded the model trained earlier ({stage_dir(stage, profile)}; "
              f"training took {meta.get('seconds', float('nan')):.0f} s)")
        return model, tok, {**meta, "cached": True}
    start = time.perf_counter()
    model, tok, meta = train()
    meta = {**meta, "seconds": meta.get("seconds", round(time.perf_counter() - start, 1))}
    save_stage(stage, model, tok, profile, meta)
    return model, tok, {**meta, "cached": False}
