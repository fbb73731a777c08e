"""course GPT <-> transformers GPT2LMHeadModel: same logits and same greedy tokens, both ways."""
from __future__ import annotations

import pytest
import torch

from course_utils.hf_bridge import gpt_to_hf, hf_to_gpt
from course_utils.models.gpt import GPT, GPTConfig

transformers = pytest.importorskip("transformers")


def _gpt(**kw) -> GPT:
    torch.manual_seed(0)
    cfg = dict(vocab_size=41, block_size=24, n_layer=2, n_head=2, n_embd=32)
    cfg.update(kw)
    m = GPT(GPTConfig(**cfg)).eval()
    with torch.no_grad():  # random LayerNorm parameters too, so a swapped/missed one would show
        for name, p in m.named_parameters():
            if "ln" in name:
                p.add_(0.1 * torch.randn_like(p))
    return m


ON_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none)")


@pytest.mark.parametrize("device, tol", [("cpu", 1e-4), pytest.param("cuda", 1e-3, marks=ON_CUDA)])
@pytest.mark.parametrize("bias", [True, False])
def test_gpt_to_hf_same_logits_and_greedy_tokens(bias, device, tol):
    ours = _gpt(bias=bias)
    hf = gpt_to_hf(ours).to(device)
    ours = ours.to(device)
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()
    idx = torch.randint(0, 41, (2, 12), device=device)
    with torch.no_grad():
        diff = (ours(idx).logits - hf(input_ids=idx).logits).abs().max().item()
    assert diff < tol
    a = ours.generate(idx[:, :4], 8, temperature=0.0)
    b = hf.generate(idx[:, :4], max_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(a, b)


def test_hf_to_gpt_round_trip_and_random_hf_model():
    cfg = transformers.GPT2Config(vocab_size=41, n_positions=24, n_layer=2, n_head=4, n_embd=32,
                                  bos_token_id=None, eos_token_id=None)
    torch.manual_seed(1)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    ours = hf_to_gpt(hf)
    assert ours.lm_head.weight is ours.transformer.wte.weight
    idx = torch.randint(0, 41, (3, 10))
    with torch.no_grad():
        assert (ours(idx).logits - hf(input_ids=idx).logits).abs().max().item() < 1e-4
    back = gpt_to_hf(ours)
    with torch.no_grad():
        assert (back(input_ids=idx).logits - hf(input_ids=idx).logits).abs().max().item() < 1e-5


def test_bad_inputs():
    with pytest.raises(TypeError, match="GPT2LMHeadModel"):
        hf_to_gpt(torch.nn.Linear(2, 2))
    with pytest.raises(TypeError, match="course_utils GPT"):
        gpt_to_hf(torch.nn.Linear(2, 2))
    cfg = transformers.GPT2Config(vocab_size=11, n_positions=8, n_layer=1, n_head=2, n_embd=8,
                                  activation_function="relu", bos_token_id=None, eos_token_id=None)
    with pytest.raises(ValueError, match="activation_function"):
        hf_to_gpt(transformers.GPT2LMHeadModel(cfg))
