"""The losses of course_utils.post_training_losses equal TRL 1.16's trainers on the same batch.

Each test builds the TRL trainer the chapter would use (SFTTrainer with ``assistant_only_loss``,
DPOTrainer, GRPOTrainer) around a tiny random transformers Llama (2 layers, width 32) and a BPE
tokenizer trained here with the ChatML markers as special tokens, takes a batch that TRL itself
prepared (its collator, or its own generation and scoring for GRPO), and compares TRL's
``compute_loss`` with the course's function on the same tensors, to 1e-5 in float32.
No Hub, no GPU; the trainers write only under ``tmp_path``.
"""
from __future__ import annotations

import pytest
import torch

datasets = pytest.importorskip("datasets")
trl = pytest.importorskip("trl")
transformers = pytest.importorskip("transformers")

from course_utils.chat import pad_chats, tokenize_chat, with_chat_template  # noqa: E402
from course_utils.llama_pretraining import LLAMA_BPE_SPECIALS  # noqa: E402
from course_utils.models.llama import from_hf  # noqa: E402
from course_utils.post_training_losses import (  # noqa: E402
    completion_logprobs, dpo_loss, group_advantages, grpo_loss, sequence_logprobs, sft_loss)
from course_utils.tokenization import to_fast_tokenizer, train_bpe  # noqa: E402

TOL = 1e-5

CHATS = [
    [{"role": "user", "content": "What is 2 + 3?"}, {"role": "assistant", "content": "The answer is 5."}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Calculate 5 - 3 - 6."},
     {"role": "assistant", "content": "-4"}, {"role": "user", "content": "And 1 + 1?"},
     {"role": "assistant", "content": "The answer is 2."}],
    [{"role": "user", "content": "Is seven odd?"}, {"role": "assistant", "content": "Yes, seven is an odd number."}],
]


@pytest.fixture(scope="module")
def tok():
    texts = ["What is two plus three? The answer is five.", "Calculate 5 - 3 - 6. The answer is -4.",
             "Is seven odd? Yes, seven is an odd number. Answer briefly."] * 10
    tokenizer = to_fast_tokenizer(train_bpe(texts, 300, special_tokens=LLAMA_BPE_SPECIALS), pad_token="<pad>")
    return with_chat_template(tokenizer)


def tiny_llama(tok, seed: int):
    """A random 2-layer Llama; a wide init so that log-probabilities differ from token to token."""
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, initializer_range=0.3, tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return transformers.LlamaForCausalLM(cfg).float()


def cpu_args(config_cls, tmp_path, **kw):
    """TRL configs default to bf16; this machine has no GPU, so fp32 on the CPU."""
    return config_cls(output_dir=str(tmp_path / "trl_out"), bf16=False, use_cpu=True, report_to="none",
                      seed=0, **kw)


# --------------------------------------------------------------------------- SFT

def test_sft_loss_equals_sft_trainer_assistant_only(tok, tmp_path):
    model = tiny_llama(tok, 0)
    args = cpu_args(trl.SFTConfig, tmp_path, assistant_only_loss=True, per_device_train_batch_size=len(CHATS))
    trainer = trl.SFTTrainer(model=model, args=args, processing_class=tok,
                             train_dataset=datasets.Dataset.from_dict({"messages": CHATS}))
    ds = trainer.train_dataset
    batch = trainer.data_collator([ds[i] for i in range(len(ds))])     # padded exactly as TRL trains

    # TRL's assistant-only labels are the course's mask (course_utils.chat), token for token
    course = pad_chats([tokenize_chat(tok, c) for c in CHATS], tok.pad_token_id)
    assert torch.equal(batch["input_ids"], course["input_ids"])
    assert torch.equal((batch["labels"] != -100).long(), course["assistant_mask"])
    assert course["assistant_mask"].sum() < course["attention_mask"].sum()      # prompts are really masked out

    trainer.model.train()
    n_items = trainer._get_num_items_in_batch([batch], torch.device("cpu"))   # what Trainer passes in training
    trl_loss = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=n_items)
    trl_loss_no_count = trainer.compute_loss(trainer.model, dict(batch))
    # gradient accumulation over two micro-batches: TRL divides by the tokens of both
    trl_loss_accum = trainer.compute_loss(trainer.model, dict(batch), num_items_in_batch=2 * n_items)

    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    ours = sft_loss(logits, batch["input_ids"], course["assistant_mask"])
    assert int(n_items) == int(course["assistant_mask"][:, 1:].sum())
    assert abs(trl_loss.item() - ours.item()) < TOL
    assert abs(trl_loss_no_count.item() - ours.item()) < TOL
    ours_accum = sft_loss(logits, batch["input_ids"], course["assistant_mask"], num_tokens=2 * int(n_items))
    assert abs(trl_loss_accum.item() - ours_accum.item()) < TOL
    # the mask matters: the loss over every real token is a different number
    everything = sft_loss(logits, batch["input_ids"], course["attention_mask"])
    assert abs(everything.item() - ours.item()) > 1e-3


# --------------------------------------------------------------------------- DPO

def test_dpo_loss_and_rewards_equal_dpo_trainer(tok, tmp_path):
    policy, reference = tiny_llama(tok, 1), tiny_llama(tok, 2)   # different weights: log-ratios are not 0
    prompts = [[{"role": "user", "content": c[-2]["content"]}] for c in CHATS]
    chosen = [[{"role": "assistant", "content": c[-1]["content"]}] for c in CHATS]
    rejected = [[{"role": "assistant", "content": t}] for t in ("The answer is 6.", "3", "No.")]
    data = datasets.Dataset.from_dict({"prompt": prompts, "chosen": chosen, "rejected": rejected})
    args = cpu_args(trl.DPOConfig, tmp_path, per_device_train_batch_size=len(CHATS))
    trainer = trl.DPOTrainer(model=policy, ref_model=reference, args=args, train_dataset=data,
                             processing_class=tok)
    ds = trainer.train_dataset
    batch = trainer.data_collator([ds[i] for i in range(len(ds))])    # [chosen rows; rejected rows]
    trainer.model.train()
    trl_loss = trainer.compute_loss(trainer.model, dict(batch))

    B = len(CHATS)
    ids, att, comp = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    pol = sequence_logprobs(policy, ids, att, comp)
    with torch.no_grad():
        ref = sequence_logprobs(reference, ids, att, comp)
    loss, chosen_r, rejected_r = dpo_loss(pol[:B], pol[B:], ref[:B], ref[B:], beta=args.beta)
    assert args.beta == 0.1 and args.loss_type == ["sigmoid"]           # the defaults this test pins down
    assert abs(trl_loss.item() - loss.item()) < TOL
    metrics = trainer._metrics["train"]
    assert abs(metrics["rewards/chosen"][-1] - chosen_r.mean().item()) < TOL
    assert abs(metrics["rewards/rejected"][-1] - rejected_r.mean().item()) < TOL
    assert abs(metrics["logps/chosen"][-1] - pol[:B].mean().item()) < 1e-4
    # the same sequence log-probabilities from the course's own Llama holding these weights
    with torch.no_grad():
        ours_course_model = sequence_logprobs(from_hf(policy).eval(), ids, att, comp)
    torch.testing.assert_close(ours_course_model, pol.detach(), atol=1e-4, rtol=1e-5)


# --------------------------------------------------------------------------- GRPO

GRPO_PROMPTS = [[{"role": "user", "content": "What is 2 + 3?"}], [{"role": "user", "content": "Is seven odd?"}]]
G = 4


def grpo_setup(tok, tmp_path, **config):
    """A GRPOTrainer whose reference model is a saved copy of the initial policy (TRL reloads the
    reference from the policy's name_or_path; an in-memory model has none), and one batch that TRL
    generated and scored itself. Returns (trainer, policy, reference, batch, rewards)."""
    ref_dir = tmp_path / "reference"
    tiny_llama(tok, 3).save_pretrained(ref_dir)
    policy = transformers.LlamaForCausalLM.from_pretrained(ref_dir)
    with torch.no_grad():                                 # the policy has moved away from the reference
        g = torch.Generator().manual_seed(4)
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    seen: list[list[float]] = []

    def reward_len(completions, **kwargs):                # any deterministic reward will do
        r = [float(len(c[0]["content"])) for c in completions]
        seen.append(r)
        return r

    args = cpu_args(trl.GRPOConfig, tmp_path, per_device_train_batch_size=len(GRPO_PROMPTS) * G,
                    num_generations=G, max_completion_length=8, **config)
    trainer = trl.GRPOTrainer(model=policy, reward_funcs=reward_len, args=args, processing_class=tok,
                              train_dataset=datasets.Dataset.from_dict({"prompt": GRPO_PROMPTS}))
    trainer.model.train()
    # set by Trainer's training loop for each optimiser step (the loss scales by it); 1 without accumulation
    trainer.current_gradient_accumulation_steps = args.gradient_accumulation_steps
    torch.manual_seed(5)
    batch = trainer._generate_and_score_completions(next(iter(trainer.get_train_dataloader())))
    reference = transformers.LlamaForCausalLM.from_pretrained(ref_dir).eval()
    return trainer, policy, reference, batch, torch.tensor(seen[-1])


def _clip_binds(logps, old, adv, mask, eps):
    ratio = torch.exp(logps - old)
    binds = ((ratio > 1 + eps) & (adv[:, None] > 0)) | ((ratio < 1 - eps) & (adv[:, None] < 0))
    return int((binds & mask.bool()).sum())


@pytest.mark.parametrize("config", [
    {},                                                    # TRL's defaults: beta 0, loss_type "dapo"
    {"beta": 0.1, "loss_type": "grpo", "temperature": 0.7},
    {"beta": 0.1, "loss_type": "dr_grpo"},
], ids=["defaults", "kl-grpo-T0.7", "kl-dr_grpo"])
def test_grpo_advantages_and_loss_equal_grpo_trainer(tok, tmp_path, config):
    trainer, policy, reference, batch, rewards = grpo_setup(tok, tmp_path, **config)
    args = trainer.args
    assert args.loss_type == config.get("loss_type", "dapo") and args.epsilon == 0.2

    # advantages: TRL's, from the rewards its reward function returned
    assert rewards.numel() == len(GRPO_PROMPTS) * G and rewards.view(-1, G).std(dim=1).max() > 0
    torch.testing.assert_close(group_advantages(rewards, G), batch["advantages"], atol=1e-6, rtol=1e-6)

    mask = batch["completion_mask"]
    logps = completion_logprobs(policy, batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"], mask,
                                temperature=args.temperature)
    ref_logps = None
    if args.beta > 0:
        with torch.no_grad():
            ref_logps = completion_logprobs(reference, batch["prompt_ids"], batch["prompt_mask"],
                                            batch["completion_ids"], mask, temperature=args.temperature)
        torch.testing.assert_close(ref_logps * mask, batch["ref_per_token_logps"] * mask, atol=1e-5, rtol=1e-5)
        assert float(((ref_logps - logps.detach()).abs() * mask).max()) > 1e-3   # the KL term is not zero
    kw = dict(beta=args.beta, ref_logps=ref_logps, loss_type=args.loss_type,
              num_tokens=batch["num_items_in_batch"], max_completion_length=args.max_completion_length)

    # on-policy (one optimisation step per generation): TRL has no old log-probs and uses logps.detach()
    assert "old_per_token_logps" not in batch
    trl_on = trainer.compute_loss(trainer.model, dict(batch))
    ours_on = grpo_loss(logps, logps.detach(), batch["advantages"], mask, **kw)
    assert abs(trl_on.item() - ours_on.item()) < TOL

    # off-policy: old log-probs of an earlier policy, far enough away that the clip binds on some tokens
    g = torch.Generator().manual_seed(6)
    old = logps.detach() + 0.3 * torch.randn(logps.shape, generator=g)
    assert _clip_binds(logps.detach(), old, batch["advantages"], mask, args.epsilon) > 0
    trl_off = trainer.compute_loss(trainer.model, dict(batch, old_per_token_logps=old))
    ours_off = grpo_loss(logps, old, batch["advantages"], mask, **kw)
    assert abs(trl_off.item() - ours_off.item()) < TOL
    unclipped = grpo_loss(logps, old, batch["advantages"], mask, **{**kw, "epsilon": 100.0})
    assert abs(unclipped.item() - ours_off.item()) > 1e-4           # the clip changed the value
