"""Where the course writes: everything goes under the data folder.

The course's own caches (assets, data sets, trained models) live under
:func:`course_utils.assets.data_dir` (``$COURSE_DATA_DIR``, else the repository's ``data/``).
The libraries it uses keep caches of their own, by default in the home folder and the system's
temporary folder (``evaluate`` copies each metric module into ``~/.cache/huggingface``, torch's
compiler writes ``/tmp/torchinductor_<user>``). Importing ``course_utils`` points those at the
data folder too, unless the learner has set them:

| variable | folder |
|---|---|
| ``HF_HOME`` | ``<data dir>/cache/huggingface`` (Hub, ``datasets``, ``evaluate`` caches and modules) |
| ``TORCHINDUCTOR_CACHE_DIR`` | ``<data dir>/cache/torchinductor`` |
| ``TRITON_CACHE_DIR`` | ``<data dir>/cache/triton`` |

A library reads these when it is first imported, so ``import course_utils`` comes first (every
notebook does so). A Hub login saved in the default place is still found (``HF_TOKEN_PATH``).
Temporary folders of the course's own (a ``Trainer``'s ``output_dir``) come from
:func:`scratch_dir`: under ``<data dir>/tmp``, removed when the process ends.

Defined in chapter 0, Setup.
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

from .assets import data_dir

CACHE_VARIABLES: dict[str, str] = {
    "HF_HOME": "huggingface",
    "TORCHINDUCTOR_CACHE_DIR": "torchinductor",
    "TRITON_CACHE_DIR": "triton",
}


def cache_dir() -> Path:
    """``<data dir>/cache``: the libraries' caches (see the table above)."""
    return data_dir() / "cache"


def configure_caches() -> dict[str, str]:
    """Point the libraries' cache variables at :func:`cache_dir` where they are unset; return
    the variables this call set (``{}`` when the learner had set them all)."""
    done: dict[str, str] = {}
    if "HF_HOME" not in os.environ and "HF_TOKEN_PATH" not in os.environ:
        token = Path.home() / ".cache" / "huggingface" / "token"
        if token.is_file():  # keep an existing `huggingface-cli login` working
            done["HF_TOKEN_PATH"] = os.environ["HF_TOKEN_PATH"] = str(token)
    for var, sub in CACHE_VARIABLES.items():
        if not os.environ.get(var):
            done[var] = os.environ[var] = str(cache_dir() / sub)
    return done


def scratch_dir(prefix: str) -> Path:
    """A new empty folder ``<data dir>/tmp/<prefix>XXXX``, deleted when the process exits."""
    if not isinstance(prefix, str) or "/" in prefix or "\\" in prefix or prefix.startswith("."):
        raise ValueError(f"prefix must be a plain name (no path separators, no leading dot), got {prefix!r}")
    root = data_dir() / "tmp"
    root.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


configure_caches()

__all__ = ["CACHE_VARIABLES", "cache_dir", "configure_caches", "scratch_dir"]
