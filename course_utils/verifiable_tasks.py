"""Tasks with exact, checkable answers: the data and the reward of post-training.

The problems come from ``reasoning-gym`` (Apache-2.0), which generates them offline from a seed
and scores an answer with its own verifier. The chapter uses its ``basic_arithmetic`` task at a
difficulty a model trained here in minutes finds neither hopeless nor solved: sums of two
numbers of one or two digits ("Calculate 47 + 38." -> "85"). The package is installed rather
than copied: its generators and verifiers are the point, and it installs from PyPI with a few
small pure-Python dependencies (plus pycosat, built from source where no wheel exists).

* :func:`make_splits` -- train and held-out problems; no held-out expression occurs in train.
* :func:`prose` -- a problem written as a sentence of running text, for the base model's
  pretraining mix (it learns arithmetic there, not the chat format).
* :func:`to_chat` -- a problem as a chat; the answer format is :data:`ANSWER_TEMPLATE`.
* :func:`parse_answer`, :func:`format_ok`, :func:`reward` -- what the verifier sees: the text
  the model wrote must be exactly ``The answer is <integer>.``; the integer is scored by
  reasoning-gym's ``score_answer`` (1 for exact, 0 otherwise).
* :func:`check_rewards` -- the clear error for a reward function that returns the wrong number
  of rewards, or NaN.

Defined in chapter 12, Post-training.
"""
from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from .evaluation import wilson_interval  # noqa: F401  (one implementation; scores here carry intervals)

TASK = "basic_arithmetic"
#: reasoning-gym settings of the chapter's task: sums of two numbers of one or two digits. (With
#: ``-`` as well, the laptop model's SFT accuracy was 20 % and neither DPO nor GRPO moved it in the
#: laptop budget: measured 2026-12-04, docs/RESULTS.md §10.)
TASK_CONFIG: dict[str, Any] = dict(min_terms=2, max_terms=2, min_digits=1, max_digits=2,
                                   operators=("+",), allow_parentheses=False, allow_negation=False)
SYSTEM_PROMPT = "Solve the problem. Reply with: The answer is <number>."
ANSWER_TEMPLATE = "The answer is {answer}."
ANSWER_RE = re.compile(r"The answer is (-?\d+)\.")


@dataclass(frozen=True)
class Problem:
    """One problem: ``question`` ("Calculate 13 - 92."), ``answer`` ("-79"), ``expression``
    ("13 - 92") and the reasoning-gym ``entry`` its verifier scores against."""

    question: str
    answer: str
    expression: str
    entry: dict[str, Any]


def _dataset(size: int, seed: int, config: dict[str, Any] | None = None) -> Any:
    import reasoning_gym

    return reasoning_gym.create_dataset(TASK, size=size, seed=seed, **(config or TASK_CONFIG))


def make_splits(n_train: int, n_heldout: int, seed: int = 0,
                config: dict[str, Any] | None = None) -> tuple[list[Problem], list[Problem]]:
    """``(train, heldout)`` problems with no expression in both.

    reasoning-gym builds item ``i`` of a dataset from the seed ``seed + i``, so two datasets with
    nearby seeds share almost all their items. The held-out problems come from seeds a million
    away (duplicates dropped); training problems whose expression is held out are dropped and
    replaced, so held-out accuracy measures problems the model never saw in training.
    """
    for name, n in (("n_train", n_train), ("n_heldout", n_heldout)):
        if not isinstance(n, int) or n < 1:
            raise ValueError(f"{name} must be a positive int, got {n!r}")

    def problems(ds: Any) -> list[Problem]:
        return [Problem(e["question"], str(e["answer"]), e["metadata"]["expression"], e) for e in ds]

    heldout: list[Problem] = []
    seen: set[str] = set()
    for p in problems(_dataset(3 * n_heldout, seed + 1_000_000, config)):
        if len(heldout) < n_heldout and p.expression not in seen:
            heldout.append(p)
            seen.add(p.expression)
    if len(heldout) < n_heldout:
        raise ValueError(f"the task has fewer than {n_heldout} distinct problems in {3 * n_heldout} draws; "
                         "ask for fewer held-out problems")
    train: list[Problem] = []
    start = seed
    while len(train) < n_train:
        want = n_train - len(train)
        train += [p for p in problems(_dataset(want, start, config)) if p.expression not in seen][:want]
        start += want
        if start - seed > 20 * n_train:
            raise ValueError("held-out problems cover almost the whole task; ask for fewer held-out problems")
    return train, heldout


_PROSE = (
    "{a} {op} {b} makes {r}.",
    "If you work out {a} {op} {b}, you get {r}.",
    "Reckon {a} {op} {b} and you have {r}.",
    "The count {a} {op} {b} comes to {r}.",
)


def prose(problem: Problem, rng: random.Random) -> str:
    """The problem as a sentence of running text ("13 - 92 makes -79."), one of a few phrasings.
    The base model reads these during pretraining: it learns the arithmetic, not the chat."""
    a, op, b = problem.expression.split(" ")
    return rng.choice(_PROSE).format(a=a, op=op, b=b, r=problem.answer)


TEACHER_MISTAKES: tuple[str, ...] = ("off_by_one", "drop_carry")


def _drop_carry(expression: str) -> str | None:
    """``a + b`` added column by column without carrying from the units into the tens
    (47 + 38 -> 75), or None where no carry happens (or the expression is not a sum)."""
    a, op, b = expression.split(" ")
    x, y = int(a), int(b)
    if op != "+" or x < 0 or y < 0 or (x % 10) + (y % 10) < 10:
        return None
    return str(x + y - 10)


def teacher_answers(problems: Sequence[Problem], error_rate: float = 0.0, seed: int = 0,
                    mistake: str = "off_by_one") -> list[str]:
    """The answers an imperfect teacher writes for ``problems`` -- the mistakes real SFT data,
    written by people or by models, contains. Reproducible for a seed.

    ``mistake="off_by_one"``: a random ``error_rate`` share of the answers is one too high or too
    low. ``"drop_carry"``: on a sum whose units carry into the tens, the teacher forgets the carry
    with probability ``error_rate`` (47 + 38 -> 75); other problems are answered right.
    """
    if not 0.0 <= error_rate < 1.0:
        raise ValueError(f"error_rate must be in [0, 1), got {error_rate!r}")
    if mistake not in TEACHER_MISTAKES:
        raise ValueError(f"mistake must be one of {TEACHER_MISTAKES}, got {mistake!r}")
    rng = random.Random(seed)
    out = []
    for p in problems:
        wrong = rng.random() < error_rate
        delta = rng.choice((-1, 1))
        if mistake == "off_by_one":
            out.append(str(int(p.answer) + delta) if wrong else p.answer)
        else:
            dropped = _drop_carry(p.expression)
            out.append(dropped if wrong and dropped is not None else p.answer)
    return out


def to_chat(problem: Problem, with_answer: bool = True, system: bool = False,
            answer: str | None = None) -> list[dict[str, str]]:
    """The problem as chat messages (system, user, and the reference answer as the assistant's
    turn when ``with_answer``; ``answer`` replaces the reference, e.g. a teacher's). The chapter trains without the system prompt: short chats are
    cheaper, and the format is learned from the answers themselves."""
    msgs = [{"role": "system", "content": SYSTEM_PROMPT}] if system else []
    msgs.append({"role": "user", "content": problem.question})
    if with_answer:
        msgs.append({"role": "assistant", "content": ANSWER_TEMPLATE.format(answer=problem.answer if answer is None
                                                                             else answer)})
    return msgs


def completion_text(text: str) -> str:
    """The assistant's reply: generated text up to its first ``<|im_end|>`` (all of it if none)."""
    return text.split("<|im_end|>", 1)[0]


def parse_answer(text: str) -> str | None:
    """The integer of a reply that is exactly ``The answer is <integer>.``, else None."""
    m = ANSWER_RE.fullmatch(completion_text(text).strip())
    return m.group(1) if m else None


def format_ok(text: str) -> bool:
    """The reply follows :data:`ANSWER_TEMPLATE` exactly (whatever the number)."""
    return parse_answer(text) is not None


def reward(text: str, problem: Problem) -> float:
    """1.0 when the reply is in the format and reasoning-gym's verifier scores its number exact,
    else 0.0 (a reply out of format earns nothing)."""
    ans = parse_answer(text)
    if ans is None:
        return 0.0
    from reasoning_gym import get_score_answer_fn

    return 1.0 if get_score_answer_fn(TASK)(ans, problem.entry) == 1.0 else 0.0


def check_rewards(rewards: Any, n: int, name: str = "reward function") -> torch.Tensor:
    """``rewards`` as a float tensor [n], or a ValueError that says what was wrong: the wrong
    number of rewards (one per completion is needed), or a NaN/inf reward."""
    t = torch.as_tensor(rewards, dtype=torch.float32).flatten() if not isinstance(rewards, torch.Tensor) \
        else rewards.detach().float().flatten()
    if t.numel() != n:
        raise ValueError(f"{name} returned {t.numel()} rewards for {n} completions; it must return one "
                         "number per completion, in the order given")
    bad = (~torch.isfinite(t)).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"{name} returned non-finite rewards at positions {bad[:5]} "
                         f"(e.g. {t[bad[0]].item()}); return finite numbers, e.g. 0.0 for a failure")
    return t


def score(texts: Sequence[str], problems: Sequence[Problem],
          reward_fn: Callable[[str, Problem], float] = reward) -> torch.Tensor:
    """Rewards [len(texts)] of completions of ``problems`` (same order), checked."""
    if len(texts) != len(problems):
        raise ValueError(f"{len(texts)} completions for {len(problems)} problems")
    return check_rewards([reward_fn(t, p) for t, p in zip(texts, problems)], len(texts))


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct: 1 - C(n-c, k) / C(n, k)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))
