"""Every notebook is stored as JupyterLab 4.6 would save it right after opening it, so that
opening a notebook does not mark it modified (tools/normalize_notebooks.py explains what
JupyterLab rewrites and why the Python version matters)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("normalize_notebooks", ROOT / "tools" / "normalize_notebooks.py")
normalize_notebooks = importlib.util.module_from_spec(spec)
spec.loader.exec_module(normalize_notebooks)

NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "notebooks" / "solutions").glob("*.ipynb"))
FIX = "run: .venv/bin/python tools/normalize_notebooks.py notebooks/"


def _recorded_version(path: Path) -> str:
    return json.loads(path.read_text(encoding="utf-8"))["metadata"].get("language_info", {}).get("version", "")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_notebook_is_normalised(path: Path) -> None:
    version = _recorded_version(path)
    assert version.startswith(normalize_notebooks.LOCK_PYTHON + "."), \
        f"{path.name}: language_info.version is {version!r}, not a Python {normalize_notebooks.LOCK_PYTHON} release; {FIX}"
    assert path.read_text(encoding="utf-8") == normalize_notebooks.normalized_text(path, version), \
        f"{path.name} is not normalised (JupyterLab would mark it modified on opening, or outputs were committed); {FIX}"


def test_notebooks_agree_on_the_python_version() -> None:
    versions = {p.name: _recorded_version(p) for p in NOTEBOOKS}
    assert len(set(versions.values())) == 1, f"notebooks record different Python versions: {versions}; {FIX}"


def _raw_notebook(path: Path) -> None:
    """A notebook as an editor other than JupyterLab 4 might leave it: short language_info, a cell
    without an id (nbformat 4.4), an output and an execution count."""
    raw = {"nbformat": 4, "nbformat_minor": 4,
           "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"},
                        "language_info": {"name": "python"}},
           "cells": [{"cell_type": "markdown", "metadata": {}, "source": "# Title"},
                     {"cell_type": "code", "metadata": {"tags": ["parameters"], "execution": {"x": 1}},
                      "execution_count": 3, "source": "COURSE_PROFILE = None",
                      "outputs": [{"output_type": "stream", "name": "stdout", "text": "hi\n"}]}]}
    path.write_text(json.dumps(raw), encoding="utf-8")


def test_tool_finds_and_fixes_an_unnormalised_notebook(tmp_path: Path, capsys) -> None:
    nb_path = tmp_path / "nbs" / "raw.ipynb"
    nb_path.parent.mkdir()
    _raw_notebook(nb_path)
    assert normalize_notebooks.main(["--check", "--python-version", "3.11.7", str(tmp_path / "nbs")]) == 1
    assert "would change" in capsys.readouterr().out
    assert normalize_notebooks.main(["--python-version", "3.11.7", str(tmp_path / "nbs")]) == 0
    nb = nbformat.read(nb_path, as_version=4)
    nbformat.validate(nb)
    assert (nb.nbformat, nb.nbformat_minor) == (4, 5)
    assert nb.metadata.language_info == normalize_notebooks.language_info("3.11.7")
    assert nb.metadata.kernelspec == normalize_notebooks.KERNELSPEC
    ids = [c.id for c in nb.cells]
    assert len(set(ids)) == 2 and all(ids)
    code = nb.cells[1]
    assert code.outputs == [] and code.execution_count is None
    assert code.metadata == {"tags": ["parameters"]}, "tags stay, nbclient's timing goes"
    text = nb_path.read_text(encoding="utf-8")
    assert text.endswith("}\n") and '\n "cells": [\n' in text, "JupyterLab's layout: indent 1, final newline"
    # idempotent: a second run changes nothing, and --check now passes
    assert normalize_notebooks.main(["--check", "--python-version", "3.11.7", str(nb_path)]) == 0
    assert nb_path.read_text(encoding="utf-8") == text
    # another Python version is a change (JupyterLab would rewrite it too)
    assert normalize_notebooks.main(["--check", "--python-version", "3.11.9", str(nb_path)]) == 1


def test_no_cell_relies_on_skip_execution() -> None:
    """JupyterLab's Run All ignores ``skip-execution`` (nbmake honours it), so a tagged cell that
    needs a GPU, a TPU or the Hub would stop a learner's Run All: such cells check what they need
    and say in one line what they would do instead."""
    tagged = []
    for path in sorted((ROOT / "notebooks").rglob("*.ipynb")):
        if ".ipynb_checkpoints" in path.parts:
            continue
        nb = nbformat.read(path, as_version=4)
        tagged += [f"{path.relative_to(ROOT)} cell {i}" for i, c in enumerate(nb.cells)
                   if "skip-execution" in c.get("metadata", {}).get("tags", [])]
    assert tagged == []
