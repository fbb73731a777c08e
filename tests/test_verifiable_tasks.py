"""course_utils.verifiable_tasks: splits without leaks, the verifier, rewards, pass@k."""
from __future__ import annotations

import math
import random

import pytest

from course_utils import verifiable_tasks as vt


@pytest.fixture(scope="module")
def splits():
    return vt.make_splits(600, 60, seed=0)


def test_splits_are_disjoint_and_sized(splits):
    train, held = splits
    assert len(train) == 600 and len(held) == 60
    assert not {p.expression for p in train} & {p.expression for p in held}
    assert len({p.expression for p in held}) == 60      # no duplicate held-out problem


def test_splits_are_reproducible_and_answers_are_right(splits):
    again = vt.make_splits(600, 60, seed=0)
    assert [p.question for p in again[1]] == [p.question for p in splits[1]]
    for p in splits[0][:50] + splits[1]:
        assert str(eval(p.expression)) == p.answer          # the generator's answer is the arithmetic
        assert p.question == f"Calculate {p.expression}."


def test_reward_is_exact_and_needs_the_format(splits):
    p = splits[1][0]
    wrong = str(int(p.answer) + 1)
    assert vt.reward(f"The answer is {p.answer}.", p) == 1.0
    assert vt.reward(f"The answer is {p.answer}.<|im_end|> junk", p) == 1.0    # the turn ends at the marker
    assert vt.reward(f"The answer is {wrong}.", p) == 0.0
    assert vt.reward(p.answer, p) == 0.0                                       # right number, wrong format
    assert vt.reward(f"I think the answer is {p.answer}.", p) == 0.0
    assert vt.format_ok(f"The answer is {wrong}.") and not vt.format_ok("The answer is x.")


def test_prose_states_the_problem_and_its_answer(splits):
    rng = random.Random(0)
    for p in splits[0][:20]:
        text = vt.prose(p, rng)
        assert p.expression in text and text.rstrip(".").endswith(p.answer)


def test_chat_has_the_answer_in_the_format(splits):
    p = splits[0][0]
    msgs = vt.to_chat(p)
    assert [m["role"] for m in msgs] == ["user", "assistant"]
    assert vt.reward(msgs[-1]["content"], p) == 1.0
    assert vt.to_chat(p, with_answer=False, system=True)[0]["role"] == "system"


@pytest.mark.parametrize("rewards, n, words", [([1.0, 0.0], 3, "returned 2 rewards for 3"),
                                               ([1.0, float("nan")], 2, "non-finite"),
                                               ([float("inf")], 1, "non-finite")])
def test_bad_reward_functions_get_clear_errors(rewards, n, words):
    with pytest.raises(ValueError, match=words):
        vt.check_rewards(rewards, n, "my_reward")


def test_score_checks_lengths(splits):
    with pytest.raises(ValueError, match="2 completions for 1 problems"):
        vt.score(["a", "b"], splits[1][:1])


def test_pass_at_k_matches_the_combinatorial_definition():
    assert vt.pass_at_k(8, 0, 4) == 0.0 and vt.pass_at_k(8, 5, 4) == 1.0
    assert vt.pass_at_k(8, 2, 1) == pytest.approx(2 / 8)
    assert vt.pass_at_k(10, 3, 4) == pytest.approx(1 - math.comb(7, 4) / math.comb(10, 4))
    with pytest.raises(ValueError):
        vt.pass_at_k(4, 5, 1)


def test_wilson_interval():
    lo, hi = vt.wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-3) and hi == pytest.approx(0.5962, abs=1e-3)
    assert vt.wilson_interval(0, 10)[0] == 0.0 and vt.wilson_interval(10, 10)[1] == 1.0


def test_bad_split_sizes():
    with pytest.raises(ValueError, match="n_train"):
        vt.make_splits(0, 10)
