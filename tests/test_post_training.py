"""course_utils.post_training: sampling, masks, pairs, each stage's loop and the stage cache.

A tiny model and a few steps: these check mechanics (shapes, masks, what is trained on, that a
loss falls on a batch it sees again), not the chapter's results, which its notebook measures.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

from course_utils import chat
from course_utils import post_training as pt
from course_utils import verifiable_tasks as vt
from course_utils.models.llama import LlamaConfig, LlamaForCausalLM


@pytest.fixture(scope="module")
def tok():
    from course_utils.llama_pretraining import train_shakespeare_bpe

    return chat.with_chat_template(train_shakespeare_bpe(300, max_rows=300))


@pytest.fixture(scope="module")
def problems():
    return vt.make_splits(200, 16, seed=3)


@pytest.fixture()
def model(tok):
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), n_layer=1, n_head=2, n_kv_heads=1, n_embd=32,
                                        intermediate_size=64, block_size=96)).eval()


def tiny_recipe(**changes):
    r = pt.RECIPES["ci"]
    return dataclasses.replace(r, **changes)


def test_sample_masks_stop_at_the_first_end_marker(model, tok, problems):
    s = pt.sample(model, tok, problems[1][:4], n=3, temperature=1.0, max_new_tokens=6,
                  generator=torch.Generator().manual_seed(0))
    assert s.sequences.shape[0] == 12 and s.completion_mask.shape == (12, 6)
    stop = pt.im_end_id(tok)
    comp = s.sequences[:, s.prompt_len:]
    for row, m in zip(comp, s.completion_mask):
        n = int(m.sum())
        assert m[:n].all() and not m[n:].any()                     # a prefix
        hits = (row == stop).nonzero().flatten()
        assert n == (int(hits[0]) + 1 if len(hits) else 6)           # up to and including the first stop
    assert s.problems[:3] == [problems[1][0]] * 3                  # row i*n+j = sample j of problem i


def test_sample_prompt_is_the_chat_template(model, tok, problems):
    s = pt.sample(model, tok, problems[1][:2], max_new_tokens=2)
    row = s.sequences[0][s.attention_mask[0].bool()][: int(s.attention_mask[0, :s.prompt_len].sum())]
    assert tok.decode(row) == chat.render_chat(vt.to_chat(problems[1][0], with_answer=False), add_generation_prompt=True)


def test_completion_logprobs_equal_a_direct_computation(model, tok, problems):
    s = pt.sample(model, tok, problems[1][:2], n=2, temperature=1.0, max_new_tokens=5,
                  generator=torch.Generator().manual_seed(1))
    lp = pt.completion_logprobs(model, s)
    for b in range(s.sequences.size(0)):
        keep = s.attention_mask[b].bool()
        ids = s.sequences[b][keep][None]
        n_prompt = int(s.attention_mask[b, :s.prompt_len].sum())
        logits = model(ids).logits[0].log_softmax(-1)
        n = int(s.completion_mask[b].sum())
        direct = torch.stack([logits[n_prompt - 1 + t, ids[0, n_prompt + t]] for t in range(n)])
        torch.testing.assert_close(lp[b, :n], direct, atol=1e-5, rtol=1e-5)
        assert (lp[b, n:] == 0).all()


def test_sft_learns_the_answers_of_its_batch(model, tok, problems):
    batch = chat.pad_chats(pt.chat_examples(tok, problems[0][:8]), tok.pad_token_id)
    before = float(pt.sft_batch_loss(model, batch).detach())
    original = {k: v.clone() for k, v in model.state_dict().items()}
    recipe = tiny_recipe(sft=dict(max_steps=25, lr=3e-3, warmup_steps=2, batch_size=8, eval_interval=25, eval_iters=1))
    trained, hist = pt.train_sft(model, tok, recipe, problems[0][:8], problems[1][:8], progress=False)
    assert float(pt.sft_batch_loss(trained, batch).detach()) < 0.75 * before
    assert all(torch.equal(original[k], v) for k, v in model.state_dict().items())   # a copy was trained


def test_sft_loss_ignores_user_tokens(model, tok, problems):
    batch = chat.pad_chats(pt.chat_examples(tok, problems[0][:4]), tok.pad_token_id)
    changed = {k: v.clone() for k, v in batch.items()}
    # a different question, same answer tokens: the loss sees the question only through the answer's context
    user = (batch["assistant_mask"] == 0) & (batch["attention_mask"] == 1)
    assert user.any()
    changed["assistant_mask"] = torch.zeros_like(batch["assistant_mask"])
    changed["assistant_mask"][:, -1] = batch["attention_mask"][:, -1]
    with torch.no_grad():
        a = float(pt.sft_batch_loss(model, batch))
        b = float(pt.sft_batch_loss(model, changed))
    assert a != b                                                   # the mask decides what is averaged


def test_build_pairs_from_a_model(model, tok, problems):
    pairs = pt.build_preference_pairs(model, tok, problems[0][:6], samples=2, max_new_tokens=6, gold_chosen=True)
    assert len(pairs) == 6                        # an untrained model is always wrong: gold answers are chosen
    for c, r, text in zip(pairs.chosen, pairs.rejected, pairs.chosen_texts):
        assert vt.ANSWER_TEMPLATE.split("{")[0] in text
        assert tok.decode([i for i, m in zip(c.input_ids, c.assistant_mask) if m]) == text + chat.IM_END
        assert c.assistant_mask[0] == 0 and r.assistant_mask[-1] == 1
    assert len(pt.build_preference_pairs(model, tok, problems[0][:6], samples=2, max_new_tokens=6)) == 0


def test_dpo_moves_the_implicit_reward_toward_chosen(model, tok, problems):
    pairs = pt.build_preference_pairs(model, tok, problems[0][:8], samples=2, max_new_tokens=6, gold_chosen=True)
    before = pt.implicit_reward_accuracy(model, model, pairs, 0.1, tok.pad_token_id)
    assert before["margin"] == 0.0 and before["accuracy"] == 0.0     # policy = reference: every margin is 0
    recipe = tiny_recipe(dpo=dict(pt.RECIPES["ci"].dpo, max_steps=15, lr=3e-3, batch_size=8))
    trained, hist = pt.train_dpo(model, tok, recipe, pairs, progress=False)
    after = pt.implicit_reward_accuracy(trained, model, pairs, 0.1, tok.pad_token_id)
    assert after["accuracy"] > 0.9 and after["margin"] > 0
    assert hist["loss"][-1] < hist["loss"][0]


def test_dpo_without_pairs_says_why(model, tok):
    empty = pt.PreferencePairs([], [], [], [], [])
    with pytest.raises(ValueError, match="no preference pairs"):
        pt.train_dpo(model, tok, pt.RECIPES["ci"], empty, progress=False)


def test_grpo_raises_the_reward_it_is_given(model, tok, problems):
    # reward: short replies (learnable in a few steps: end the turn early)
    def short(text, problem):
        return -len(text) / 10

    recipe = tiny_recipe(grpo=dict(pt.RECIPES["ci"].grpo, steps=12, prompts=4, group=8, lr=1e-2))
    trained, hist = pt.train_grpo(model, tok, recipe, problems[0][:20], progress=False, reward_fn=short)
    assert len(hist["reward"]) == 12 and all(0 <= x <= 1 for x in hist["informative"])
    assert sum(hist["reward"][-3:]) / 3 > sum(hist["reward"][:3]) / 3


def test_grpo_checks_the_reward_function(model, tok, problems):
    def nan_reward(text, problem):
        return float("nan")

    with pytest.raises(ValueError, match="non-finite"):
        pt.train_grpo(model, tok, pt.RECIPES["ci"], problems[0][:20], progress=False, reward_fn=nan_reward)
    recipe = tiny_recipe(grpo=dict(pt.RECIPES["ci"].grpo, beta=0.1))
    with pytest.raises(ValueError, match="reference"):
        pt.train_grpo(model, tok, recipe, problems[0][:20], progress=False)


def test_stage_cache_round_trip_and_recipe_key(model, tok, tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))
    calls = []

    def train():
        calls.append(1)
        return model, tok, {"history": [1.0, 0.5]}

    m1, t1, meta1 = pt.load_or_train("sft", "ci", train)
    m2, t2, meta2 = pt.load_or_train("sft", "ci", train)
    assert len(calls) == 1 and not meta1["cached"] and meta2["cached"] and meta2["history"] == [1.0, 0.5]
    for a, b in zip(m1.state_dict().values(), m2.state_dict().values()):
        assert torch.equal(a, b)
    assert t2.chat_template == chat.CHAT_TEMPLATE
    assert pt.RECIPES["ci"].upto("sft") != pt.RECIPES["laptop"].upto("sft")
    assert "grpo" not in pt.RECIPES["ci"].upto("dpo") and "base" in pt.RECIPES["ci"].upto("dpo")
