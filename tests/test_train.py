"""Tests of course_utils.train: schedule, optimizer groups, accumulation, exact resume, errors."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from course_utils import checkpoint as ckpt
from course_utils.train import (
    TrainConfig, TrainEvent, Trainer, configure_optimizer, default_loss, get_lr, make_accelerator,
)
from course_utils.train_data import RandomBlockSampler

VOCAB, BLOCK = 11, 8


class TinyLM(nn.Module):
    """A minimal causal LM with the course GPT's interface (and dropout, so RNG state matters)."""

    def __init__(self, vocab: int = VOCAB, width: int = 16, dropout: float = 0.2) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, width)
        self.ln = nn.LayerNorm(width)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(width, vocab)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        logits = self.head(self.drop(self.ln(self.emb(idx))))
        loss = None if targets is None else F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss


def _data(n: int = 400, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(VOCAB, (n,), generator=g)


def _trainer(tmp: Path | None, max_steps: int = 12, **kw) -> Trainer:
    torch.manual_seed(0)
    model = TinyLM()
    cfg = TrainConfig(max_steps=max_steps, lr=3e-2, warmup_steps=3, eval_interval=4, eval_iters=2,
                      batch_size=4, checkpoint_dir=tmp, progress=False, mixed_precision="no", **kw)
    return Trainer(model, cfg, RandomBlockSampler(_data(), BLOCK, 4, seed=1),
                   RandomBlockSampler(_data(seed=5), BLOCK, 4, seed=2))


# ------------------------------------------------------------------ schedule
def test_lr_schedule_values() -> None:
    kw = dict(max_lr=1.0, warmup_steps=10, max_steps=110, min_lr=0.1)
    assert get_lr(0, **kw) == pytest.approx(1 / 11)
    assert get_lr(9, **kw) == pytest.approx(10 / 11)
    assert get_lr(10, **kw) == pytest.approx(1.0)                       # peak after warm-up
    assert get_lr(60, **kw) == pytest.approx(0.1 + 0.9 * 0.5)           # half-way: cos(pi/2) = 0
    assert get_lr(110, **kw) == pytest.approx(0.1)
    assert get_lr(500, **kw) == pytest.approx(0.1)
    values = [get_lr(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))               # monotone decay


def test_lr_schedule_bad_inputs() -> None:
    with pytest.raises(ValueError, match="warmup_steps"):
        get_lr(0, max_lr=1.0, warmup_steps=20, max_steps=10, min_lr=0.0)
    with pytest.raises(ValueError, match="min_lr"):
        get_lr(0, max_lr=1.0, warmup_steps=0, max_steps=10, min_lr=2.0)


def test_trainer_follows_schedule() -> None:
    tr = _trainer(None, max_steps=12)
    tr.fit()
    want = [get_lr(s, max_lr=3e-2, warmup_steps=3, max_steps=12, min_lr=3e-3) for s in range(12)]
    assert tr.history["lr"] == pytest.approx(want)
    assert tr.history["eval_step"] == [0, 4, 8, 12]


# ------------------------------------------------------------------ optimizer
def test_decay_groups() -> None:
    model = TinyLM()
    opt = configure_optimizer(model, lr=1e-3, weight_decay=0.1)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model.emb.weight), id(model.head.weight)}
    assert {id(p) for p in no_decay["params"]} == {id(model.ln.weight), id(model.ln.bias), id(model.head.bias)}
    assert opt.defaults["fused"] is True   # CPU parameters get the fused kernel by default
    assert not configure_optimizer(model, lr=1e-3, weight_decay=0.1, fused=False).defaults["fused"]
    with pytest.raises(TypeError, match="nn.Module"):
        configure_optimizer("model", lr=1e-3, weight_decay=0.1)  # type: ignore[arg-type]


def test_accumulation_equals_big_batch() -> None:
    """k micro-batches of b rows accumulate to the same update as one batch of k*b rows."""
    data = _data()
    torch.manual_seed(0)
    big_model = TinyLM(dropout=0.0)
    small_model = TinyLM(dropout=0.0)
    small_model.load_state_dict(big_model.state_dict())
    cfg_big = TrainConfig(max_steps=3, lr=1e-2, warmup_steps=0, batch_size=8, progress=False,
                          mixed_precision="no", eval_interval=100, grad_clip=0.5)
    cfg_small = TrainConfig(max_steps=3, lr=1e-2, warmup_steps=0, batch_size=2, grad_accum_steps=4,
                            progress=False, mixed_precision="no", eval_interval=100, grad_clip=0.5)

    class Fixed:  # hands out the same 8 rows, whole or in quarters
        def __init__(self, b: int) -> None:
            self.x = data[:8 * BLOCK].view(8, BLOCK)
            self.y = data[1:8 * BLOCK + 1].view(8, BLOCK)
            self.b, self.i = b, 0

        def next_batch(self):
            j = self.i % (8 // self.b)
            self.i += 1
            return self.x[j * self.b:(j + 1) * self.b], self.y[j * self.b:(j + 1) * self.b]

        def eval_batches(self, n):
            return [(self.x, self.y)]

        def state_dict(self):
            return {"i": self.i}

        def load_state_dict(self, s):
            self.i = s["i"]

    big = Trainer(big_model, cfg_big, Fixed(8))
    small = Trainer(small_model, cfg_small, Fixed(2))
    big.fit()
    small.fit()
    assert small.history["loss"] == pytest.approx(big.history["loss"], rel=1e-5)
    for (n, p), q in zip(big.unwrapped_model.named_parameters(), small.unwrapped_model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)


# ------------------------------------------------------------------ checkpoint and resume
def test_resume_is_bit_exact(tmp_path: Path) -> None:
    full = _trainer(None, max_steps=12)
    full.fit()

    first = _trainer(tmp_path, max_steps=12)
    first.fit(stop_after=7)                       # "interrupted" after step 7
    assert ckpt.latest_checkpoint(tmp_path).name == "step-000007"
    # a new process would build a fresh model with other weights and other RNG draws
    torch.manual_seed(123)
    torch.rand(100)
    second = _trainer(tmp_path, max_steps=12)
    with torch.no_grad():
        for p in second.unwrapped_model.parameters():
            p.add_(1.0)
    second.fit()
    assert second.resumed_from is not None and second.resumed_from.name == "step-000007"
    assert second.history["loss"] == full.history["loss"]           # exact, not approx
    assert second.history["val_loss"] == full.history["val_loss"]
    for p, q in zip(full.unwrapped_model.parameters(), second.unwrapped_model.parameters()):
        assert torch.equal(p, q)


def test_checkpoint_interval_and_keep(tmp_path: Path) -> None:
    tr = _trainer(tmp_path, max_steps=12, checkpoint_interval=3, keep_checkpoints=2)
    tr.fit()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-000009", "step-000012"]


def test_resume_with_changed_settings_warns(tmp_path: Path) -> None:
    _trainer(tmp_path, max_steps=12).fit(stop_after=4)
    with pytest.warns(UserWarning, match="changed settings"):
        _trainer(tmp_path, max_steps=20).fit(stop_after=5)


def test_callback_sees_events_and_cannot_disturb_rng() -> None:
    events: list[TrainEvent] = []

    def noisy(ev: TrainEvent) -> None:  # e.g. sampling text in a callback draws random numbers
        events.append(ev)
        torch.rand(1000)

    quiet = _trainer(None)
    quiet.fit()
    loud = _trainer(None, log=noisy)
    loud.fit()
    assert loud.history["loss"] == quiet.history["loss"]
    kinds = [e.kind for e in events]
    assert kinds.count("step") == 12 and kinds.count("eval") == 3 and kinds[-1] == "end"
    assert all(e.val_loss is not None for e in events if e.kind == "eval")


def test_loss_decreases_on_learnable_data() -> None:
    seq = torch.arange(400) % VOCAB  # deterministic sequence: next token = current + 1
    torch.manual_seed(0)
    cfg = TrainConfig(max_steps=60, lr=5e-2, warmup_steps=5, eval_interval=60, eval_iters=2,
                      batch_size=8, progress=False, mixed_precision="no")
    tr = Trainer(TinyLM(dropout=0.0), cfg, RandomBlockSampler(seq, BLOCK, 8, seed=0))
    tr.fit()
    assert tr.history["train_loss"][-1] < 0.3 * tr.history["train_loss"][0]


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("kw, match", [
    (dict(max_steps=0), "max_steps"),
    (dict(lr=-1.0), "lr"),
    (dict(warmup_steps=50, max_steps=10), "warmup_steps"),
    (dict(min_lr=1.0, lr=0.1), "min_lr"),
    (dict(grad_accum_steps=0), "grad_accum_steps"),
    (dict(mixed_precision="fp8"), "mixed_precision"),
    (dict(checkpoint_interval=10), "checkpoint_dir"),
    (dict(betas=(0.9, 1.5)), "betas"),
    (dict(grad_clip=0.0), "grad_clip"),
    (dict(batch_size=2.5), "batch_size"),
])
def test_bad_config(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)


def test_bad_trainer_inputs() -> None:
    cfg = TrainConfig(max_steps=2, warmup_steps=0, progress=False, mixed_precision="no")
    with pytest.raises(TypeError, match="sampler"):
        Trainer(TinyLM(), cfg, [1, 2, 3])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="TrainConfig"):
        Trainer(TinyLM(), {"max_steps": 2}, RandomBlockSampler(_data(), BLOCK, 2))  # type: ignore[arg-type]
    tr = Trainer(TinyLM(), cfg, RandomBlockSampler(_data(), BLOCK, 2))
    with pytest.raises(ValueError, match="stop_after"):
        tr.fit(stop_after=5)
    with pytest.raises(ValueError, match="checkpoint_dir"):
        tr.save_checkpoint()
    with pytest.raises(TypeError, match="batch"):
        default_loss(TinyLM(), torch.zeros(2, 3, dtype=torch.long))


def test_make_accelerator_switches_precision_in_one_process() -> None:
    a = make_accelerator("no", device="cpu")
    assert a.mixed_precision == "no" and a.device.type == "cpu"
    b = make_accelerator("bf16", device="cpu")   # would raise in plain Accelerate
    assert b.mixed_precision == "bf16"
    c = make_accelerator("auto", device="cpu")   # fp32 or bf16 on CPU, as course_utils.device decides
    from course_utils.device import autocast_dtype
    assert c.mixed_precision == {torch.bfloat16: "bf16"}.get(autocast_dtype(torch.device("cpu")), "no")


def test_bf16_autocast_trains_on_cpu() -> None:
    torch.manual_seed(0)
    cfg = TrainConfig(max_steps=3, warmup_steps=0, progress=False, mixed_precision="bf16", eval_interval=3,
                      eval_iters=1, batch_size=4)
    tr = Trainer(TinyLM(), cfg, RandomBlockSampler(_data(), BLOCK, 4))
    tr.fit()
    assert all(math.isfinite(v) for v in tr.history["loss"])
    make_accelerator("no", device="cpu")  # leave the shared state as other tests expect


# ------------------------------------------------------------------ issue 28, item 9: refuse what cannot train
class NaNAfter(TinyLM):
    """TinyLM whose training loss becomes NaN from its ``n``-th training forward on."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n, self.calls = n, 0

    def forward(self, idx, targets=None):
        logits, loss = super().forward(idx, targets)
        if self.training:
            self.calls += 1
            if self.calls >= self.n and loss is not None:
                loss = loss * float("nan")
        return logits, loss


def test_non_finite_loss_stops_with_step_and_last_good_checkpoint(tmp_path: Path) -> None:
    from course_utils.train import NonFiniteLossError

    torch.manual_seed(0)
    model = NaNAfter(5)
    cfg = TrainConfig(max_steps=12, lr=3e-2, warmup_steps=3, eval_interval=4, eval_iters=2, batch_size=4,
                      checkpoint_dir=tmp_path, checkpoint_interval=2, progress=False, mixed_precision="no")
    tr = Trainer(model, cfg, RandomBlockSampler(_data(), BLOCK, 4, seed=1))
    with pytest.raises(NonFiniteLossError, match=r"step 5\b.*step-000004") as err:
        tr.fit()
    assert isinstance(err.value, FloatingPointError) and err.value.step == 5
    assert err.value.checkpoint == tmp_path / "step-000004"
    assert tr.step == 4 and len(tr.history["loss"]) == 4          # the bad step is not recorded
    assert all(torch.isfinite(p).all() for p in tr.unwrapped_model.parameters()), \
        "the optimizer stepped on NaN gradients"


def test_non_finite_loss_without_checkpoints_says_so() -> None:
    from course_utils.train import NonFiniteLossError

    torch.manual_seed(0)
    cfg = TrainConfig(max_steps=6, warmup_steps=0, eval_interval=6, eval_iters=1, batch_size=4,
                      progress=False, mixed_precision="no")
    tr = Trainer(NaNAfter(2), cfg, RandomBlockSampler(_data(), BLOCK, 4, seed=1))
    with pytest.raises(NonFiniteLossError, match=r"step 2\b.*no checkpoint") as err:
        tr.fit()
    assert err.value.checkpoint is None


@pytest.mark.parametrize("kw, match", [
    (dict(lr=float("inf")), "lr"),
    (dict(lr=float("nan")), "lr"),
    (dict(lr=True), "lr"),
    (dict(lr="1e-3"), "lr"),
    (dict(min_lr=float("nan")), "min_lr"),
    (dict(weight_decay=float("inf")), "weight_decay"),
    (dict(weight_decay=float("nan")), "weight_decay"),
    (dict(grad_clip=float("inf")), "grad_clip"),
    (dict(max_steps=-5), "max_steps"),
    (dict(warmup_steps=-1), "warmup_steps"),
    (dict(betas=(0.9,)), "betas"),
    (dict(betas=(float("nan"), 0.9)), "betas"),
    (dict(keep_checkpoints=0), "keep_checkpoints"),
])
def test_bad_config_non_finite_and_negative(kw: dict, match: str) -> None:
    with pytest.raises((ValueError, TypeError), match=match):
        TrainConfig(**kw)


def test_configure_optimizer_refuses_non_finite_lr() -> None:
    with pytest.raises(ValueError, match="lr"):
        configure_optimizer(TinyLM(), float("inf"), 0.1)
    with pytest.raises(ValueError, match="lr"):
        configure_optimizer(TinyLM(), float("nan"), 0.1)


def test_get_lr_refuses_non_finite_rates() -> None:
    with pytest.raises(ValueError, match="max_lr"):
        get_lr(0, max_lr=float("inf"), warmup_steps=0, max_steps=10, min_lr=0.0)


# out-of-range class labels / target ids: a clear ValueError before any torch IndexError
def _tiny_models():
    from course_utils.models import (BertConfig, BertForMaskedLM, BertForSequenceClassification,
                                     BertForTokenClassification, GPT, GPTConfig)
    from course_utils.models.seq2seq import Seq2SeqConfig, Seq2SeqTransformer

    torch.manual_seed(0)
    bc = dict(vocab_size=20, max_position_embeddings=8, n_layer=1, n_head=2, n_embd=8, num_labels=3)
    ids = torch.randint(20, (2, 5))
    return {
        "gpt": (GPT(GPTConfig(vocab_size=VOCAB, block_size=8, n_layer=1, n_head=2, n_embd=8)),
                lambda m, y: m(torch.randint(VOCAB, (2, 5)), targets=y), (2, 5), VOCAB),
        "bert-mlm": (BertForMaskedLM(BertConfig(**bc)), lambda m, y: m(ids, labels=y), (2, 5), 20),
        "bert-seq": (BertForSequenceClassification(BertConfig(**bc)), lambda m, y: m(ids, labels=y), (2,), 3),
        "bert-tok": (BertForTokenClassification(BertConfig(**bc)), lambda m, y: m(ids, labels=y), (2, 5), 3),
        "seq2seq": (Seq2SeqTransformer(Seq2SeqConfig(src_vocab_size=9, tgt_vocab_size=7, max_len=8, n_layer=1,
                                                      n_head=2, n_embd=8)),
                    lambda m, y: m(torch.randint(9, (2, 4)), torch.randint(7, (2, 5)), labels=y), (2, 5), 7),
    }


@pytest.mark.parametrize("name", ["gpt", "bert-mlm", "bert-seq", "bert-tok", "seq2seq"])
@pytest.mark.parametrize("bad", ["too_big", "negative"])
def test_out_of_range_labels_are_a_clear_error(name: str, bad: str) -> None:
    model, call, shape, n = _tiny_models()[name]
    y = torch.zeros(shape, dtype=torch.long)
    y.view(-1)[-1] = n if bad == "too_big" else -3
    with pytest.raises(ValueError, match=rf"(labels|targets).*\[0, {n}\).*-100"):
        call(model, y)
    y.view(-1)[-1] = -100 if name != "bert-seq" else n - 1           # the ignore index stays allowed
    assert torch.isfinite(call(model, y).loss)


@pytest.mark.parametrize("name", ["gpt", "bert-seq", "seq2seq"])
def test_float_labels_are_a_clear_error(name: str) -> None:
    model, call, shape, n = _tiny_models()[name]
    with pytest.raises(TypeError, match=r"(labels|targets).*integer"):
        call(model, torch.full(shape, 1.7))


def test_trainer_with_out_of_range_targets_fails_up_front() -> None:
    from course_utils.models import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=1, n_head=2, n_embd=8))
    cfg = TrainConfig(max_steps=2, warmup_steps=0, eval_interval=2, eval_iters=1, batch_size=4,
                      progress=False, mixed_precision="no")

    def shifted(m: nn.Module, batch) -> torch.Tensor:   # an off-by-one target pipeline: VOCAB-1 -> VOCAB
        return m(batch[0], targets=batch[1] + 1).loss

    tr = Trainer(model, cfg, RandomBlockSampler(_data(), BLOCK, 4, seed=1), loss_fn=shifted)
    with pytest.raises(ValueError, match=rf"targets.*\[0, {VOCAB}\)"):
        tr.fit()


# ------------------------------------------------------------------ issue 27: mixed precision on CPU by evidence
def _precision_trainer(tmp: Path | None, precision: str, max_steps: int = 12) -> Trainer:
    """:func:`_trainer`'s run with another ``mixed_precision``."""
    torch.manual_seed(0)
    cfg = TrainConfig(max_steps=max_steps, lr=3e-2, warmup_steps=3, eval_interval=4, eval_iters=2,
                      batch_size=4, checkpoint_dir=tmp, progress=False, mixed_precision=precision)
    return Trainer(TinyLM(), cfg, RandomBlockSampler(_data(), BLOCK, 4, seed=1),
                   RandomBlockSampler(_data(seed=5), BLOCK, 4, seed=2))


@pytest.mark.parametrize("isa, fp32, bf16, expected", [("avx512_bf16", 190.0, 800.0, "bf16"),
                                                      ("avx512_bf16", 190.0, 150.0, "no"),
                                                      (None, 190.0, 800.0, "no")])
def test_auto_precision_on_cpu_follows_the_evidence(monkeypatch, tmp_path: Path, isa, fp32, bf16, expected) -> None:
    from course_utils import device as dev
    monkeypatch.delenv("COURSE_PRECISION", raising=False)
    monkeypatch.setattr(dev, "cpu_bf16_isa", lambda: isa)
    widths = []
    monkeypatch.setattr(dev, "cached_cpu_probe", lambda refresh=False, width=None: widths.append(width) or dev.PrecisionProbe(
        fp32_gflops=fp32, bf16_gflops=bf16, tokens=768, width=width, threads=2, cpu="test", torch=torch.__version__))
    tr = _precision_trainer(None, "auto", max_steps=4)
    assert tr.accelerator.mixed_precision == expected
    assert widths == ([None] if isa else [])  # TinyLM has no config: the default width is probed
    if isa:  # a model with a config is probed at its own width
        from course_utils.models.gpt import GPT, GPTConfig
        Trainer(GPT(GPTConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=1, n_head=2, n_embd=24)),
                TrainConfig(max_steps=2, warmup_steps=0, batch_size=4, progress=False), RandomBlockSampler(_data(), BLOCK, 4, seed=1))
        assert widths[-1] == 24
    monkeypatch.setenv("COURSE_PRECISION", "fp32")  # the learner's override beats the evidence
    assert _precision_trainer(None, "auto", max_steps=4).accelerator.mixed_precision == "no"
    make_accelerator("no", device="cpu")


def test_bf16_keeps_weights_optimizer_state_loss_and_checkpoints_fp32(tmp_path: Path) -> None:
    tr = _precision_trainer(tmp_path, "bf16", max_steps=4)
    seen = []
    plain_loss = tr.loss_fn

    def loss_fn(model, batch):
        loss = plain_loss(model, batch)
        seen.append((model.training, torch.is_autocast_enabled("cpu"), loss.dtype))
        return loss

    tr.loss_fn = loss_fn
    tr.fit()
    # training steps ran under autocast; evaluation did not (held-out losses are fp32 figures)
    assert {(training, on) for training, on, _ in seen} == {(True, True), (False, False)}
    assert {dt for _, _, dt in seen} == {torch.float32}                # the loss itself is fp32
    assert {p.dtype for p in tr.unwrapped_model.parameters()} == {torch.float32}
    states = [t for st in tr.optimizer.state_dict()["state"].values() for t in st.values()
              if isinstance(t, torch.Tensor) and t.is_floating_point() and t.dim() > 0]
    assert states and {t.dtype for t in states} == {torch.float32}     # Adam's moments
    from safetensors.torch import load_file
    saved = load_file(str(ckpt.latest_checkpoint(tmp_path) / "model.safetensors"))
    assert {t.dtype for t in saved.values()} == {torch.float32}
    make_accelerator("no", device="cpu")


def test_resume_is_bit_exact_under_bf16(tmp_path: Path) -> None:
    full = _precision_trainer(None, "bf16")
    full.fit()
    first = _precision_trainer(tmp_path, "bf16")
    first.fit(stop_after=7)
    second = _precision_trainer(tmp_path, "bf16")
    second.fit()
    assert second.history["loss"] == full.history["loss"]          # bit for bit, not approximately
    assert second.history["val_loss"] == full.history["val_loss"]
    for a, b in zip(full.unwrapped_model.parameters(), second.unwrapped_model.parameters()):
        assert torch.equal(a, b)
    make_accelerator("no", device="cpu")


# ------------------------------------------------------------------ keep the best, patience (issue 32)
def _alternating(n: int = 400) -> torch.Tensor:
    """Next token = current + 1 or + 2, alternately: a model that learns "+1" (the training
    data) gets better on this at first and then worse, as it grows sure of "+1"."""
    out = [0]
    for t in range(n - 1):
        out.append((out[-1] + (1 if t % 2 == 0 else 2)) % VOCAB)
    return torch.tensor(out)


def _overfit_trainer(tmp: Path | None = None, max_steps: int = 40, **kw) -> Trainer:
    torch.manual_seed(0)
    cfg = TrainConfig(max_steps=max_steps, lr=5e-2, warmup_steps=2, eval_interval=2, eval_iters=2,
                      batch_size=8, progress=False, mixed_precision="no", checkpoint_dir=tmp, **kw)
    train = torch.arange(400) % VOCAB                       # next token = current + 1
    return Trainer(TinyLM(dropout=0.0), cfg, RandomBlockSampler(train, BLOCK, 8, seed=0),
                   RandomBlockSampler(_alternating(), BLOCK, 8, seed=1))


def _weights(tr: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in tr.unwrapped_model.state_dict().items()}


def test_keep_best_ends_with_the_weights_of_the_lowest_validation_loss() -> None:
    tr = _overfit_trainer(keep_best=True)
    h = tr.fit()
    val, steps = h["val_loss"], h["eval_step"]
    best = min(range(len(val)), key=val.__getitem__)
    assert 0 < steps[best] < 40 and val[-1] > val[best] + 0.1, (steps, val)   # validation did turn
    assert h["best_step"] == steps[best] and h["best_val_loss"] == val[best] and h["stopped_early"] is False
    assert f"step {steps[best]}'s weights" in h["kept"] and "keep_best" in h["kept"]
    # the same run paused at the best step holds exactly the weights the keep-best run ended with
    twin = _overfit_trainer()
    twin.fit(stop_after=steps[best])
    kept, there = _weights(tr), _weights(twin)
    assert kept.keys() == there.keys() and all(torch.equal(kept[k], there[k]) for k in kept)
    assert tr.evaluate()["val"] == pytest.approx(val[best], abs=1e-6)
    # without keep_best the model ends with the last step's (worse) weights
    plain = _overfit_trainer()
    plain.fit()
    assert plain.evaluate()["val"] == pytest.approx(val[-1], abs=1e-6) and "best_step" not in plain.history


def test_patience_stops_early_and_keeps_the_best(tmp_path: Path) -> None:
    full = _overfit_trainer(keep_best=True)
    full.fit()
    tr = _overfit_trainer(tmp_path, keep_best=True, patience=3)
    h = tr.fit()
    assert h["stopped_early"] is True and h["best_step"] == full.history["best_step"]
    assert tr.step == h["best_step"] + 3 * 2 < 40                     # 3 evaluations (every 2 steps) later
    assert h["eval_step"][-1] == tr.step and "patience 3" in h["kept"]
    assert all(torch.equal(a, b) for a, b in zip(_weights(tr).values(), _weights(full).values()))
    # the checkpoint at the stop records it: fit() again does not train on
    assert ckpt.latest_checkpoint(tmp_path).name == ckpt.step_dir_name(tr.step)
    again = _overfit_trainer(tmp_path, keep_best=True, patience=3)
    again.fit()
    assert again.step == tr.step and again.history["stopped_early"] is True
    assert all(torch.equal(a, b) for a, b in zip(_weights(again).values(), _weights(full).values()))
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path))
    assert state["best"]["step"] == h["best_step"] and "patience" in state["best"]["why"]


def test_resume_keeps_the_best_so_far(tmp_path: Path) -> None:
    full = _overfit_trainer(keep_best=True)
    full.fit()
    best_step = full.history["best_step"]
    first = _overfit_trainer(tmp_path, keep_best=True, checkpoint_interval=2)
    first.fit(stop_after=best_step + 6)          # interrupted after the best step: its weights are only in the checkpoint
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path))
    assert state["best"]["step"] == best_step and state["best"]["state"] is not None
    second = _overfit_trainer(tmp_path, keep_best=True, checkpoint_interval=2)
    with torch.no_grad():
        for p in second.unwrapped_model.parameters():
            p.add_(1.0)
    second.fit()
    assert second.resumed_from is not None and second.history["val_loss"] == full.history["val_loss"]
    assert second.history["best_step"] == best_step
    assert all(torch.equal(a, b) for a, b in zip(_weights(second).values(), _weights(full).values()))


def test_losses_read_at_log_points_change_nothing() -> None:
    """The losses read every 4th step (as on a GPU) are the ones read every step, bit for bit."""
    every = _trainer(None)
    every.fit()
    events: list[TrainEvent] = []
    sparse = _trainer(None, log_interval=5, log=events.append)
    sparse.fit()
    for key in ("step", "loss", "lr", "grad_norm", "val_loss"):
        assert sparse.history[key] == every.history[key], key
    step_losses = [e.loss for e in events if e.kind == "step"]
    assert step_losses[4] == every.history["loss"][4] and step_losses[0] is None   # read at step 5, not 1
    assert all(e.loss == every.history["loss"][e.step - 1] for e in events if e.kind == "eval")


def test_non_finite_loss_found_at_a_log_point_names_its_step(tmp_path: Path) -> None:
    """On a GPU the loss is read every log_interval steps: the error names the step that failed
    and the last checkpoint saved before it (a save reads the losses first)."""
    from course_utils.train import NonFiniteLossError

    torch.manual_seed(0)
    cfg = TrainConfig(max_steps=12, lr=3e-2, warmup_steps=3, eval_interval=12, eval_iters=2, batch_size=4,
                      checkpoint_dir=tmp_path, checkpoint_interval=2, progress=False, mixed_precision="no",
                      log_interval=3)
    tr = Trainer(NaNAfter(5), cfg, RandomBlockSampler(_data(), BLOCK, 4, seed=1))
    tr._check_each_step = False                       # behave as on a GPU
    with pytest.raises(NonFiniteLossError, match=r"step 5\b.*read at step 6.*step-000004") as err:
        tr.fit()
    assert err.value.step == 5 and err.value.checkpoint == tmp_path / "step-000004"
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step-000002", "step-000004"]


@pytest.mark.parametrize("kw, match", [
    (dict(compile="fast"), "compile"),
    (dict(patience=0), "patience"),
    (dict(keep_best="yes"), "keep_best"),
    (dict(log_interval=0), "log_interval"),
])
def test_bad_keep_best_compile_settings(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)


def test_keep_best_needs_validation_data() -> None:
    cfg = TrainConfig(max_steps=2, warmup_steps=0, progress=False, mixed_precision="no", keep_best=True)
    with pytest.raises(ValueError, match="val_data"):
        Trainer(TinyLM(), cfg, RandomBlockSampler(_data(), BLOCK, 2))


def test_compile_auto_means_cuda_only() -> None:
    from course_utils.train import should_compile

    assert should_compile("auto", "cuda") and not should_compile("auto", "cpu")
    # a short CUDA run stays eager: the compile time would not be paid back
    assert should_compile("auto", "cuda", max_steps=5000) and not should_compile("auto", "cuda", max_steps=500)
    assert should_compile("always", "cuda", max_steps=5)
    assert should_compile("always", "cpu") and not should_compile("never", "cuda")
    assert _trainer(None).compiled is False                       # auto on this CPU: eager, as before
    with pytest.raises(ValueError, match="compile"):
        should_compile("yes", "cpu")


@pytest.mark.slow
def test_compiled_and_eager_losses_agree_on_cpu() -> None:
    """torch.compile (inductor, a C++ compiler on CPU: ~20 s cold here) gives the eager losses."""
    from course_utils.models import GPT, GPTConfig

    runs = {}
    for mode in ("never", "always"):
        torch.manual_seed(0)
        model = GPT(GPTConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=1, n_head=2, n_embd=16))
        cfg = TrainConfig(max_steps=4, lr=3e-2, warmup_steps=1, eval_interval=4, eval_iters=1, batch_size=4,
                          progress=False, mixed_precision="no", compile=mode)
        tr = Trainer(model, cfg, RandomBlockSampler(_data(), BLOCK, 4, seed=1),
                     RandomBlockSampler(_data(seed=5), BLOCK, 4, seed=2))
        assert tr.compiled is (mode == "always")
        runs[mode] = tr.fit()
        assert not any(k.startswith("_orig_mod") for k in tr.unwrapped_model.state_dict())
    assert runs["always"]["loss"] == pytest.approx(runs["never"]["loss"], rel=1e-4)
    assert runs["always"]["val_loss"] == pytest.approx(runs["never"]["val_loss"], rel=1e-4)
