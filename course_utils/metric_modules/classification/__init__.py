"""Local evaluate metric module (see course_utils.metrics.load_metric)."""
