"""Evaluation metrics for fine-tuned models, as plain functions and as ``evaluate`` modules.

* :func:`classification_scores` -- accuracy and macro (or micro/weighted) precision, recall, F1
  from label ids (the same numbers as scikit-learn with ``zero_division=0``);
* :func:`confusion_matrix` -- counts ``[true, predicted]``;
* :func:`compare_classifiers` -- is one classifier really better than another on the same test
  set? The accuracy margin with a paired-bootstrap confidence interval, and McNemar's exact test;
* :func:`bio_entities` / :func:`entity_scores` -- entity-level precision, recall and F1 from BIO
  tag sequences, as seqeval computes them: an entity counts only when its type *and* its span
  match exactly, so a right type with a wrong boundary is one false positive *and* one false
  negative;
* :func:`load_metric` -- the same functions wrapped as ``evaluate.Metric`` modules in
  ``course_utils/metric_modules/<name>/<name>.py``, loaded from that local folder (the Hub's
  metric scripts cannot be fetched offline). There is one implementation: the modules call the
  functions of this file.

Defined in chapter 7, Fine-tuning.
"""
from __future__ import annotations

import math
import numbers
from pathlib import Path
from typing import Any, Iterable, Sequence

METRIC_MODULES = Path(__file__).resolve().parent / "metric_modules"
AVERAGES = ("macro", "micro", "weighted")
IGNORE_INDEX = -100   # a reference equal to this (special token, padding) is no example at all


def _as_int_list(values: Any, name: str) -> list[int]:
    if hasattr(values, "tolist"):
        values = values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"{name} must be a sequence of integer label ids, got {type(values).__name__}")
    out = list(values)
    for v in out:
        if isinstance(v, bool) or not isinstance(v, int):
            raise TypeError(f"{name} must hold integer label ids, found {v!r} ({type(v).__name__})")
    return out


def _check_pair(predictions: Any, references: Any,
                ignore_index: int | None = IGNORE_INDEX) -> tuple[list[int], list[int]]:
    """Both lists of ids, with the pairs whose reference is ``ignore_index`` left out; negative ids
    anywhere else are a ValueError (a -100 is padding, never a class)."""
    preds = _as_int_list(predictions, "predictions")
    refs = _as_int_list(references, "references")
    if len(preds) != len(refs):
        raise ValueError(f"predictions and references differ in length ({len(preds)} vs {len(refs)})")
    if not refs:
        raise ValueError("no examples: predictions and references are empty")
    if ignore_index is not None:
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise TypeError(f"ignore_index must be an int or None, got {ignore_index!r}")
        kept = [(p, t) for p, t in zip(preds, refs) if t != ignore_index]
        if not kept:
            raise ValueError(f"every reference equals ignore_index={ignore_index}: no example to score")
        preds, refs = [p for p, _ in kept], [t for _, t in kept]
    for name, ids in (("predictions", preds), ("references", refs)):
        if min(ids) < 0:
            raise ValueError(f"{name} must be label ids >= 0, found {min(ids)}"
                             + (f" (references equal to ignore_index={ignore_index} are left out; "
                                "predictions never are)" if name == "predictions" else
                                f"; pass ignore_index={min(ids)} to leave those positions out" if ignore_index is None
                                else f" (only ignore_index={ignore_index} is left out)"))
    return preds, refs


def _safe_div(a: float, b: float) -> float:
    return a / b if b else 0.0


def _f1(p: float, r: float) -> float:
    return _safe_div(2 * p * r, p + r)


def confusion_matrix(predictions: Sequence[int], references: Sequence[int],
                     num_labels: int | None = None, ignore_index: int | None = IGNORE_INDEX) -> list[list[int]]:
    """Counts ``m[true][pred]`` as a ``num_labels x num_labels`` list of lists.

    ``num_labels`` defaults to ``max(label) + 1``; positions whose reference is ``ignore_index``
    (-100: special tokens, padding) are left out. Defined in chapter 7, Fine-tuning.
    """
    preds, refs = _check_pair(predictions, references, ignore_index)
    top = max(preds + refs) + 1
    n = top if num_labels is None else num_labels
    if not isinstance(n, int) or n < top or min(preds + refs) < 0:
        raise ValueError(f"labels must be ids in [0, num_labels={n}); found ids up to {top - 1} "
                         f"and down to {min(preds + refs)}")
    m = [[0] * n for _ in range(n)]
    for p, t in zip(preds, refs):
        m[t][p] += 1
    return m


def classification_scores(predictions: Sequence[int], references: Sequence[int],
                          average: str = "macro", labels: Sequence[int] | None = None,
                          ignore_index: int | None = IGNORE_INDEX) -> dict[str, float]:
    """``{"accuracy", "precision", "recall", "f1"}`` of predicted vs. true label ids.

    ``average="macro"`` gives each class the same weight (a rare class counts as much as a
    frequent one); ``"weighted"`` weights classes by their support; ``"micro"`` pools all
    decisions (for single-label data it equals accuracy). ``labels`` (default: every id seen)
    are the classes averaged over. A class never predicted has precision 0 (scikit-learn's
    ``zero_division=0``). Positions whose reference is ``ignore_index`` (-100, as in the losses:
    special tokens, padding, non-first sub-tokens) are left out, so -100 is never counted as a
    class; ``ignore_index=None`` keeps every position (then a negative id is an error).
    Defined in chapter 7, Fine-tuning.
    """
    preds, refs = _check_pair(predictions, references, ignore_index)
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")
    classes = sorted(set(preds) | set(refs)) if labels is None else _as_int_list(labels, "labels")
    if not classes:
        raise ValueError("labels is empty")
    if min(classes) < 0:
        raise ValueError(f"labels must be class ids >= 0, got {min(classes)}")
    tp = {c: 0 for c in classes}
    n_pred = {c: 0 for c in classes}
    n_true = {c: 0 for c in classes}
    for p, t in zip(preds, refs):
        if p in n_pred:
            n_pred[p] += 1
        if t in n_true:
            n_true[t] += 1
        if p == t and p in tp:
            tp[p] += 1
    accuracy = sum(p == t for p, t in zip(preds, refs)) / len(refs)
    if average == "micro":
        precision = _safe_div(sum(tp.values()), sum(n_pred.values()))
        recall = _safe_div(sum(tp.values()), sum(n_true.values()))
        f1 = _f1(precision, recall)
    else:
        per = {c: (_safe_div(tp[c], n_pred[c]), _safe_div(tp[c], n_true[c])) for c in classes}
        weights = {c: (1.0 if average == "macro" else float(n_true[c])) for c in classes}
        total = sum(weights.values())
        if total == 0:
            raise ValueError("weighted average over classes with no true examples")
        precision = sum(weights[c] * per[c][0] for c in classes) / total
        recall = sum(weights[c] * per[c][1] for c in classes) / total
        f1 = sum(weights[c] * _f1(*per[c]) for c in classes) / total
    return {"accuracy": accuracy, "precision": precision, "recall": recall, "f1": f1}


def compare_classifiers(predictions_a: Sequence[int], predictions_b: Sequence[int], references: Sequence[int],
                        n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0,
                        ignore_index: int | None = IGNORE_INDEX) -> dict[str, float]:
    """Accuracy of A minus accuracy of B on the same examples, and how sure we can be of it.

    Both classifiers answered the same test set, so the comparison is *paired*: only the
    examples where exactly one of them is right carry information. Returns

    * ``margin`` -- accuracy(A) - accuracy(B);
    * ``ci_low``, ``ci_high`` -- a ``confidence`` interval for the margin from the paired
      bootstrap (resample the test examples with replacement ``n_resamples`` times, recompute
      the margin, take the percentiles);
    * ``a_only``, ``b_only`` -- how many examples only A / only B got right;
    * ``p_value`` -- McNemar's exact two-sided test that A and B are equally accurate: under that
      hypothesis each of the ``a_only + b_only`` disagreements is a fair coin flip.

    A margin whose interval contains 0 (or ``p_value`` > 0.05) is not evidence that A is better.
    Examples whose reference is ``ignore_index`` (-100) are left out.
    Defined in chapter 7, Fine-tuning.
    """
    import numpy as np

    pa, refs = _check_pair(predictions_a, references, ignore_index)
    pb, _ = _check_pair(predictions_b, references, ignore_index)
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, int) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive int, got {n_resamples!r}")
    if isinstance(confidence, bool) or not isinstance(confidence, numbers.Real) or not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    diff = np.array([(a == t) - (b == t) for a, b, t in zip(pa, pb, refs)], dtype=np.float64)  # -1, 0 or +1
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, (n_resamples, diff.size))].mean(axis=1)   # one margin per resample
    tail = (1.0 - confidence) / 2 * 100
    a_only, b_only = int((diff > 0).sum()), int((diff < 0).sum())
    n = a_only + b_only
    p_value = min(1.0, 2 * sum(math.comb(n, k) for k in range(min(a_only, b_only) + 1)) / 2 ** n)
    return {"margin": float(diff.mean()), "ci_low": float(np.percentile(means, tail)),
            "ci_high": float(np.percentile(means, 100 - tail)), "a_only": a_only, "b_only": b_only,
            "p_value": p_value}


def bio_entities(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """Entities of one BIO sequence as ``(type, start, end)`` with ``end`` exclusive.

    ``B-X`` opens an entity; ``I-X`` continues an open entity of type ``X``; an ``I-X`` that
    follows ``O`` or another type opens a new one (as conlleval and seqeval's default mode do).
    Example: ``["B-PER", "I-PER", "O", "I-LOC"]`` -> ``[("PER", 0, 2), ("LOC", 3, 4)]``.
    Defined in chapter 7, Fine-tuning.
    """
    if isinstance(tags, str):
        raise TypeError("tags must be a sequence of tag strings like ['B-PER', 'I-PER', 'O'], not one string")
    entities: list[tuple[str, int, int]] = []
    kind: str | None = None
    start = 0
    for i, tag in enumerate(list(tags) + ["O"]):
        if not isinstance(tag, str):
            raise TypeError(f"tags must be strings, found {tag!r} at position {i}")
        if tag == "O":
            prefix, typ = "O", None
        elif len(tag) > 2 and tag[1] == "-" and tag[0] in "BI":
            prefix, typ = tag[0], tag[2:]
        else:
            raise ValueError(f"bad BIO tag {tag!r} at position {i}: expected 'O', 'B-<type>' or 'I-<type>'")
        continues = prefix == "I" and typ == kind
        if kind is not None and not continues:
            entities.append((kind, start, i))
            kind = None
        if prefix == "B" or (prefix == "I" and not continues):
            kind, start = typ, i
    return entities


def entity_scores(predictions: Sequence[Sequence[str]], references: Sequence[Sequence[str]]) -> dict[str, Any]:
    """Entity-level micro precision, recall, F1 over sentences of BIO tags, plus per type.

    Returns ``{"precision", "recall", "f1", "n_pred", "n_true", "n_correct", "per_type":
    {type: {"precision", "recall", "f1", "support"}}}``. An entity is correct only if the
    same ``(type, start, end)`` is in the reference of the same sentence.
    Defined in chapter 7, Fine-tuning.
    """
    for name, value in (("predictions", predictions), ("references", references)):
        if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
            raise TypeError(f"{name} must be a list of tag sequences (one per sentence), got {type(value).__name__}")
    preds, refs = list(predictions), list(references)
    if len(preds) != len(refs):
        raise ValueError(f"predictions and references hold different numbers of sentences ({len(preds)} vs {len(refs)})")
    if not refs:
        raise ValueError("no sentences to score")
    counts: dict[str, list[int]] = {}  # type -> [n_pred, n_true, n_correct]
    for k, (p_tags, t_tags) in enumerate(zip(preds, refs)):
        if isinstance(p_tags, str) or isinstance(t_tags, str):
            raise TypeError(f"sentence {k} of predictions/references: expected a sequence of tags, got a string; "
                            "wrap sentences in a list")
        if len(p_tags) != len(t_tags):
            raise ValueError(f"sentence {k}: {len(p_tags)} tags in predictions vs {len(t_tags)} in references")
        p_ents, t_ents = set(bio_entities(p_tags)), set(bio_entities(t_tags))
        for typ, *_ in p_ents:
            counts.setdefault(typ, [0, 0, 0])[0] += 1
        for typ, *_ in t_ents:
            counts.setdefault(typ, [0, 0, 0])[1] += 1
        for typ, *_ in p_ents & t_ents:
            counts[typ][2] += 1
    n_pred = sum(c[0] for c in counts.values())
    n_true = sum(c[1] for c in counts.values())
    n_correct = sum(c[2] for c in counts.values())
    precision, recall = _safe_div(n_correct, n_pred), _safe_div(n_correct, n_true)
    per_type = {}
    for typ in sorted(counts):
        p, r = _safe_div(counts[typ][2], counts[typ][0]), _safe_div(counts[typ][2], counts[typ][1])
        per_type[typ] = {"precision": p, "recall": r, "f1": _f1(p, r), "support": counts[typ][1]}
    return {"precision": precision, "recall": recall, "f1": _f1(precision, recall), "n_pred": n_pred,
            "n_true": n_true, "n_correct": n_correct, "per_type": per_type}


def metric_path(name: str) -> Path:
    """Folder of the local ``evaluate`` module ``name`` (one of :func:`available_metrics`)."""
    if not isinstance(name, str) or not (METRIC_MODULES / name / f"{name}.py").is_file():
        raise ValueError(f"unknown metric {name!r}; the course's local metrics are {available_metrics()}")
    return METRIC_MODULES / name


def available_metrics() -> list[str]:
    """Names of the ``evaluate`` modules shipped in ``course_utils/metric_modules``."""
    return sorted(p.name for p in METRIC_MODULES.iterdir() if (p / f"{p.name}.py").is_file())


def load_metric(name: str, **kwargs: Any):
    """``evaluate.load`` of the course's local metric module ``name`` (no network needed).

    ``name``: ``"classification"`` (accuracy + averaged P/R/F1) or ``"entity_f1"`` (BIO
    entities). ``kwargs`` go to ``evaluate.load`` (e.g. ``config_name``).
    Defined in chapter 7, Fine-tuning.
    """
    import evaluate

    return evaluate.load(str(metric_path(name)), **kwargs)


__all__ = ["classification_scores", "confusion_matrix", "compare_classifiers", "bio_entities", "entity_scores", "load_metric",
           "metric_path", "available_metrics", "METRIC_MODULES", "AVERAGES"]
