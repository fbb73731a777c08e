"""Entity-level precision, recall and F1 from BIO tag sequences (seqeval-style, exact match).

An entity counts as correct only when its type and its span both match a reference entity;
a right type with a wrong boundary is one false positive and one false negative. Load it offline
with ``course_utils.metrics.load_metric("entity_f1")``. Defined in chapter 7, Fine-tuning.
"""
import datasets
import evaluate

from course_utils.metrics import entity_scores

_DESCRIPTION = """Micro-averaged entity precision / recall / F1 over sentences of BIO tags
(B-X opens an entity, I-X continues one of type X, an I-X after O or another type opens a new
one), with per-type scores."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of list of str): predicted BIO tags, one list per sentence.
    references (list of list of str): true BIO tags, same lengths.
Returns:
    dict with "precision", "recall", "f1", counts "n_pred", "n_true", "n_correct" and
    "per_type": {type: {"precision", "recall", "f1", "support"}}.
Example:
    >>> metric = course_utils.metrics.load_metric("entity_f1")
    >>> metric.compute(predictions=[["B-PER", "I-PER", "O"]], references=[["B-PER", "I-PER", "O"]])["f1"]
    1.0
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class EntityF1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("string")),
                                        "references": datasets.Sequence(datasets.Value("string"))}),
        )

    def _compute(self, predictions, references):
        return entity_scores([list(p) for p in predictions], [list(r) for r in references])
