"""course_utils.quiet: the three known CPU-only log lines of torchao/bitsandbytes are dropped,
and only those."""
from __future__ import annotations

import logging
import subprocess
import sys

import pytest

from course_utils import quiet

IMPORT_TORCHAO = "import torchao, torchao.quantization"


def _stderr(code: str) -> str:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300).stderr


@pytest.mark.slow
def test_importing_torchao_is_quiet_after_course_utils() -> None:
    noisy = _stderr(IMPORT_TORCHAO)
    if "Failed to load" not in noisy:
        pytest.skip("this torchao build logs nothing on import here (its CUDA kernels load)")
    assert "Failed to load" not in _stderr(f"import course_utils; {IMPORT_TORCHAO}")


def test_only_the_known_lines_are_dropped() -> None:
    quiet.install_noise_filters()
    quiet.install_noise_filters()   # idempotent: one filter per logger
    logger = logging.getLogger("torchao")
    assert sum(isinstance(f, quiet.DropKnownNoise) for f in logger.filters) == 1
    keep = logging.LogRecord("torchao", logging.WARNING, __file__, 1, "something else went wrong", None, None)
    drop = logging.LogRecord("torchao", logging.WARNING, __file__, 1, "Failed to load %s", ("x.so",), None)
    assert all(f.filter(keep) for f in logger.filters)
    assert not all(f.filter(drop) for f in logger.filters)


def test_peft_reading_a_deprecated_transformers_name_is_not_shown() -> None:
    import warnings

    quiet.install_noise_filters()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("default")
        quiet.install_noise_filters()          # the filters are re-applied inside the block
        warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning)
        warnings.warn("something else is deprecated", FutureWarning)
    assert [str(w.message) for w in seen] == ["something else is deprecated"]
