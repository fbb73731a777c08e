"""Tests of course_utils.train_data: datasets -> token ids -> blocks, resumable samplers."""
from __future__ import annotations

import pytest
import torch

from course_utils.train_data import RandomBlockSampler, SequentialBlockSampler, pack_blocks, tokenize_dataset


def _encode(text: str) -> list[int]:
    return [ord(c) - ord("a") if c.isalpha() else 26 for c in text]


def test_tokenize_dataset_concatenates_rows_in_order() -> None:
    from datasets import Dataset

    ds = Dataset.from_dict({"speaker": ["a", "b"], "text": ["abc", "de"]})
    ids = tokenize_dataset(ds, _encode)
    assert ids.dtype == torch.long and ids.tolist() == [0, 1, 2, 3, 4]
    ids = tokenize_dataset(ds, _encode, format_row=lambda r: f"{r['speaker']}:{r['text']} ")
    assert ids.tolist() == _encode("a:abc b:de ")
    with pytest.raises(ValueError, match="column"):
        tokenize_dataset(ds, _encode, text_column="missing")
    with pytest.raises(TypeError, match="datasets.Dataset"):
        tokenize_dataset(["abc"], _encode)


def test_pack_blocks_shift_and_coverage() -> None:
    data = torch.arange(23)
    blocks = pack_blocks(data, 5)
    assert blocks.shape == (4, 6)
    assert blocks[:, 0].tolist() == [0, 5, 10, 15]
    targets = blocks[:, 1:].reshape(-1).tolist()
    assert targets == list(range(1, 21))  # every token but the first is a target once
    with pytest.raises(ValueError, match="block_size"):
        pack_blocks(torch.arange(4), 5)
    with pytest.raises(TypeError, match="1-D integer"):
        pack_blocks(torch.rand(30), 5)


@pytest.mark.parametrize("cls", [RandomBlockSampler, SequentialBlockSampler])
def test_sampler_targets_are_shifted_inputs(cls) -> None:
    data = torch.arange(200)
    x, y = cls(data, 8, 4, seed=0).next_batch()
    assert x.shape == y.shape == (4, 8) and x.dtype == torch.long
    assert torch.equal(y, x + 1)


@pytest.mark.parametrize("cls", [RandomBlockSampler, SequentialBlockSampler])
def test_sampler_resumes_exactly(cls) -> None:
    data = torch.arange(300)
    a = cls(data, 8, 4, seed=3)
    for _ in range(5):
        a.next_batch()
    state = a.state_dict()
    want = [a.next_batch()[0] for _ in range(40)]  # crosses epoch boundaries for the sequential one
    b = cls(data, 8, 4, seed=3)
    b.load_state_dict(state)
    got = [b.next_batch()[0] for _ in range(40)]
    assert all(torch.equal(p, q) for p, q in zip(want, got))
    # the state loads with weights_only=True (it goes into checkpoints)
    import io
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    torch.load(buf, weights_only=True)


@pytest.mark.parametrize("cls", [RandomBlockSampler, SequentialBlockSampler])
def test_eval_batches_fixed_and_independent(cls) -> None:
    s = cls(torch.arange(300), 8, 4, seed=0)
    first = [x for x, _ in s.eval_batches(3)]
    s.next_batch()
    again = [x for x, _ in s.eval_batches(3)]
    assert all(torch.equal(p, q) for p, q in zip(first, again))
    t = cls(torch.arange(300), 8, 4, seed=0)
    assert torch.equal(t.next_batch()[0], cls(torch.arange(300), 8, 4, seed=0).next_batch()[0])


def test_sequential_epoch_visits_every_block_once() -> None:
    s = SequentialBlockSampler(torch.arange(81), 8, 2, seed=1)   # 10 blocks, 5 batches per epoch
    starts = torch.cat([s.next_batch()[0][:, 0] for _ in range(s.batches_per_epoch)])
    assert sorted(starts.tolist()) == list(range(0, 80, 8))
    nxt = torch.cat([s.next_batch()[0][:, 0] for _ in range(s.batches_per_epoch)])
    assert s.epoch == 1 and not torch.equal(starts, nxt)  # a new order in the next epoch


def test_sampler_bad_inputs() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        RandomBlockSampler(torch.arange(100), 8, 0)
    with pytest.raises(ValueError, match="more data"):
        SequentialBlockSampler(torch.arange(20), 8, 4)
    with pytest.raises(ValueError, match="RandomBlockSampler"):
        RandomBlockSampler(torch.arange(100), 8, 2).load_state_dict({"kind": "sequential"})
