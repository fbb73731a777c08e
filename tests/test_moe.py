"""course_utils.moe: the router, the balancing loss (against transformers' Mixtral), capacity,
the MoE layer (against a per-token loop and against transformers' MixtralSparseMoeBlock), and
the tiny MoE language model."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from course_utils.models.gpt import GPTConfig
from course_utils.moe import (MoEFeedForward, MoELanguageModel, SwiGLU, capacity_keep_mask, expert_capacity,
                              load_balancing_loss, route_top_k, utilisation_imbalance)


def test_swiglu_matches_transformers_llama_mlp():
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaMLP

    torch.manual_seed(0)
    ours = SwiGLU(16, 40)
    ref = LlamaMLP(LlamaConfig(hidden_size=16, intermediate_size=40, num_attention_heads=2,
                                      num_key_value_heads=2, hidden_act="silu", mlp_bias=False))
    ref.load_state_dict(ours.state_dict())
    x = torch.randn(3, 5, 16)
    torch.testing.assert_close(ours(x), ref(x))


def test_route_top_k_renormalises_and_picks_largest():
    logits = torch.tensor([[0.0, 2.0, 1.0, -1.0], [3.0, 0.0, 0.0, 3.0]])
    probs, weights, experts = route_top_k(logits, 2)
    torch.testing.assert_close(probs, F.softmax(logits, -1))
    assert experts[0].tolist() == [1, 2]
    assert set(experts[1].tolist()) == {0, 3}
    torch.testing.assert_close(weights.sum(-1), torch.ones(2))
    p = probs[0, [1, 2]]
    torch.testing.assert_close(weights[0], p / p.sum())


@pytest.mark.parametrize("top_k", [0, 5, 2.0, True])
def test_bad_top_k_is_a_value_error_naming_it(top_k):
    with pytest.raises(ValueError, match="top_k"):
        route_top_k(torch.randn(3, 4), top_k)
    with pytest.raises(ValueError, match="top_k"):
        MoEFeedForward(8, 16, n_experts=4, top_k=top_k)


def test_bad_sizes_are_value_errors():
    with pytest.raises(ValueError, match="n_experts"):
        MoEFeedForward(8, 16, n_experts=0)
    with pytest.raises(ValueError, match="capacity_factor"):
        MoEFeedForward(8, 16, capacity_factor=0.0)
    with pytest.raises(ValueError, match="aux_loss_coef"):
        MoELanguageModel(GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=8), 16, 2, 1,
                         aux_loss_coef=-1.0)


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_balancing_loss_is_mixtral_loss_over_top_k(top_k):
    from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

    torch.manual_seed(1)
    logits = torch.randn(50, 6)
    probs, _, experts = route_top_k(logits, top_k)
    ours = load_balancing_loss(probs, experts)
    ref = load_balancing_loss_func((logits,), num_experts=6, top_k=top_k)
    torch.testing.assert_close(ours * top_k, ref)


def test_balancing_loss_is_one_when_balanced_and_e_when_collapsed():
    E = 4
    probs = torch.full((8, E), 1.0 / E)
    experts = torch.arange(8).remainder(E)[:, None]
    assert load_balancing_loss(probs, experts).item() == pytest.approx(1.0)
    probs = torch.zeros(8, E)
    probs[:, 0] = 1.0
    assert load_balancing_loss(probs, torch.zeros(8, 1, dtype=torch.long)).item() == pytest.approx(E)
    assert utilisation_imbalance(torch.tensor([8.0, 0, 0, 0])) == pytest.approx(E)
    assert utilisation_imbalance(torch.tensor([2.0, 2, 2, 2])) == pytest.approx(1.0)


def test_capacity_drops_later_assignments_first_choices_first():
    assert expert_capacity(10, 4, 2, 1.0) == 5
    assert expert_capacity(10, 4, 1, 1.25) == 4
    with pytest.raises(ValueError, match="capacity_factor"):
        expert_capacity(10, 4, 1, -1.0)
    # all four tokens want expert 0 first; expert 0 keeps only 2 of them
    experts = torch.tensor([[0, 1], [0, 1], [0, 2], [0, 1]])
    keep = capacity_keep_mask(experts, 3, capacity=2)
    assert keep[:, 0].tolist() == [True, True, False, False]
    assert keep[:, 1].tolist() == [True, True, True, False]      # expert 1: tokens 0, 1 fit, token 3 does not


def _reference_moe(layer: MoEFeedForward, x: torch.Tensor) -> torch.Tensor:
    """Token by token: Σ over its top-k experts of weight · expert(x)."""
    flat = x.reshape(-1, x.size(-1))
    _, weights, experts = route_top_k(layer.router(flat), layer.top_k)
    rows = []
    for t in range(flat.size(0)):
        rows.append(sum(weights[t, j] * layer.experts[int(experts[t, j])](flat[t]) for j in range(layer.top_k)))
    return torch.stack(rows).view_as(x)


@pytest.mark.parametrize("n_experts,top_k", [(4, 1), (4, 2), (6, 3)])
def test_moe_layer_equals_a_per_token_loop(n_experts, top_k):
    torch.manual_seed(2)
    layer = MoEFeedForward(12, 20, n_experts=n_experts, top_k=top_k)
    x = torch.randn(2, 7, 12)
    with torch.no_grad():
        torch.testing.assert_close(layer(x), _reference_moe(layer, x), atol=1e-6, rtol=1e-5)
    s = layer.last_stats
    assert s.n_tokens == 14 and s.dropped == 0 and int(s.counts.sum()) == 14 * top_k
    torch.testing.assert_close(s.utilisation.sum(), torch.tensor(1.0))


def test_moe_layer_matches_transformers_mixtral_block():
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    torch.manual_seed(3)
    ours = MoEFeedForward(16, 24, n_experts=4, top_k=2).eval()
    ref = MixtralSparseMoeBlock(MixtralConfig(hidden_size=16, intermediate_size=24, num_local_experts=4,
                                              num_experts_per_tok=2, router_jitter_noise=0.0,
                                              experts_implementation="eager")).eval()
    with torch.no_grad():
        ref.gate.weight.copy_(ours.router.weight)
        for e, ex in enumerate(ours.experts):
            ref.experts.gate_up_proj[e].copy_(torch.cat([ex.gate_proj.weight, ex.up_proj.weight], 0))
            ref.experts.down_proj[e].copy_(ex.down_proj.weight)
        x = torch.randn(3, 5, 16)
        torch.testing.assert_close(ours(x), ref(x), atol=1e-6, rtol=1e-5)


def test_one_expert_top_one_is_a_plain_swiglu():
    torch.manual_seed(4)
    layer = MoEFeedForward(8, 16, n_experts=1, top_k=1)
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(layer(x), layer.experts[0](x))


def test_capacity_in_the_layer_counts_drops_and_zeroes_dropped_tokens():
    torch.manual_seed(5)
    layer = MoEFeedForward(8, 16, n_experts=2, top_k=1, capacity_factor=0.5)
    with torch.no_grad():
        layer.router.weight.zero_()
        layer.router.weight[0] += 1.0              # positive inputs all prefer expert 0
        x = torch.rand(1, 10, 8) + 0.1
        y = layer(x)
    cap = expert_capacity(10, 2, 1, 0.5)             # 3
    assert layer.last_stats.dropped == 10 - cap
    assert torch.count_nonzero(y[0].abs().sum(-1)) == cap   # dropped tokens get zero (the residual carries them)


def test_router_gets_gradient_from_the_task_and_from_the_aux_loss():
    torch.manual_seed(6)
    layer = MoEFeedForward(8, 16, n_experts=4, top_k=2)
    layer(torch.randn(2, 5, 8)).pow(2).sum().backward()
    assert layer.router.weight.grad.abs().sum() > 0
    layer.zero_grad()
    layer(torch.randn(2, 5, 8))
    layer.aux_loss.backward()
    assert layer.router.weight.grad.abs().sum() > 0


def _tiny_cfg():
    return GPTConfig(vocab_size=13, block_size=16, n_layer=2, n_head=2, n_embd=16, bias=False)


def test_equal_active_parameters_and_losses():
    torch.manual_seed(7)
    dense = MoELanguageModel(_tiny_cfg(), d_hidden=64)
    moe = MoELanguageModel(_tiny_cfg(), d_hidden=32, n_experts=4, top_k=2, aux_loss_coef=0.5)
    router = 2 * 16 * 4
    assert moe.num_params(active=True) == dense.num_params() + router
    assert moe.num_params() == dense.num_params() + router + 2 * 2 * 3 * 16 * 32
    x = torch.randint(0, 13, (2, 10))
    out = moe(x, targets=x)
    assert out.logits.shape == (2, 10, 13) and len(out.stats) == 2
    torch.testing.assert_close(out.loss, out.lm_loss + 0.5 * out.aux_loss)
    moe.eval()
    out = moe(x, targets=x)
    torch.testing.assert_close(out.loss, out.lm_loss)       # held-out loss: the LM loss alone
    d = dense(x, targets=x)
    assert d.aux_loss is None and d.stats == [] and torch.equal(d.loss, d.lm_loss)
    with pytest.raises(TypeError, match="GPTConfig"):
        MoELanguageModel({"n_embd": 16}, 32)


def test_tiny_moe_lm_trains_with_the_course_trainer():
    from course_utils.train import TrainConfig, Trainer
    from course_utils.train_data import RandomBlockSampler

    torch.manual_seed(8)
    data = torch.arange(400) % 13                     # a periodic sequence: easy to learn
    model = MoELanguageModel(_tiny_cfg(), d_hidden=16, n_experts=4, top_k=2)
    cfg = TrainConfig(max_steps=60, lr=1e-2, warmup_steps=2, batch_size=8, eval_interval=60, eval_iters=2,
                      progress=False)
    h = Trainer(model, cfg, RandomBlockSampler(data, 16, 8, seed=0), RandomBlockSampler(data, 16, 8, seed=1)).fit()
    assert h["val_loss"][-1] < 0.3 * h["val_loss"][0]


def test_train_lm_records_utilisation_every_step():
    from course_utils.moe import train_lm
    from course_utils.train import TrainConfig

    torch.manual_seed(9)
    data = torch.arange(300) % 13
    model = MoELanguageModel(_tiny_cfg(), d_hidden=16, n_experts=4, top_k=2)
    seen = []
    cfg = TrainConfig(max_steps=5, lr=1e-3, warmup_steps=1, batch_size=4, eval_interval=5, eval_iters=1,
                      progress=False, log=lambda ev: seen.append(ev.kind))
    run = train_lm(model, data, data, cfg)
    assert run.utilisation.shape == (5, 2, 4)
    torch.testing.assert_close(run.utilisation.sum(-1), torch.ones(5, 2))
    assert seen.count("step") == 5 and run.seconds > 0 and run.val_loss == run.history["val_loss"][-1]
    dense = train_lm(MoELanguageModel(_tiny_cfg(), d_hidden=32), data, data, cfg)
    assert dense.utilisation.numel() == 0
