"""Chapter 7's on-screen definitions agree with the package (course_utils.metrics / finetune)."""
from __future__ import annotations

import random

import pytest

from course_utils.finetune import align_labels
from course_utils.metrics import bio_entities
from tests.nbsource import notebook_namespace

NOTEBOOK = "07_fine_tuning.ipynb"
TYPES = ("PER", "LOC", "ORG")


@pytest.fixture(scope="module")
def nb():
    return notebook_namespace(NOTEBOOK, ["bio_entities", "align_labels"])


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
