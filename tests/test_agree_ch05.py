"""Chapter 5's notebook and the package agree: get_lr and get_batch run from the notebook's own cells."""
from __future__ import annotations

import pytest
import torch

from course_utils.train import get_lr
from course_utils.train_data import RandomBlockSampler
from tests.nbsource import notebook_namespace

NOTEBOOK = "05_pretraining.ipynb"


@pytest.fixture(scope="module")
def nb() -> dict:
    return notebook_namespace(NOTEBOOK, ["get_lr", "get_batch"])


@pytest.mark.parametrize("sched", [
    dict(max_lr=1e-3, warmup_steps=100, max_steps=2000, min_lr=1e-4),
    dict(max_lr=3e-3, warmup_steps=0, max_steps=60, min_lr=0.0),
    dict(max_lr=1.0, warmup_steps=10, max_steps=10, min_lr=0.5),
])
def test_get_lr_matches_package(nb: dict, sched: dict) -> None:
    steps = range(sched["max_steps"] + 5)
    assert [nb["get_lr"](s, **sched) for s in steps] == [get_lr(s, **sched) for s in steps]


@pytest.mark.parametrize("seed, block, batch", [(0, 8, 4), (3, 16, 12)])
def test_get_batch_matches_random_block_sampler(nb: dict, seed: int, block: int, batch: int) -> None:
    data = torch.randint(50, (500,), generator=torch.Generator().manual_seed(seed))
    g = torch.Generator().manual_seed(seed)
    sampler = RandomBlockSampler(data, block, batch, seed=seed)
    for _ in range(3):
        x, y = nb["get_batch"](data, block, batch, g)
        xs, ys = sampler.next_batch()
        assert torch.equal(x, xs) and torch.equal(y, ys)
