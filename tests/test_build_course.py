"""tools/build_course.py (``make course``): titles, index, execution and a clear failure."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("build_course", ROOT / "tools" / "build_course.py")
build_course = importlib.util.module_from_spec(spec)
sys.modules.setdefault("build_course", build_course)  # dataclasses look their module up
spec.loader.exec_module(build_course)


def _nb(path: Path, title: str, code: list[str], skipped: str | None = None) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell(f"Intro\n\n# {title}\n\ntext")]
    nb.cells += [nbformat.v4.new_code_cell(c) for c in code]
    if skipped:
        nb.cells.append(nbformat.v4.new_code_cell(skipped, metadata={"tags": ["skip-execution"]}))
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def test_title_is_the_first_markdown_heading():
    nb = {"cells": [{"cell_type": "code", "source": "# not a heading"},
                    {"cell_type": "markdown", "source": ["no heading\n", "## 3. Attention math\n"]}]}
    assert build_course.notebook_title(nb, "x") == "3. Attention math"
    assert build_course.notebook_title({"cells": []}, "fallback") == "fallback"


def test_collect_orders_chapters_then_solutions(tmp_path):
    for name in ("01_b.ipynb", "00_a.ipynb", "solutions/00_a_solutions.ipynb"):
        _nb(tmp_path / name, name, ["1"])
    got = [p.relative_to(tmp_path).as_posix() for p in build_course.collect_notebooks([str(tmp_path)])]
    assert got == ["00_a.ipynb", "01_b.ipynb", "solutions/00_a_solutions.ipynb"]
    with pytest.raises(SystemExit, match="neither a folder nor an existing .ipynb"):
        build_course.collect_notebooks([str(tmp_path / "missing.ipynb")])


def test_builds_html_and_index_and_stops_on_failure(tmp_path, monkeypatch):
    src = tmp_path / "nb"
    _nb(src / "00_ok.ipynb", "0. Fine <&> dandy", ["import os\nprint('profile', os.environ['COURSE_PROFILE'])"],
        skipped="raise RuntimeError('needs a GPU')")
    _nb(src / "solutions" / "00_ok_solutions.ipynb", "0. Solutions", ["print(6 * 7)"])
    out = tmp_path / "build"
    monkeypatch.delenv("COURSE_PROFILE", raising=False)
    assert build_course.main(["--out", str(out), "--profile", "ci", str(src)]) == 0
    executed = nbformat.read(out / "00_ok.ipynb", as_version=4)
    assert "profile ci" in executed.cells[1].outputs[0]["text"]
    assert executed.cells[2].get("outputs", []) == []  # skip-execution honoured
    assert "42" in (out / "solutions" / "00_ok_solutions.html").read_text()
    index = (out / "index.html").read_text()
    assert 'href="00_ok.html">0. Fine &lt;&amp;&gt; dandy</a>' in index
    assert 'href="solutions/00_ok_solutions.html">0. Solutions</a>' in index

    _nb(src / "01_broken.ipynb", "1. Broken", ["x = 1", "1 / 0"])
    with pytest.raises(SystemExit) as err:
        build_course.main(["--out", str(out), "--profile", "ci", str(src / "01_broken.ipynb")])
    message = str(err.value)
    assert "FAILED" in message and "01_broken.ipynb" in message and "cell 2" in message
    assert "ZeroDivisionError" in message
    assert (out / "01_broken.failed.ipynb").exists()


def test_unknown_profile_is_refused(tmp_path):
    with pytest.raises(ValueError, match="Unknown course profile"):
        build_course.main(["--profile", "huge", str(tmp_path)])
