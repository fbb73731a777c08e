"""Tests of course_utils.llama_pretraining: recipes, the ablation runner, the BPE tokenizer, bits
per character and the load-or-train cache (synthetic speeches and tiny step counts)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from course_utils import llama_pretraining as LP
from course_utils import pretraining
from course_utils.models.gpt import GPTConfig
from course_utils.models.llama import LlamaConfig, LlamaForCausalLM
from course_utils.profiles import PROFILE_NAMES
from course_utils.tokenization import CharTokenizer

SPEECHES = [{"speaker": s, "text": t} for s, t in [
    ("MACBETH", "If it were done when 'tis done, then 'twere well\nIt were done quickly."),
    ("LADY MACBETH", "Out, damned spot! out, I say!"),
    ("VIOLA", "If music be the food of love, play on;\nGive me excess of it."),
    ("FESTE", "Better a witty fool than a foolish wit."),
]] * 40


@pytest.fixture()
def synthetic(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Synthetic speeches instead of the plays, and model folders under tmp_path."""
    from datasets import Dataset

    def rows(split: str = "train", max_rows: int | None = None):
        ds = Dataset.from_list(SPEECHES if split == "train" else SPEECHES[:20])
        return ds if max_rows is None else ds.select(range(min(max_rows, len(ds))))

    def char_data(tokenizer=None, max_rows=None):
        text = "".join(pretraining.shakespeare_row_text(r) for r in SPEECHES)
        tok = CharTokenizer.from_text(text)
        ids = torch.tensor(tok.encode(text))
        return tok, ids, ids[: 400]

    folder = lambda name, profile=None: tmp_path / "models" / f"{name}-{profile or 'ci'}"  # noqa: E731
    monkeypatch.setattr(LP, "speech_rows", rows)
    monkeypatch.setattr(LP, "char_gpt_data", char_data)
    monkeypatch.setattr(LP, "model_dir", folder)
    monkeypatch.setattr(pretraining, "model_dir", folder)
    return tmp_path


@pytest.mark.parametrize("profile", PROFILE_NAMES)
def test_recipes_are_valid(profile):
    bpe = LP.LLAMA_BPE_RECIPES[profile]
    bpe.train_config()
    LlamaConfig(vocab_size=bpe.extra["vocab_size"], **bpe.model)
    abl = LP.ABLATION_RECIPES[profile]
    abl.train_config()
    GPTConfig(vocab_size=65, **abl.model)
    assert len(abl.extra["seeds"]) >= (1 if profile == "ci" else 3)


def test_ci_recipes_are_tiny():
    assert LP.LLAMA_BPE_RECIPES["ci"].train["max_steps"] <= 100
    assert LP.ABLATION_RECIPES["ci"].train["max_steps"] * len(LP.ABLATION_RECIPES["ci"].extra["seeds"]) <= 60


@pytest.mark.parametrize("C", [64, 128, 384])
def test_ablation_variants_have_equal_parameter_counts(C):
    counts = {v: LP.count_params(LP.ablation_model(v, 65, 2, 4, C, 64)) for v in LP.ABLATION_VARIANTS}
    llama = counts["llama"]
    assert LP.swiglu_intermediate_size(C) == round(8 * C / 3)
    for v, n in counts.items():
        assert abs(n - llama) / llama < 0.07, (v, n, llama)    # biases and the 64-row position table only
    assert counts["llama-gelu"] == pytest.approx(llama, abs=3 * C)


def test_ablation_model_rejects_unknown_variant():
    with pytest.raises(ValueError, match="variant"):
        LP.ablation_model("mamba", 65, 1, 2, 32, 16)
    with pytest.raises(ValueError, match="n_embd"):
        LP.swiglu_intermediate_size(0)


def test_run_and_summarize_ablations(synthetic):
    runs = LP.run_ablations(["gpt2", "llama"], seeds=[0, 1], profile="ci", progress=False, max_steps=3,
                            warmup_steps=1, eval_interval=3, eval_iters=2)
    assert list(runs["variant"]) == ["gpt2", "llama", "gpt2", "llama"]
    assert runs["val_loss"].between(0, 10).all()
    assert runs.loc[0, "val_loss"] != runs.loc[2, "val_loss"]          # the seed matters
    table = LP.summarize_ablations(runs)
    assert table.loc["llama", "vs llama"] == 0.0
    assert table.loc["gpt2", "seeds"] == 2
    assert table.loc["gpt2", "min"] <= table.loc["gpt2", "mean"] <= table.loc["gpt2", "max"]
    again = LP.run_ablation("llama", 0, LP.char_gpt_data(), "ci", max_steps=3, warmup_steps=1, eval_interval=3,
                            eval_iters=2)
    assert again["val_loss"] == pytest.approx(runs.loc[1, "val_loss"], abs=1e-6)   # reproducible


def test_bpe_tokenizer_round_trips_and_reserves_chat_markers(synthetic):
    tok = LP.train_shakespeare_bpe(vocab_size=300)
    assert len(tok) <= 300
    for special in LP.LLAMA_BPE_SPECIALS:
        assert len(tok.encode(special, add_special_tokens=False)) == 1
    text = "VIOLA:\nIf music be the food of love, play on; ÿ 漢\n\n"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert len(ids) < len(text)                       # merges learned
    assert tok.pad_token == "<pad>" and tok.eos_token == "<|endoftext|>"


class Uniform(torch.nn.Module):
    """Equal logits for every token: exactly log2(V) bits per token."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab = vocab
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, ids):
        return type("Out", (), {"logits": torch.zeros(*ids.shape, self.vocab)})()


def test_bits_per_char_of_a_uniform_model():
    text = "to be, or not to be: that is the question.\n"
    tok = CharTokenizer.from_text(text + "\n")
    bpc = LP.text_bits_per_char(Uniform(tok.vocab_size), tok, text, context=16)
    assert bpc == pytest.approx(math.log2(tok.vocab_size), rel=1e-6)


def test_bits_per_char_counts_characters_not_tokens(synthetic):
    tok = LP.train_shakespeare_bpe(vocab_size=300)
    text = "If music be the food of love, play on;\n"
    n_tokens = len(tok.encode(text, add_special_tokens=False))
    bpc = LP.text_bits_per_char(Uniform(len(tok)), tok, text, context=8)
    assert bpc == pytest.approx(n_tokens * math.log2(len(tok)) / len(text), rel=1e-6)
    with pytest.raises(ValueError, match="prefix"):
        LP.text_bits_per_char(Uniform(len(tok)), tok, text, context=8, prefix="If music")
    with pytest.raises(ValueError, match="text"):
        LP.text_bits_per_char(Uniform(len(tok)), tok, "", context=8)


def test_load_or_pretrain_trains_once_then_loads(synthetic, monkeypatch):
    calls = []
    real = LP.pretrain_llama_bpe

    def short(profile=None, progress=True):
        calls.append(profile)
        return real(profile, progress=False, max_steps=4, warmup_steps=1, eval_interval=2, eval_iters=1)

    monkeypatch.setattr(LP, "pretrain_llama_bpe", short)
    model, tok = LP.load_or_pretrain_llama_bpe("ci", progress=False)
    assert isinstance(model, LlamaForCausalLM) and len(tok) == model.config.vocab_size
    assert (synthetic / "models" / f"{LP.LLAMA_BPE_NAME}-ci" / "training.json").is_file()
    again, tok2 = LP.load_or_pretrain_llama_bpe("ci", progress=False)
    assert calls == ["ci"]                                  # the second call loaded the saved copy
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    assert tok2.encode("VIOLA:\n") == tok.encode("VIOLA:\n")
    ids = tok("If music", return_tensors="pt")["input_ids"]
    assert again.generate(ids, 5, temperature=0).shape == (1, ids.shape[1] + 5)


def test_heldout_text_rejects_a_bad_length():
    with pytest.raises(ValueError, match="n_chars"):
        LP.heldout_text(0)
