"""course_utils.metrics and its evaluate modules: hand-computed cases, scikit-learn agreement, errors."""
from __future__ import annotations

import os
import random

import pytest

from course_utils import metrics
from course_utils.metrics import bio_entities, classification_scores, confusion_matrix, entity_scores


# ----------------------------------------------------------------------------- classification
def test_classification_hand_computed() -> None:
    # class 0: tp=1, pred=1, true=2 -> P=1, R=.5 ; class 1: tp=1, pred=2, true=1 -> P=.5, R=1
    s = classification_scores([0, 1, 1], [0, 1, 0])
    assert s["accuracy"] == pytest.approx(2 / 3)
    assert s["precision"] == pytest.approx(0.75)
    assert s["recall"] == pytest.approx(0.75)
    assert s["f1"] == pytest.approx((2 / 3 + 2 / 3) / 2)


@pytest.mark.parametrize("average", ["macro", "micro", "weighted"])
def test_classification_agrees_with_sklearn(average: str) -> None:
    sk = pytest.importorskip("sklearn.metrics")
    rng = random.Random(average)
    for trial in range(20):
        n, k = rng.randint(1, 60), rng.randint(2, 5)
        refs = [rng.randrange(k) for _ in range(n)]
        preds = [r if rng.random() < 0.5 else rng.randrange(k) for r in refs]
        ours = classification_scores(preds, refs, average=average)
        p, r, f, _ = sk.precision_recall_fscore_support(refs, preds, average=average, zero_division=0)
        assert ours["accuracy"] == pytest.approx(sk.accuracy_score(refs, preds))
        assert (ours["precision"], ours["recall"], ours["f1"]) == pytest.approx((p, r, f)), trial


def test_classification_with_explicit_labels_matches_sklearn() -> None:
    sk = pytest.importorskip("sklearn.metrics")
    refs, preds = [0, 0, 1, 1], [0, 1, 1, 1]
    ours = classification_scores(preds, refs, labels=[0, 1, 2])
    p, r, f, _ = sk.precision_recall_fscore_support(refs, preds, labels=[0, 1, 2], average="macro", zero_division=0)
    assert (ours["precision"], ours["recall"], ours["f1"]) == pytest.approx((p, r, f))


def test_confusion_matrix_agrees_with_sklearn() -> None:
    sk = pytest.importorskip("sklearn.metrics")
    refs, preds = [0, 2, 1, 1, 0, 2, 2], [0, 1, 1, 2, 0, 2, 0]
    assert confusion_matrix(preds, refs, 3) == sk.confusion_matrix(refs, preds, labels=[0, 1, 2]).tolist()
    assert confusion_matrix([0], [0], 4) == [[1, 0, 0, 0]] + [[0] * 4] * 3


def test_classification_accepts_tensors_and_arrays() -> None:
    torch = pytest.importorskip("torch")
    s = classification_scores(torch.tensor([1, 0]), torch.tensor([1, 1]).numpy())
    assert s["accuracy"] == 0.5


@pytest.mark.parametrize("preds, refs, err", [
    ([0, 1], [0], ValueError), ([], [], ValueError), ("01", [0, 1], TypeError),
    ([0.5, 1], [0, 1], TypeError), ([True, 0], [0, 1], TypeError)])
def test_classification_bad_input(preds, refs, err) -> None:
    with pytest.raises(err):
        classification_scores(preds, refs)


def test_bad_average_and_confusion_size() -> None:
    with pytest.raises(ValueError, match="average"):
        classification_scores([0], [0], average="binary")
    with pytest.raises(ValueError, match="num_labels"):
        confusion_matrix([0, 3], [0, 1], num_labels=2)


# ----------------------------------------------------------------------------- entities
def test_bio_entities() -> None:
    assert bio_entities(["B-PER", "I-PER", "O", "B-LOC"]) == [("PER", 0, 2), ("LOC", 3, 4)]
    # I- after O or another type opens a new entity; B- right after an entity starts another
    assert bio_entities(["I-ORG", "I-ORG", "I-LOC", "B-LOC", "I-LOC"]) == [("ORG", 0, 2), ("LOC", 2, 3), ("LOC", 3, 5)]
    assert bio_entities([]) == [] and bio_entities(["O", "O"]) == []


def test_entity_scores_partial_overlap_is_fp_and_fn() -> None:
    ref = [["B-PER", "I-PER", "I-PER", "O", "B-LOC", "I-LOC", "O", "B-ORG"]]
    # PER right type, wrong boundary (0-2 instead of 0-3); LOC exact; ORG missed; an extra LOC
    pred = [["B-PER", "I-PER", "O", "O", "B-LOC", "I-LOC", "B-LOC", "O"]]
    s = entity_scores(pred, ref)
    assert (s["n_pred"], s["n_true"], s["n_correct"]) == (3, 3, 1)
    assert s["precision"] == pytest.approx(1 / 3) and s["recall"] == pytest.approx(1 / 3)
    assert s["f1"] == pytest.approx(1 / 3)
    assert s["per_type"]["PER"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert s["per_type"]["LOC"]["precision"] == pytest.approx(0.5) and s["per_type"]["LOC"]["recall"] == 1.0
    assert s["per_type"]["ORG"]["support"] == 1 and s["per_type"]["ORG"]["recall"] == 0.0


def test_entity_scores_wrong_type_same_span() -> None:
    s = entity_scores([["B-ORG", "I-ORG"]], [["B-LOC", "I-LOC"]])
    assert (s["n_pred"], s["n_true"], s["n_correct"], s["f1"]) == (1, 1, 0, 0.0)


def test_entity_scores_per_sentence_matching() -> None:
    # the same span in a different sentence is not a match
    s = entity_scores([["B-PER", "O"], ["O", "O"]], [["O", "O"], ["B-PER", "O"]])
    assert s["n_correct"] == 0 and s["n_pred"] == 1 and s["n_true"] == 1
    perfect = entity_scores([["B-PER", "I-PER"], ["O"]], [["B-PER", "I-PER"], ["O"]])
    assert perfect["f1"] == 1.0


@pytest.mark.parametrize("pred, ref, err", [
    ([["O"]], [["O", "O"]], ValueError), ([["O"]], [], ValueError), ("O", "O", TypeError),
    (["OO"], ["OO"], TypeError), ([["X-PER"]], [["O"]], ValueError), ([["B-"]], [["O"]], ValueError)])
def test_entity_scores_bad_input(pred, ref, err) -> None:
    with pytest.raises(err):
        entity_scores(pred, ref)


# ----------------------------------------------------------------------------- evaluate modules
def test_available_and_unknown_metrics() -> None:
    assert set(metrics.available_metrics()) >= {"classification", "entity_f1"}
    with pytest.raises(ValueError, match="unknown metric"):
        metrics.load_metric("accuracy")


def test_metric_modules_load_offline_and_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_EVALUATE_OFFLINE", "1")
    clf = metrics.load_metric("classification")
    preds, refs = [0, 2, 1, 1, 0], [0, 1, 1, 2, 0]
    assert clf.compute(predictions=preds, references=refs) == pytest.approx(classification_scores(preds, refs))
    assert clf.compute(predictions=preds, references=refs, average="micro")["f1"] == pytest.approx(0.6)
    ent = metrics.load_metric("entity_f1")
    p, r = [["B-PER", "I-PER", "O"], ["B-LOC"]], [["B-PER", "O", "O"], ["B-LOC"]]
    out = ent.compute(predictions=p, references=r)
    assert out["f1"] == pytest.approx(entity_scores(p, r)["f1"]) == pytest.approx(0.5)
    # incremental use, as in an evaluation loop
    ent.add_batch(predictions=p[:1], references=r[:1])
    ent.add_batch(predictions=p[1:], references=r[1:])
    assert ent.compute()["n_correct"] == 1
    assert os.environ["HF_EVALUATE_OFFLINE"] == "1"


# ----------------------------------------------------------------------------- paired comparison
def test_compare_classifiers_hand_computed() -> None:
    refs = [0, 1, 0, 1, 1, 0, 1, 0]
    a = [0, 1, 0, 1, 1, 0, 0, 1]      # right on 6
    b = [0, 1, 1, 0, 0, 0, 1, 1]      # right on 4; A alone right on 3 examples, B alone on 1
    r = metrics.compare_classifiers(a, b, refs, n_resamples=500)
    assert r["margin"] == pytest.approx(2 / 8)
    assert (r["a_only"], r["b_only"]) == (3, 1)
    # McNemar exact: 4 disagreements, P(X <= 1 | n=4, p=1/2) = 5/16, two-sided 10/16
    assert r["p_value"] == pytest.approx(10 / 16)
    assert r["ci_low"] < r["margin"] < r["ci_high"]
    assert -1.0 <= r["ci_low"] and r["ci_high"] <= 1.0


def test_compare_classifiers_identical_and_one_sided() -> None:
    refs = [i % 2 for i in range(40)]
    same = metrics.compare_classifiers(refs, refs, refs)
    assert same["margin"] == same["ci_low"] == same["ci_high"] == 0.0 and same["p_value"] == 1.0
    worse = [1 - t if i < 12 else t for i, t in enumerate(refs)]       # wrong on 12 of 40
    r = metrics.compare_classifiers(refs, worse, refs, seed=1)
    assert r["margin"] == pytest.approx(12 / 40) and (r["a_only"], r["b_only"]) == (12, 0)
    assert r["p_value"] == pytest.approx(2 * 0.5 ** 12)
    assert 0.0 < r["ci_low"] < 0.3 < r["ci_high"]               # the interval excludes 0
    swapped = metrics.compare_classifiers(worse, refs, refs, seed=1)
    assert swapped["margin"] == pytest.approx(-r["margin"]) and swapped["p_value"] == r["p_value"]


def test_compare_classifiers_interval_covers_the_truth() -> None:
    # two noisy classifiers with true accuracies 0.80 and 0.75: the 90 % interval of a
    # 2,000-example test set should contain the true margin of 0.05 in most of 40 draws
    rng = random.Random(0)
    hits = 0
    for trial in range(40):
        refs = [rng.randrange(2) for _ in range(2000)]
        a = [t if rng.random() < 0.80 else 1 - t for t in refs]
        b = [t if rng.random() < 0.75 else 1 - t for t in refs]
        r = metrics.compare_classifiers(a, b, refs, n_resamples=300, confidence=0.9, seed=trial)
        hits += r["ci_low"] <= 0.05 <= r["ci_high"]
    assert 30 <= hits <= 40


def test_compare_classifiers_bad_input() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        metrics.compare_classifiers([0, 1], [0], [0, 1])
    with pytest.raises(ValueError, match="confidence"):
        metrics.compare_classifiers([0], [0], [0], confidence=95)
    with pytest.raises(ValueError, match="n_resamples"):
        metrics.compare_classifiers([0], [0], [0], n_resamples=0)


def test_compare_classifiers_p_value_agrees_with_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    rng = random.Random(3)
    for trial in range(10):
        refs = [rng.randrange(3) for _ in range(rng.randint(5, 80))]
        a = [t if rng.random() < 0.7 else rng.randrange(3) for t in refs]
        b = [t if rng.random() < 0.6 else rng.randrange(3) for t in refs]
        r = metrics.compare_classifiers(a, b, refs, n_resamples=50)
        n = r["a_only"] + r["b_only"]
        expected = stats.binomtest(r["a_only"], n, 0.5).pvalue if n else 1.0
        assert r["p_value"] == pytest.approx(expected), trial


# ----------------------------------------------------------------------------- issue 28, item 9: the ignore index
def test_classification_leaves_out_ignored_references() -> None:
    # token classification: -100 marks special tokens and padding, which are no class at all
    preds, refs = [0, 1, 1, 0, 2], [0, 1, -100, -100, 1]
    s = classification_scores(preds, refs)
    assert s == classification_scores([0, 1, 2], [0, 1, 1])   # the same as the three real positions
    assert s["accuracy"] == pytest.approx(2 / 3)
    sk = pytest.importorskip("sklearn.metrics")
    p, r, f, _ = sk.precision_recall_fscore_support([0, 1, 1], [0, 1, 2], average="macro", zero_division=0)
    assert (s["precision"], s["recall"], s["f1"]) == pytest.approx((p, r, f))


def test_ignore_index_can_be_changed_or_switched_off() -> None:
    assert classification_scores([0, 1, 1], [0, 1, 9], ignore_index=9)["accuracy"] == 1.0
    with pytest.raises(ValueError, match=r"references.*-100.*ignore_index"):
        classification_scores([0, 1], [0, -100], ignore_index=None)


@pytest.mark.parametrize("preds, refs, match", [
    ([0, -1], [0, 1], "predictions"), ([0, -100], [0, 1], "predictions"), ([0, 1], [0, -5], "references"),
    ([1, 1], [-100, -100], "ignore_index")])
def test_negative_ids_and_all_ignored_are_errors(preds, refs, match) -> None:
    with pytest.raises(ValueError, match=match):
        classification_scores(preds, refs)


def test_classification_labels_may_not_hold_the_ignore_index() -> None:
    with pytest.raises(ValueError, match="labels"):
        classification_scores([0, 1], [0, 1], labels=[0, 1, -100])


def test_confusion_matrix_and_compare_leave_out_ignored_references() -> None:
    assert confusion_matrix([0, 1, 1], [0, 1, -100], 2) == [[1, 0], [0, 1]]
    with_ignored = metrics.compare_classifiers([0, 1, 0, 0], [0, 0, 0, 1], [0, 1, -100, -100])
    plain = metrics.compare_classifiers([0, 1], [0, 0], [0, 1])
    assert with_ignored == plain and plain["margin"] == pytest.approx(0.5)
