"""course_utils.real_post_training on a tiny random transformers Llama (no SmolLM2 needed).

A 2-layer LlamaForCausalLM and a 300-token BPE with the ChatML markers stand in for
SmolLM2-135M-Instruct: the code path (peft LoRA, the course Trainer's SFT, GRPO with the
verifier's reward, batched left-padded generation) is the same."""
from __future__ import annotations

import math

import pytest
import torch

from course_utils import chat as chat_lib
from course_utils import post_training as pt
from course_utils import real_post_training as rpt
from course_utils import verifiable_tasks as vt


@pytest.fixture(scope="module")
def tok():
    from course_utils.llama_pretraining import train_shakespeare_bpe

    t = chat_lib.with_chat_template(train_shakespeare_bpe(300, max_rows=300))
    t.padding_side = "left"
    return t


def tiny_llama(tokenizer, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      pad_token_id=tokenizer.pad_token_id, bos_token_id=None, eos_token_id=None)
    return LlamaForCausalLM(cfg).eval()


@pytest.fixture(scope="module")
def problems():
    return vt.make_splits(24, 6, seed=3)[0]


def base_weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" not in n}


# ------------------------------------------------------------------------------ prompt layout
def test_prompt_layout_matches_render_chat_and_smollm_style_template_agrees(tok):
    p = vt.Problem("Calculate 5 - 3.", "2", "5 - 3", {})
    text = rpt.check_prompt_layout(tok, p)
    assert text.startswith("<|im_start|>system\n" + vt.SYSTEM_PROMPT) and text.endswith("<|im_start|>assistant\n")
    # a SmolLM2-style template adds a default system prompt only to chats without one: with the
    # chapter's system prompt it renders the same text
    smol_style = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                  "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}{% endif %}"
                  "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
                  "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
    old = tok.chat_template
    try:
        tok.chat_template = smol_style
        assert rpt.check_prompt_layout(tok, p) == text
        tok.chat_template = smol_style.replace("'\n' }}{% endfor", "'' }}{% endfor")   # no newline after a turn
        with pytest.raises(ValueError, match="lays out a prompt differently"):
            rpt.check_prompt_layout(tok, p)
    finally:
        tok.chat_template = old


def test_sft_chat_masks_only_the_answer(tok, problems):
    ct = chat_lib.tokenize_chat(tok, rpt.sft_chat(problems[0]))
    shown = chat_lib.show_mask(tok, ct)
    trained = "".join(tok.decode([i]) for i, m in zip(ct.input_ids, ct.assistant_mask) if m)
    assert trained == vt.ANSWER_TEMPLATE.format(answer=problems[0].answer) + chat_lib.IM_END, shown
    assert vt.SYSTEM_PROMPT in tok.decode(ct.input_ids)


# ------------------------------------------------------------------------------ LoRA
def test_lora_starts_equal_and_trains_only_adapters(tok):
    model = tiny_llama(tok)
    ids = torch.randint(0, len(tok), (2, 9))
    with torch.no_grad():
        ref = model(ids).logits.clone()
    peft_model = rpt.add_lora(model, r=4, alpha=8)
    with torch.no_grad():
        torch.testing.assert_close(peft_model(ids).logits, ref)        # B = 0 at the start
    names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert names and all("lora_A" in n or "lora_B" in n for n in names)
    for target in rpt.LORA_TARGETS:
        assert any(f"{target}.lora_A" in n for n in names), target
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    # rank 4 on 7 projections of 2 layers: r * (in + out) each
    h, m, kv = 32, 48, 2 * 8
    expected = 2 * 4 * ((h + h) * 2 + (h + kv) * 2 + (h + m) * 3)
    assert trainable == expected


@pytest.mark.parametrize("kwargs, match", [
    (dict(r=0), "r \\(the LoRA rank\\) must be a positive int"),
    (dict(r=2.5), "positive int"),
    (dict(alpha=0), "alpha must be a positive number"),
    (dict(dropout=1.0), "dropout must be in"),
    (dict(targets=("q_proj", "qkv")), "not found: \\['qkv'\\]"),
])
def test_add_lora_bad_input(tok, kwargs, match):
    with pytest.raises(ValueError, match=match):
        rpt.add_lora(tiny_llama(tok), **kwargs)


# ------------------------------------------------------------------------------ SFT
def test_lora_sft_lowers_the_loss_on_its_batch_and_leaves_base_weights(tok, problems):
    model = rpt.add_lora(tiny_llama(tok), r=8, alpha=16)
    before_base = base_weights(model)
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    few = problems[:4]
    batch = chat_lib.pad_chats([chat_lib.tokenize_chat(tok, rpt.sft_chat(p)) for p in few], tok.pad_token_id)
    with torch.no_grad():
        loss0 = float(pt.sft_batch_loss(model, batch))
    model, hist = rpt.train_lora_sft(model, tok, few, steps=8, batch_size=4, lr=1e-2, warmup_steps=0,
                                     progress=False, device="cpu")
    with torch.no_grad():
        loss1 = float(pt.sft_batch_loss(model, batch))
    assert loss1 < loss0 - 0.1, (loss0, loss1)
    assert len(hist["loss"]) == 8 and hist["seconds_per_step"] > 0
    for n, p in model.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p.detach(), before_base[n]), f"base weight {n} changed"
    changed = [n for n, p in model.named_parameters()
               if p.requires_grad and not torch.equal(p.detach(), lora_before[n])]
    assert any("lora_B" in n for n in changed) and any("lora_A" in n for n in changed)


# ------------------------------------------------------------------------------ generation
def test_generate_samples_left_pads_and_masks_through_the_first_stop(tok, problems):
    model = tiny_llama(tok)
    s = rpt.generate_samples(model, tok, problems[:3], n=2, temperature=0.0, max_new_tokens=6)
    assert s.sequences.shape == (6, s.prompt_len + 6) and s.completion_mask.shape == (6, 6)
    assert s.problems == [p for p in problems[:3] for _ in range(2)]
    # greedy: both samples of a problem are the same
    assert torch.equal(s.sequences[0], s.sequences[1])
    prompt_lens = [len(tok(chat_lib.render_chat(rpt.prompt_chat(p), add_generation_prompt=True),
                           add_special_tokens=False)["input_ids"]) for p in problems[:3]]
    for i, n in enumerate(prompt_lens):
        assert int(s.attention_mask[2 * i, :s.prompt_len].sum()) == n
        assert int(s.attention_mask[2 * i, s.prompt_len - n]) == 1        # real tokens sit at the right
    stop = tok.convert_tokens_to_ids(chat_lib.IM_END)
    comp = s.sequences[:, s.prompt_len:]
    for row, mask in zip(comp, s.completion_mask):
        where = (row == stop).nonzero().flatten()
        n_real = int(where[0]) + 1 if len(where) else row.numel()
        assert mask.tolist() == [1] * n_real + [0] * (row.numel() - n_real)


def test_left_padding_does_not_change_completion_logprobs(tok, problems):
    """A prompt scored in a left-padded batch gets the log-probabilities it gets alone (RoPE is
    relative, and the padding is masked), so GRPO's batched log-probs are the right ones."""
    model = tiny_llama(tok)
    s = rpt.generate_samples(model, tok, problems[:3], n=1, temperature=1.0, max_new_tokens=5, seed=0)
    with torch.no_grad():
        together = pt.completion_logprobs(model, s)
        for i, p in enumerate(problems[:3]):
            alone = rpt.generate_samples(model, tok, [p], max_new_tokens=1)        # only for its prompt length
            P = alone.prompt_len
            seq = torch.cat((s.sequences[i, s.prompt_len - P:s.prompt_len], s.sequences[i, s.prompt_len:]))
            att = torch.cat((torch.ones(1, P, dtype=torch.long), s.completion_mask[i:i + 1]), 1)
            single = pt.Samples(seq[None], att, s.completion_mask[i:i + 1], P, s.texts[i:i + 1], [p])
            torch.testing.assert_close(pt.completion_logprobs(model, single)[0], together[i], atol=1e-5, rtol=1e-5)


def test_generate_samples_bad_input(tok, problems):
    model = tiny_llama(tok)
    with pytest.raises(ValueError, match="n must be a positive int"):
        rpt.generate_samples(model, tok, problems[:1], n=0)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        rpt.generate_samples(model, tok, problems[:1], temperature=-1.0)
    with pytest.raises(ValueError, match="max_new_tokens must be a positive int"):
        rpt.generate_samples(model, tok, problems[:1], max_new_tokens=0)
    with pytest.raises(ValueError, match="temperature must be >= 0"):
        rpt.generate_samples(model, tok, problems[:1], temperature=float("nan"))
    with pytest.raises(ValueError, match="at least one problem"):
        rpt.generate_samples(model, tok, [])


# ------------------------------------------------------------------------------ GRPO
def test_batch_reward_is_the_verifier(problems):
    p = problems[0]
    right, wrong = vt.ANSWER_TEMPLATE.format(answer=p.answer), vt.ANSWER_TEMPLATE.format(answer=int(p.answer) + 1)
    assert rpt.batch_reward([right, wrong, "so " + right], [p, p, p]) == [1.0, 0.0, 0.0]


def test_grpo_step_runs_and_moves_only_the_adapters(tok, problems):
    model = rpt.add_lora(tiny_llama(tok), r=4, alpha=8)
    before_base = base_weights(model)
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    seen = {}

    def longer_is_better(texts, probs):      # a reward with spread in every group: the reply's length
        seen["n"] = len(texts)
        return [float(len(t)) for t in texts]

    out = rpt.grpo_step(model, tok, opt, problems[:2], group=4, max_new_tokens=6, reward_fn=longer_is_better, seed=1)
    assert seen["n"] == 8 and out["rewards"].shape == (8,)
    assert math.isfinite(out["loss"]) and 0.0 <= out["informative"] <= 1.0
    assert out["reward"] == pytest.approx(sum(len(t) for t in out["texts"]) / 8)
    for n, p in model.named_parameters():
        if "lora_" not in n:
            assert torch.equal(p.detach(), before_base[n]), f"base weight {n} changed"
    assert out["informative"] > 0        # some group's lengths differ, so the adapters moved
    assert any(not torch.equal(p.detach(), lora_before[n]) for n, p in model.named_parameters() if p.requires_grad)


@pytest.mark.parametrize("reward_fn, match", [
    (lambda texts, probs: [1.0] * (len(texts) - 1), "returned 7 rewards for 8 completions"),
    (lambda texts, probs: [float("nan")] + [0.0] * (len(texts) - 1), "non-finite rewards at positions \\[0\\]"),
])
def test_grpo_step_rejects_a_bad_reward_function(tok, problems, reward_fn, match):
    model = rpt.add_lora(tiny_llama(tok), r=4, alpha=8)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    with pytest.raises(ValueError, match=match):
        rpt.grpo_step(model, tok, opt, problems[:2], group=4, max_new_tokens=4, reward_fn=reward_fn, seed=0)


def test_train_lora_grpo_history_and_bad_input(tok, problems):
    model = rpt.add_lora(tiny_llama(tok), r=4, alpha=8)
    model, hist = rpt.train_lora_grpo(model, tok, problems, steps=2, prompts=2, group=3, lr=1e-3,
                                      max_new_tokens=4, progress=False, device="cpu")
    assert hist["step"] == [1, 2] and len(hist["seconds"]) == 2 and all(0 <= r <= 1 for r in hist["reward"])
    with pytest.raises(ValueError, match="prompts=99 is more than"):
        rpt.train_lora_grpo(model, tok, problems, steps=1, prompts=99, group=2, lr=1e-3, device="cpu")
    with pytest.raises(ValueError, match="no trainable parameters"):
        rpt.train_lora_grpo(tiny_llama(tok).requires_grad_(False), tok, problems, steps=1, prompts=1, group=2,
                            lr=1e-3, device="cpu")


# ------------------------------------------------------------------------------ the whole run
def test_smollm2_post_training_runs_end_to_end_on_a_tiny_model(tok):
    recipe = rpt.RealRecipe(n_heldout=3, n_train=16, lora=dict(r=4, alpha=8, dropout=0.0),
                            sft=dict(steps=2, batch_size=4, lr=1e-3, warmup_steps=0),
                            grpo=dict(steps=1, prompts=2, group=2, temperature=1.0, lr=1e-4, epsilon=0.2,
                                      max_new_tokens=4),
                            eval=dict(max_new_tokens=4, batch_size=8))
    model = tiny_llama(tok)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = rpt.smollm2_post_training("ci", progress=False, model=model, tokenizer=tok, recipe=recipe, device="cpu")
    heldout = pt.task_splits(pt.get_recipe("ci"))[1][:3]
    assert out["n_heldout"] == 3
    for stage in ("before", "sft", "grpo"):
        ev = out[stage]
        assert ev["n"] == 3 and 0 <= ev["accuracy"] <= ev["format_rate"] <= 1
        assert ev["accuracy_ci"][0] <= ev["accuracy"] <= ev["accuracy_ci"][1]
        assert [q for q, _ in ev["examples"]] == [p.question for p in heldout]
    assert set(out["seconds"]) == {"load", "eval_before", "sft", "eval_sft", "grpo", "eval_grpo", "total"}
    assert out["seconds_per_grpo_step"] > 0 and out["precision"] == "fp32" and out["device"] == "cpu"
    assert 0 < out["lora"]["trainable"] < out["lora"]["total"]
    for n, p in out["model"].named_parameters():
        if "lora_" not in n:
            key = n.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(p.detach(), base[key]), n


def test_smollm2_post_training_needs_model_and_tokenizer_together(tok):
    with pytest.raises(ValueError, match="pass both model and tokenizer"):
        rpt.smollm2_post_training("ci", progress=False, model=tiny_llama(tok))
