"""Every notebook opens the same way: the Colab cell, the ``parameters`` cell, ``start_notebook``.

The Colab cell is executed twice per notebook: with a fake ``google.colab`` module (it must pip
install the course package from the repository exactly once and never touch torch, so Colab
keeps its own CUDA/XLA build) and without one (it must do nothing). Notebooks are committed
without outputs.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIRS = (ROOT / "notebooks", ROOT / "notebooks" / "solutions")
NOTEBOOKS = sorted(p for d in NOTEBOOK_DIRS for p in d.glob("*.ipynb"))
REPO = "https://github.com/llm-course/llm-from-theory-to-practice"

CANONICAL_COLAB_CELL = f'''# Colab only: install the course package (keeps Colab's own torch). Does nothing elsewhere.
import sys
if "google.colab" in sys.modules:
    import subprocess
    REPO = "{REPO}"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"llm-course-utils @ git+{{REPO}}"], check=True)'''

PARAMETERS_LINE = 'COURSE_PROFILE = None  # "ci" | "laptop" | "gpu"; None reads $COURSE_PROFILE (default laptop)'


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return "".join(src) if isinstance(src, list) else src


def _load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _code_cells(nb: dict) -> list[dict]:
    return [c for c in nb["cells"] if c["cell_type"] == "code"]


def _colab_cell(nb: dict) -> str:
    cells = [_source(c) for c in _code_cells(nb) if "google.colab" in _source(c)]
    assert len(cells) == 1, f"expected exactly one Colab cell, found {len(cells)}"
    return cells[0]


ids = [str(p.relative_to(ROOT / "notebooks")) for p in NOTEBOOKS]
each_notebook = pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)


def test_there_are_notebooks():
    assert NOTEBOOKS, "no notebooks found under notebooks/"


@each_notebook
def test_file_name_and_title(path):
    assert re.fullmatch(r"\d\d_[a-z0-9_]+\.ipynb", path.name), f"{path.name}: expected NN_topic.ipynb"
    nb = _load(path)
    first = nb["cells"][0]
    assert first["cell_type"] == "markdown" and _source(first).lstrip().startswith("# "), \
        f"{path.name}: the first cell must be a markdown title '# ...'"


@each_notebook
def test_colab_cell_is_canonical(path):
    assert _colab_cell(_load(path)).strip() == CANONICAL_COLAB_CELL


@each_notebook
def test_header_cells_come_first_in_order(path):
    """Colab cell, then the parameters cell, then start_notebook: the first three code cells."""
    code = _code_cells(_load(path))
    assert len(code) >= 3, f"{path.name}: fewer than three code cells"
    assert "google.colab" in _source(code[0]), f"{path.name}: the Colab cell must be the first code cell"
    assert "parameters" in code[1].get("metadata", {}).get("tags", []), \
        f"{path.name}: the second code cell must be the one tagged 'parameters'"
    third = _source(code[2])
    assert "import course_utils" in third and re.search(r"^P = course_utils\.start_notebook\(COURSE_PROFILE\)", third, re.M), \
        f"{path.name}: the third code cell must import course_utils and call P = course_utils.start_notebook(COURSE_PROFILE)"


@each_notebook
def test_exactly_one_parameters_cell(path):
    nb = _load(path)
    tagged = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: expected one cell tagged 'parameters', found {len(tagged)}"
    assert tagged[0]["cell_type"] == "code"
    assert _source(tagged[0]).strip() == PARAMETERS_LINE


@each_notebook
def test_committed_without_outputs(path):
    for i, cell in enumerate(_load(path)["cells"]):
        if cell["cell_type"] == "code":
            assert cell.get("outputs") == [] and cell.get("execution_count") is None, \
                f"{path.name}: cell {i} has outputs; clear them before committing"


@each_notebook
def test_header_cells_are_never_skipped(path):
    """``skip-execution`` is for cells that need a GPU/TPU or the Hub; the header is never skipped."""
    code = _code_cells(_load(path))
    for cell in code[:3]:
        assert "skip-execution" not in cell.get("metadata", {}).get("tags", [])


@each_notebook
def test_colab_cell_installs_the_package_but_not_torch_on_colab(path, monkeypatch):
    calls: list[tuple[list[str], dict]] = []
    monkeypatch.setattr(subprocess, "run", lambda args, **kw: calls.append((list(args), kw)))
    monkeypatch.setitem(sys.modules, "google", types.ModuleType("google"))
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    exec(compile(_colab_cell(_load(path)), f"{path.name}:colab", "exec"), {"__name__": "__main__"})
    assert len(calls) == 1, f"expected one pip call on Colab, got {calls}"
    args, kwargs = calls[0]
    assert args[:4] == [sys.executable, "-m", "pip", "install"]
    assert f"llm-course-utils @ git+{REPO}" in args
    assert not any(re.match(r"torch\b", a) for a in args), f"the Colab cell must not (re)install torch: {args}"
    assert kwargs.get("check") is True


@each_notebook
def test_colab_cell_does_nothing_elsewhere(path, monkeypatch):
    calls: list = []
    monkeypatch.setattr(subprocess, "run", lambda *a, **kw: calls.append(a))
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    exec(compile(_colab_cell(_load(path)), f"{path.name}:colab", "exec"), {"__name__": "__main__"})
    assert calls == []
