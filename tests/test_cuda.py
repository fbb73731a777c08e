"""The CUDA path: device choice, mixed-precision training, resume, KV cache, decoding and BERT on
a real GPU. CI has no GPU, so there every test here is skipped; run them on a GPU machine with
``pytest tests/test_cuda.py tests/test_hf_bridge.py tests/test_scaling.py`` (the last two also
check the HF bridge on CUDA and chapter 10's CPU ranks beside a GPU). They check results, not speed."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from course_utils import checkpoint as ckpt
from course_utils.device import autocast, autocast_dtype, describe_device, get_device
from course_utils.models.bert import BertConfig, BertForMaskedLM, BertForSequenceClassification, mask_tokens
from course_utils.models.gpt import GPT, GPTConfig
from course_utils.train import TrainConfig, Trainer, make_accelerator
from course_utils.train_data import RandomBlockSampler

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (CI has none)")

VOCAB, BLOCK = 37, 16


@pytest.fixture(autouse=True)
def _reset_accelerator():
    yield
    make_accelerator("no", device="cpu")  # leave Accelerate's shared state as the CPU tests expect


def _gpt(dropout: float = 0.0, **kw) -> GPT:
    torch.manual_seed(0)
    cfg = dict(vocab_size=VOCAB, block_size=32, n_layer=2, n_head=2, n_embd=64, dropout=dropout)
    cfg.update(kw)
    return GPT(GPTConfig(**cfg))


def _learnable(n: int = 2000) -> torch.Tensor:
    return (torch.arange(n) * 3) % VOCAB   # next token = current + 3 (mod VOCAB)


def _trainer(tmp: Path | None, mixed_precision: str, max_steps: int = 40, device: str = "cuda",
             dropout: float = 0.1) -> Trainer:
    cfg = TrainConfig(max_steps=max_steps, lr=3e-3, warmup_steps=4, eval_interval=10, eval_iters=2, batch_size=8,
                      checkpoint_dir=tmp, progress=False, mixed_precision=mixed_precision, device=device, seed=0)
    return Trainer(_gpt(dropout=dropout), cfg, RandomBlockSampler(_learnable(), BLOCK, 8, seed=1),
                   RandomBlockSampler(_learnable(500), BLOCK, 8, seed=2))


def test_device_choice_and_autocast_dtype():
    dev = get_device()
    assert dev.type == "cuda"
    assert torch.cuda.get_device_name(dev) in describe_device(dev)
    expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    assert autocast_dtype(dev) == expected
    x = torch.randn(8, 8, device=dev)
    with autocast(dev):
        assert (x @ x).dtype == expected
    assert (x @ x).dtype == torch.float32


@pytest.mark.parametrize("precision", ["auto", "fp16", "no"])
def test_trainer_learns_on_cuda(precision):
    tr = _trainer(None, precision)
    assert next(tr.unwrapped_model.parameters()).device.type == "cuda"
    if precision == "auto":
        assert tr.accelerator.mixed_precision == ("bf16" if torch.cuda.is_bf16_supported() else "fp16")
    if precision == "fp16":   # fp16 needs loss scaling; Accelerate brings a GradScaler
        assert getattr(tr.accelerator, "scaler", None) is not None
    h = tr.fit()
    assert all(math.isfinite(v) for v in h["loss"])
    assert h["val_loss"][-1] < 0.5 * h["val_loss"][0], h["val_loss"]
    # the weights stay fp32 under autocast (mixed precision, not a bf16 model)
    assert all(p.dtype == torch.float32 for p in tr.unwrapped_model.parameters())


@pytest.mark.parametrize("precision", ["no", "auto"])
def test_resume_on_cuda_matches_the_uninterrupted_run(tmp_path, precision):
    full = _trainer(None, precision, max_steps=24)
    full.fit()
    first = _trainer(tmp_path, precision, max_steps=24)
    first.fit(stop_after=11)
    torch.manual_seed(123)          # another process: other RNG draws, other initial weights
    torch.cuda.manual_seed_all(123)
    second = _trainer(tmp_path, precision, max_steps=24)
    second.fit()
    assert second.resumed_from is not None and second.resumed_from.name == "step-000011"
    # same dropout masks (CUDA RNG restored) and the same steps; GPU kernels may add in another
    # order from run to run, so equal to float rounding rather than bit for bit
    assert second.history["loss"] == pytest.approx(full.history["loss"], rel=1e-3, abs=1e-4)
    for p, q in zip(full.unwrapped_model.parameters(), second.unwrapped_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-3, atol=1e-4)


def test_checkpoint_written_on_cuda_resumes_on_cpu(tmp_path):
    gpu = _trainer(tmp_path, "auto", max_steps=20)
    gpu.fit(stop_after=10)
    ckpt.verify_checkpoint(ckpt.latest_checkpoint(tmp_path))
    cpu = _trainer(tmp_path, "no", max_steps=20, device="cpu")
    cpu.fit()   # a run paused on a GPU box goes on on a laptop: bf16 autocast there, fp32 here
    assert cpu.resumed_from is not None and cpu.step == 20
    assert next(cpu.unwrapped_model.parameters()).device.type == "cpu"
    assert cpu.history["val_loss"][-1] < cpu.history["val_loss"][0]


def test_kv_cache_on_cuda_equals_recompute():
    m = _gpt().cuda().eval()
    idx = torch.randint(0, VOCAB, (2, 20), device="cuda")
    with torch.no_grad():
        full = m(idx).logits
        cache, parts = None, []
        for start, n in ((0, 9), (9, 1), (10, 10)):
            out = m(idx[:, start:start + n], kv_cache=cache, use_cache=True)
            cache = out.kv_cache
            parts.append(out.logits)
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-4, rtol=1e-4)
    a = m.generate(idx[:, :5], 40, temperature=0.0, use_cache=True)   # slides past block_size 32
    b = m.generate(idx[:, :5], 40, temperature=0.0, use_cache=False)
    assert a.device.type == "cuda" and torch.equal(a, b)


def test_package_decoding_on_cuda_equals_cpu():
    """generation.generate / beam_search / total_nll with the model and ids on the GPU: outputs on
    the GPU too (beam scores included), and the same tokens and scores as on the CPU."""
    from course_utils import generation

    m = _gpt().eval()
    ids = torch.randint(0, VOCAB, (1, 6))
    cpu_greedy = generation.generate(m, ids, 12)
    cpu_beam = generation.beam_search(m, ids, 8, num_beams=3, eos_token_id=0, pad_token_id=0)
    cpu_nll = generation.total_nll(lambda w: m(w).logits, ids[0], context=8)
    m = m.cuda()
    gpu_greedy = generation.generate(m, ids.cuda(), 12)
    gpu_beam = generation.beam_search(m, ids.cuda(), 8, num_beams=3, eos_token_id=0, pad_token_id=0)
    gpu_nll = generation.total_nll(lambda w: m(w.cuda()).logits, ids[0], context=8)
    g = torch.Generator().manual_seed(0)
    sampled = generation.generate(m, ids.cuda(), 12, do_sample=True, top_p=0.9, generator=g)  # CPU generator
    assert gpu_greedy.device.type == "cuda" and torch.equal(gpu_greedy.cpu(), cpu_greedy)
    assert gpu_beam.sequences.device.type == "cuda" and gpu_beam.scores.device.type == "cuda"
    assert torch.equal(gpu_beam.sequences.cpu(), cpu_beam.sequences)
    torch.testing.assert_close(gpu_beam.scores.cpu(), cpu_beam.scores, atol=1e-4, rtol=1e-4)
    assert sampled.device.type == "cuda" and sampled.shape == (1, 18)
    assert abs(gpu_nll[0] - cpu_nll[0]) < 1e-3 * max(1.0, abs(cpu_nll[0])) and gpu_nll[1] == cpu_nll[1]


def test_cuda_and_cpu_give_the_same_model():
    m = _gpt().eval()
    idx = torch.randint(0, VOCAB, (2, 24))
    with torch.no_grad():
        cpu = m(idx).logits
        gpu = m.cuda()(idx.cuda()).logits.cpu()
    torch.testing.assert_close(gpu, cpu, atol=1e-4, rtol=1e-4)


def test_bert_mlm_and_classifier_train_on_cuda_with_autocast():
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=60, max_position_embeddings=32, n_layer=2, n_head=2, n_embd=64, dropout=0.0,
                     num_labels=2, pre_ln=True, position_embedding_type="rope")
    dev = torch.device("cuda")
    mlm = BertForMaskedLM(cfg).to(dev)
    opt = torch.optim.AdamW(mlm.parameters(), lr=3e-3)
    base = (torch.arange(32) % 10 + 5).repeat(16, 1).to(dev)          # a repeating, learnable text
    losses = []
    for _ in range(60):
        ids, labels = mask_tokens(base.clone(), vocab_size=60, mask_token_id=4, special_ids=(0, 1, 2, 3, 4))
        with autocast(dev):
            loss = mlm(ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and sum(losses[-5:]) / 5 < 0.5 * losses[0]

    clf = BertForSequenceClassification(cfg).to(dev).eval()
    x = torch.randint(5, 60, (4, 12), device=dev)
    mask = torch.ones_like(x)
    with torch.no_grad():
        fp32 = clf(x, mask).logits
        with autocast(dev):
            half = clf(x, mask).logits
        cpu = clf.cpu()(x.cpu(), mask.cpu()).logits
    torch.testing.assert_close(fp32.cpu(), cpu, atol=1e-4, rtol=1e-4)
    assert (half.float() - fp32).abs().max().item() < 0.1   # bf16/fp16 rounding, not a different model


def test_sdpa_flash_path_matches_naive_attention_under_bf16():
    m = _gpt(n_embd=128, n_head=2).cuda().eval()   # head size 64: a flash-attention shape
    idx = torch.randint(0, VOCAB, (4, 32), device="cuda")
    with torch.no_grad(), autocast(torch.device("cuda")):
        fast = m(idx).logits.float()
        slow = m(idx, output_attentions=True).logits.float()   # the written-out softmax(QK^T/sqrt d)V
    assert F.cross_entropy(fast[:, :-1].reshape(-1, VOCAB), idx[:, 1:].reshape(-1)).isfinite()
    assert (fast - slow).abs().max().item() < 0.05
