"""course_utils.post_training_losses: shapes, hand-computed values, PyTorch references, bad input.

The equality with TRL's trainers is in tests/test_trl_equality.py."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from course_utils.models import llama as L
from course_utils.post_training_losses import (
    completion_logprobs, dpo_loss, group_advantages, grpo_loss, kl_k3, model_logprobs, sequence_logprobs,
    sft_loss, shifted_logprobs, token_logprobs)


def logits_with_probs(*rows: list[float]) -> torch.Tensor:
    """[1, T, V] logits whose softmax at position t is rows[t] (log of the probabilities)."""
    return torch.tensor(rows).log().unsqueeze(0)


def course_model(seed: int = 0) -> L.LlamaForCausalLM:
    torch.manual_seed(seed)
    cfg = L.LlamaConfig(vocab_size=40, block_size=32, n_layer=1, n_head=2, n_kv_heads=1, n_embd=16,
                        intermediate_size=24)
    return L.LlamaForCausalLM(cfg).eval()


# --------------------------------------------------------------------------- log-probabilities

def test_token_logprobs_by_hand_and_ignored_positions():
    logits = logits_with_probs([0.25, 0.75], [0.5, 0.5], [0.9, 0.1])
    out = token_logprobs(logits, torch.tensor([[1, 0, -100]]))
    torch.testing.assert_close(out, torch.tensor([[math.log(0.75), math.log(0.5), 0.0]]))


def test_token_logprobs_equal_minus_cross_entropy():
    torch.manual_seed(0)
    logits, labels = torch.randn(3, 5, 11) * 3, torch.randint(0, 11, (3, 5))
    ref = -F.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
    torch.testing.assert_close(token_logprobs(logits, labels), ref)


def test_shifted_logprobs_pairs_logits_t_with_token_t_plus_1():
    torch.manual_seed(1)
    logits, ids = torch.randn(2, 6, 9), torch.randint(0, 9, (2, 6))
    out = shifted_logprobs(logits, ids)
    assert out.shape == (2, 5)
    expected = torch.log_softmax(logits[0, 2], -1)[ids[0, 3]]
    torch.testing.assert_close(out[0, 2], expected)


@pytest.mark.parametrize("bad, match", [
    (dict(labels=torch.tensor([[0, 5]])), r"labels must be token ids in \[0, 2\)"),
    (dict(labels=torch.tensor([[0, -1]])), "labels must be token ids"),
    (dict(labels=torch.tensor([[0.0, 1.0]])), "integer tensor"),
    (dict(labels=torch.tensor([[0, 1, 1]])), "must agree on B and T"),
    (dict(logits=torch.zeros(1, 2)), "logits must have 3 dimension"),
    (dict(logits=torch.tensor([[[0.0, float("nan")], [0.0, 0.0]]])), "logits contains NaN"),
    (dict(logits=torch.zeros(1, 2, 2, dtype=torch.long)), "floating-point"),
    (dict(logits=[[[0.0, 1.0]]]), "must be a torch.Tensor"),
])
def test_token_logprobs_rejects_bad_input(bad, match):
    kw = dict(logits=torch.zeros(1, 2, 2), labels=torch.tensor([[0, 1]]))
    kw.update(bad)
    with pytest.raises((ValueError, TypeError), match=match):
        token_logprobs(**kw)


def test_shifted_logprobs_needs_two_tokens():
    with pytest.raises(ValueError, match="at least 2 tokens"):
        shifted_logprobs(torch.zeros(1, 1, 3), torch.zeros(1, 1, dtype=torch.long))


def test_model_logprobs_course_llama_matches_its_logits_and_temperature():
    model = course_model()
    ids = torch.randint(0, 40, (2, 7), generator=torch.Generator().manual_seed(2))
    att = torch.ones(2, 7, dtype=torch.long)
    with torch.no_grad():
        logits = model(ids).logits
        out = model_logprobs(model, ids, att)
        hot = model_logprobs(model, ids, att, temperature=0.5)
    assert out.shape == (2, 6)
    torch.testing.assert_close(out, shifted_logprobs(logits, ids))
    torch.testing.assert_close(hot, shifted_logprobs(logits / 0.5, ids))


def test_model_logprobs_accepts_a_model_returning_plain_logits_and_rejects_others():
    ids = torch.tensor([[1, 2, 0]])
    fixed = torch.randn(1, 3, 4)
    out = model_logprobs(lambda x, attention_mask=None: fixed, ids)
    torch.testing.assert_close(out, shifted_logprobs(fixed, ids))
    with pytest.raises(TypeError, match="without .logits"):
        model_logprobs(lambda x, attention_mask=None: {"scores": fixed}, ids)
    with pytest.raises(ValueError, match="temperature"):
        model_logprobs(lambda x, attention_mask=None: fixed, ids, temperature=0.0)
    with pytest.raises(ValueError, match="attention_mask must have shape"):
        model_logprobs(lambda x, attention_mask=None: fixed, ids, torch.ones(1, 4))


def test_sequence_logprobs_sums_the_completion_tokens_only():
    model = course_model(1)
    ids = torch.tensor([[5, 6, 7, 8, 9, 0], [5, 6, 10, 11, 0, 0]])
    att = torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 0, 0]])
    comp = torch.tensor([[0, 0, 1, 1, 1, 0], [0, 0, 1, 1, 0, 0]])
    with torch.no_grad():
        seq = sequence_logprobs(model, ids, att, comp)
        lp = model_logprobs(model, ids, att)          # lp[:, t-1] scores token t
    assert seq.shape == (2,)
    torch.testing.assert_close(seq, torch.stack([lp[0, 1:4].sum(), lp[1, 1:3].sum()]))
    assert bool((seq < 0).all())


def test_completion_logprobs_is_the_completion_slice():
    model = course_model(2)
    p_ids, p_mask = torch.tensor([[0, 3, 4], [7, 8, 9]]), torch.tensor([[0, 1, 1], [1, 1, 1]])   # left-padded
    c_ids, c_mask = torch.tensor([[5, 6], [10, 0]]), torch.tensor([[1, 1], [1, 0]])
    with torch.no_grad():
        out = completion_logprobs(model, p_ids, p_mask, c_ids, c_mask)
        full = model_logprobs(model, torch.cat([p_ids, c_ids], 1), torch.cat([p_mask, c_mask], 1))
    assert out.shape == (2, 2)
    torch.testing.assert_close(out, full[:, -2:])
    with pytest.raises(ValueError, match="same batch size"):
        completion_logprobs(model, p_ids[:1], p_mask[:1], c_ids, c_mask)
    with pytest.raises(ValueError, match="completion_mask must hold only 0 and 1"):
        completion_logprobs(model, p_ids, p_mask, c_ids, c_mask * 2)


# --------------------------------------------------------------------------- SFT

def test_sft_loss_by_hand_uses_the_mask_of_the_target():
    # position 0 predicts token 1 with p = 3/4, position 1 predicts token 0 with p = 1/4
    logits = logits_with_probs([0.25, 0.75], [0.25, 0.75], [0.5, 0.5])
    ids = torch.tensor([[0, 1, 0]])
    both = sft_loss(logits, ids, torch.tensor([[0, 1, 1]]))
    assert both.item() == pytest.approx((-math.log(0.75) - math.log(0.25)) / 2)
    last = sft_loss(logits, ids, torch.tensor([[1, 0, 1]]))     # the mask at position 0 never counts
    assert last.item() == pytest.approx(-math.log(0.25))
    scaled = sft_loss(logits, ids, torch.tensor([[0, 1, 1]]), num_tokens=4)
    assert scaled.item() == pytest.approx((-math.log(0.75) - math.log(0.25)) / 4)


def test_sft_loss_equals_cross_entropy_with_ignore_index_and_backpropagates():
    torch.manual_seed(3)
    logits = torch.randn(3, 8, 13, requires_grad=True)
    ids = torch.randint(0, 13, (3, 8))
    mask = (torch.rand(3, 8) > 0.4).long()
    mask[0, 1] = 1
    labels = ids.masked_fill(mask == 0, -100)
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, 13), labels[:, 1:].reshape(-1), ignore_index=-100)
    ours = sft_loss(logits, ids, mask.bool())
    torch.testing.assert_close(ours, ref)
    ours.backward()
    assert logits.grad is not None and logits.grad[:, -1].abs().sum() == 0   # the last logits predict nothing


def test_sft_loss_without_trainable_tokens_is_zero():
    logits = torch.randn(1, 4, 5, requires_grad=True)
    loss = sft_loss(logits, torch.tensor([[1, 2, 3, 4]]), torch.zeros(1, 4))
    assert loss.item() == 0.0
    loss.backward()                                       # still connected to the graph


@pytest.mark.parametrize("mask, num_tokens, match", [
    (torch.ones(1, 4), None, r"loss_mask must have shape \(1, 3\)"),
    (torch.full((1, 3), 2), None, "only 0 and 1"),
    (torch.tensor([[1.0, float("nan"), 1.0]]), None, "loss_mask contains NaN"),
    (torch.ones(1, 3), 0, "num_tokens must be a positive count"),
    (torch.ones(1, 3), "many", "num_tokens must be a positive count"),
    (torch.ones(1, 3), True, "num_tokens must be a positive count"),
])
def test_sft_loss_rejects_bad_input(mask, num_tokens, match):
    with pytest.raises(ValueError, match=match):
        sft_loss(torch.zeros(1, 3, 4), torch.tensor([[0, 1, 2]]), mask, num_tokens=num_tokens)


# --------------------------------------------------------------------------- DPO

def test_dpo_loss_by_hand():
    t = lambda *v: torch.tensor(v)  # noqa: E731
    loss, cr, rr = dpo_loss(t(-1.0, -3.0), t(-2.0, -3.0), t(-1.5, -3.0), t(-1.5, -3.0), beta=0.5)
    # pair 0: 0.5 * ((-1 + 2) - 0) = 0.5; pair 1: policy = reference, margin 0 -> log 2
    assert loss.item() == pytest.approx((math.log1p(math.exp(-0.5)) + math.log(2)) / 2)
    torch.testing.assert_close(cr, t(0.25, 0.0))
    torch.testing.assert_close(rr, t(-0.25, 0.0))


def test_dpo_loss_gradient_raises_chosen_and_lowers_rejected():
    pc, pr = torch.tensor([-4.0], requires_grad=True), torch.tensor([-4.0], requires_grad=True)
    loss, cr, rr = dpo_loss(pc, pr, torch.tensor([-4.0]), torch.tensor([-4.0]), beta=0.1)
    loss.backward()
    assert pc.grad.item() == pytest.approx(-0.05) and pr.grad.item() == pytest.approx(0.05)   # -β·σ(0)
    assert not cr.requires_grad and not rr.requires_grad


@pytest.mark.parametrize("args, beta, match", [
    ((torch.zeros(2), torch.zeros(3), torch.zeros(2), torch.zeros(2)), 0.1, "must have the same shape"),
    ((torch.zeros(2, 1), torch.zeros(2, 1), torch.zeros(2, 1), torch.zeros(2, 1)), 0.1, "1 dimension"),
    ((torch.zeros(2), torch.zeros(2), torch.zeros(2), torch.tensor([0.0, float("nan")])), 0.1,
     "ref_rejected_logps contains NaN"),
    ((torch.zeros(2), torch.zeros(2), torch.zeros(2), torch.zeros(2)), 0.0, "beta must be"),
    ((torch.zeros(0), torch.zeros(0), torch.zeros(0), torch.zeros(0)), 0.1, "at least one"),
])
def test_dpo_loss_rejects_bad_input(args, beta, match):
    with pytest.raises(ValueError, match=match):
        dpo_loss(*args, beta=beta)


# --------------------------------------------------------------------------- GRPO

def test_group_advantages_by_hand():
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    adv = group_advantages(rewards, 4)
    std = math.sqrt(1 / 3)                                # sample std of (1, 0, 0, 1): Bessel's n - 1
    expected = torch.tensor([0.5, -0.5, -0.5, 0.5]) / (std + 1e-4)
    torch.testing.assert_close(adv[:4], expected)
    torch.testing.assert_close(adv[4:], torch.zeros(4))  # all equal: nothing to learn
    torch.testing.assert_close(group_advantages(rewards, 4, scale=False)[:4], torch.tensor([0.5, -0.5, -0.5, 0.5]))
    torch.testing.assert_close(group_advantages(rewards, 2).view(-1, 2).sum(1), torch.zeros(4))


@pytest.mark.parametrize("rewards, g, match", [
    (torch.tensor([1.0, 2.0, 3.0]), 2, "not a positive multiple"),
    (torch.tensor([1.0, 2.0]), 1, "group_size must be an int >= 2"),
    (torch.tensor([1.0, float("nan")]), 2, "rewards contains NaN"),
    (torch.tensor([1.0, float("inf")]), 2, "rewards must be finite"),
    (torch.ones(2, 2), 2, "1 dimension"),
    (torch.tensor([1, 2]), 2, "floating-point"),
])
def test_group_advantages_rejects_bad_input(rewards, g, match):
    with pytest.raises((ValueError, TypeError), match=match):
        group_advantages(rewards, g)


def test_group_advantages_scale_must_be_a_bool():
    with pytest.raises(TypeError, match="scale must be True or False"):
        group_advantages(torch.tensor([1.0, 2.0]), 2, scale="batch")    # not TRL's string: say so


def test_kl_k3_by_hand_and_non_negative():
    out = kl_k3(torch.tensor([[math.log(0.5), -1.0]]), torch.tensor([[math.log(0.25), -1.0]]))
    torch.testing.assert_close(out, torch.tensor([[0.5 + math.log(2) - 1, 0.0]]))
    torch.manual_seed(4)
    assert bool((kl_k3(torch.randn(50, 7) * 3, torch.randn(50, 7) * 3) >= 0).all())


def test_grpo_loss_clip_by_hand():
    logps = torch.tensor([[math.log(1.5), 0.0]])          # ratio 1.5 on token 0, 1 on token 1
    old = torch.zeros(1, 2)
    mask = torch.ones(1, 2)
    # A > 0: the ratio is clipped at 1.2 -> (-1.2 - 1) / 2
    assert grpo_loss(logps, old, torch.tensor([1.0]), mask).item() == pytest.approx(-1.1)
    # A < 0: min picks the unclipped -1.5 -> (1.5 + 1) / 2 (pessimistic bound)
    assert grpo_loss(logps, old, torch.tensor([-1.0]), mask).item() == pytest.approx(1.25)
    # a wider upper bound lets 1.5 through
    assert grpo_loss(logps, old, torch.tensor([1.0]), mask, epsilon_high=0.6).item() == pytest.approx(-1.25)


def test_grpo_loss_aggregations_by_hand():
    logps = torch.zeros(2, 2)                                # on-policy: ratio 1, per-token loss = -A
    adv, mask = torch.tensor([1.0, -3.0]), torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    assert grpo_loss(logps, logps, adv, mask).item() == pytest.approx((-1 - 1 + 3) / 3)                 # dapo
    assert grpo_loss(logps, logps, adv, mask, num_tokens=6).item() == pytest.approx(1 / 6)
    assert grpo_loss(logps, logps, adv, mask, loss_type="bnpo").item() == pytest.approx(1 / 3)
    assert grpo_loss(logps, logps, adv, mask, loss_type="grpo").item() == pytest.approx((-1 + 3) / 2)
    assert grpo_loss(logps, logps, adv, mask, loss_type="dr_grpo").item() == pytest.approx(1 / 4)
    assert grpo_loss(logps, logps, adv, mask, loss_type="dr_grpo",
                     max_completion_length=5).item() == pytest.approx(1 / 10)


def test_grpo_loss_kl_term_and_on_policy_gradient():
    logps = torch.tensor([[-1.0, -2.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -2.0]])
    mask, adv = torch.ones(1, 2), torch.tensor([2.0])
    loss = grpo_loss(logps, logps.detach(), adv, mask, beta=0.1, ref_logps=ref)
    k3 = math.exp(-0.5) + 0.5 - 1
    assert loss.item() == pytest.approx((-2 - 2 + 0.1 * k3) / 2)
    loss.backward()
    # d/dlogp of -ρA is -A (ρ = 1); of β·ρ·k3 it is β·(k3 + 1 - exp(ref - logp)) on-policy
    expected = torch.tensor([[-2 + 0.1 * (k3 + 1 - math.exp(-0.5)), -2.0]]) / 2
    torch.testing.assert_close(logps.grad, expected)
    plain = grpo_loss(logps.detach(), logps.detach(), adv, mask, beta=0.1, ref_logps=ref,
                      kl_importance_weighted=False)
    assert plain.item() == pytest.approx(loss.item())        # the weight is 1 on-policy: same value


@pytest.mark.parametrize("kw, match", [
    (dict(advantages=torch.zeros(3)), r"advantages must have shape \[B\]"),
    (dict(old_logps=torch.zeros(2, 3)), "must have the same shape"),
    (dict(completion_mask=torch.ones(2, 3)), "completion_mask must have shape"),
    (dict(loss_type="ppo"), "loss_type must be one of"),
    (dict(beta=0.1), "beta > 0 needs ref_logps"),
    (dict(beta=0.1, ref_logps=torch.zeros(2, 3)), "must have the same shape"),
    (dict(epsilon=-0.2), "epsilon must be"),
    (dict(logps=torch.tensor([[0.0, float("nan")], [0.0, 0.0]])), "logps contains NaN"),
    (dict(num_tokens=0), "num_tokens must be a positive count"),
    (dict(num_tokens=torch.tensor([3.0, 4.0])), "num_tokens must be a positive count"),
    (dict(beta=True), "beta must be"),
    (dict(kl_importance_weighted=1), "kl_importance_weighted must be True or False"),
    (dict(loss_type=None), "loss_type must be one of"),
    (dict(loss_type="dr_grpo", max_completion_length=0), "max_completion_length must be a positive int"),
])
def test_grpo_loss_rejects_bad_input(kw, match):
    args = dict(logps=torch.zeros(2, 2), old_logps=torch.zeros(2, 2), advantages=torch.zeros(2),
                completion_mask=torch.ones(2, 2))
    extra = {k: kw.pop(k) for k in list(kw) if k in args}
    args.update(extra)
    with pytest.raises((ValueError, TypeError), match=match):
        grpo_loss(**args, **kw)
