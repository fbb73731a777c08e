"""``evaluate`` metric modules of the course, loaded by path with ``course_utils.metrics.load_metric``.

Each folder ``<name>/`` holds ``<name>.py``, an ``evaluate.Metric`` subclass that calls the plain
functions of :mod:`course_utils.metrics` (one implementation). ``evaluate.load(folder)`` needs
no network. Defined in chapter 7, Fine-tuning.
"""
