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


def test_teacher_is_off_by_one_on_its_share(splits):
    train = splits[0]
    answers = vt.teacher_answers(train, 0.3, seed=1)
    wrong = [(int(a) - int(p.answer)) for a, p in zip(answers, train) if a != p.answer]
    assert set(wrong) <= {-1, 1} and {-1, 1} <= set(wrong)
    assert 0.25 < len(wrong) / len(train) < 0.35
    assert answers == vt.teacher_answers(train, 0.3, seed=1)
    assert vt.teacher_answers(train, 0.0) == [p.answer for p in train]
    assert vt.to_chat(train[0], answer="12")[-1]["content"] == "The answer is 12."
    with pytest.raises(ValueError, match="error_rate"):
        vt.teacher_answers(train, 1.0)


def test_teacher_who_drops_the_carry():
    assert vt._drop_carry("47 + 38") == "75" and vt._drop_carry("41 + 38") is None
    assert vt._drop_carry("7 + 8") == "5" and vt._drop_carry("47 - 38") is None
    probs = [vt.Problem(f"Calculate {e}.", str(eval(e)), e, {}) for e in ("47 + 38", "41 + 38", "9 + 9")] * 50
    answers = vt.teacher_answers(probs, 0.5, seed=0, mistake="drop_carry")
    for a, p in zip(answers, probs):
        assert a == p.answer or a == vt._drop_carry(p.expression)
    assert all(a == "79" for a, p in zip(answers, probs) if p.expression == "41 + 38")   # no carry: always right
    dropped = sum(a != p.answer for a, p in zip(answers, probs) if p.expression != "41 + 38")
    assert 30 < dropped < 70
    with pytest.raises(ValueError, match="mistake"):
        vt.teacher_answers(probs, 0.5, mistake="typo")
