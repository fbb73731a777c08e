"""Chapter 7's on-screen definitions agree with the package (course_utils.metrics / finetune /
contrastive) and with the CRF head's implementation (torchcrf.CRF, inside models.bert)."""
from __future__ import annotations

import random

import pytest
import torch
from torchcrf import CRF

from course_utils.contrastive import info_nce
from course_utils.finetune import align_labels
from course_utils.metrics import bio_entities
from tests.nbsource import notebook_namespace

NOTEBOOK = "07_fine_tuning.ipynb"
TYPES = ("PER", "LOC", "ORG")


@pytest.fixture(scope="module")
def nb():
    return notebook_namespace(NOTEBOOK, ["bio_entities", "align_labels", "crf_score", "crf_log_partition", "viterbi",
                                         "info_nce"])


def _random_tags(rng: random.Random, n: int) -> list[str]:
    return [rng.choice(["O", "O", f"B-{rng.choice(TYPES)}", f"I-{rng.choice(TYPES)}"]) for _ in range(n)]


def test_bio_entities_agrees(nb) -> None:
    rng = random.Random(7)
    for _ in range(300):
        tags = _random_tags(rng, rng.randint(0, 15))
        assert nb["bio_entities"](tags) == bio_entities(tags), tags


def test_align_labels_agrees(nb) -> None:
    rng = random.Random(8)
    for _ in range(200):
        n_words = rng.randint(1, 8)
        word_ids: list[int | None] = [None]
        for w in range(n_words):
            word_ids += [w] * rng.randint(1, 3)
        word_ids += [None] * rng.randint(1, 3)
        labels = [rng.randrange(7) for _ in range(n_words)]
        for all_sub in (False, True):
            assert nb["align_labels"](word_ids, labels, all_sub) == align_labels(word_ids, labels, all_sub)


def _random_crf(num_tags: int, seed: int) -> CRF:
    crf = CRF(num_tags, batch_first=True)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # torchcrf starts near zero; spread the scores so that paths differ clearly
        for p in (crf.start_transitions, crf.transitions, crf.end_transitions):
            p.copy_(torch.randn(p.shape, generator=g) * 2)
    return crf


def test_crf_likelihood_and_viterbi_agree_with_torchcrf(nb) -> None:
    """The notebook's forward algorithm and Viterbi give torchcrf's log-likelihood and best paths."""
    g = torch.Generator().manual_seed(3)
    for trial in range(40):
        num_tags, length = 2 + trial % 6, 1 + (trial * 7) % 23
        crf = _random_crf(num_tags, trial)
        params = (crf.start_transitions.detach(), crf.transitions.detach(), crf.end_transitions.detach())
        em = torch.randn(length, num_tags, generator=g) * 3
        tags = torch.randint(num_tags, (length,), generator=g)
        ours = nb["crf_score"](em, tags, *params) - nb["crf_log_partition"](em, *params)
        with torch.no_grad():
            theirs = crf(em[None], tags[None], reduction="sum")
        assert torch.allclose(ours, theirs, atol=1e-4), (trial, float(ours), float(theirs))
        assert nb["viterbi"](em, *params) == crf.decode(em[None])[0], trial


def test_info_nce_agrees(nb) -> None:
    g = torch.Generator().manual_seed(5)
    for batch, dim, tau in [(2, 3, 1.0), (8, 16, 0.05), (32, 384, 0.01), (5, 7, 0.2)]:
        q, p = torch.randn(batch, dim, generator=g), torch.randn(batch, dim, generator=g)
        assert torch.allclose(nb["info_nce"](q, p, tau), info_nce(q, p, tau), rtol=1e-5, atol=1e-6), (batch, tau)
        assert torch.allclose(nb["info_nce"](q, q + 0.1 * p, tau), info_nce(q, q + 0.1 * p, tau), rtol=1e-5, atol=1e-6)
