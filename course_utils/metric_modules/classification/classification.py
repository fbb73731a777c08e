"""Accuracy with macro (or micro / weighted) precision, recall and F1 for label ids.

Load it offline with ``course_utils.metrics.load_metric("classification")`` or
``evaluate.load("<path to this folder>")``. Defined in chapter 7, Fine-tuning.
"""
import datasets
import evaluate

from course_utils.metrics import classification_scores

_DESCRIPTION = """Accuracy, and precision, recall and F1 averaged over classes ("macro": every
class weighs the same; "weighted": by support; "micro": pooled). Matches scikit-learn's
precision_recall_fscore_support with zero_division=0."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted label ids.
    references (list of int): true label ids.
    average (str): "macro" (default), "micro" or "weighted".
    labels (list of int, optional): the classes to average over (default: every id seen).
Returns:
    dict with "accuracy", "precision", "recall", "f1" (floats in [0, 1]).
Example:
    >>> metric = course_utils.metrics.load_metric("classification")
    >>> metric.compute(predictions=[0, 1, 1], references=[0, 1, 0])["accuracy"]
    0.6666666666666666
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Classification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"),
                                        "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, average="macro", labels=None):
        return classification_scores(list(predictions), list(references), average=average, labels=labels)
