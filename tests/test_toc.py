"""The table of contents (notebooks/toc.toml) is the one source: notebooks, solutions, headings
and README's chapter table agree with it (tools/toc.py)."""
from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("toc", ROOT / "tools" / "toc.py")
toc = importlib.util.module_from_spec(spec)
sys.modules["toc"] = toc  # dataclasses look their module up there
spec.loader.exec_module(toc)


def test_the_repository_agrees_with_its_toc() -> None:
    assert toc.problems() == []


def test_numbers_follow_the_order() -> None:
    _, chapters = toc.load()
    assert [c.number for c in chapters] == list(range(len(chapters)))
    assert all(c.file.startswith(f"{c.number:02d}_") for c in chapters)


@pytest.fixture()
def copy(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "notebooks", tmp_path / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    (tmp_path / "docs").mkdir()
    shutil.copy(ROOT / "docs" / "ARCHITECTURE.md", tmp_path / "docs" / "ARCHITECTURE.md")
    return tmp_path


def test_every_package_module_belongs_to_a_chapter() -> None:
    """A new module is placed in the one table of contents (and so in ARCHITECTURE's map)."""
    _, chapters = toc.load()
    listed = {m for ch in chapters for m in ch.modules}
    pkg = ROOT / "course_utils"
    modules = {p.stem for p in pkg.glob("*.py") if p.stem != "__init__"}
    modules |= {f"models.{p.stem}" for p in (pkg / "models").glob("*.py") if p.stem not in ("__init__", "io")}
    assert sorted(modules - listed) == [], "add these modules to a chapter in notebooks/toc.toml"
    assert sorted(listed - modules) == [], "notebooks/toc.toml names modules that do not exist"


def test_a_notebook_missing_from_the_toc_is_found(copy: Path) -> None:
    shutil.copy(copy / "notebooks" / "00_setup.ipynb", copy / "notebooks" / "99_extra.ipynb")
    assert any("99_extra.ipynb is not in" in p for p in toc.problems(copy))


def test_a_hand_edited_readme_table_is_found(copy: Path) -> None:
    readme = copy / "README.md"
    readme.write_text(readme.read_text(encoding="utf-8").replace("Tokenization |", "Tokenisation |", 1), encoding="utf-8")
    assert any("README.md's chapter table" in p for p in toc.problems(copy))


def test_a_renumbered_toc_is_refused(copy: Path) -> None:
    f = copy / "notebooks" / "toc.toml"
    f.write_text(f.read_text(encoding="utf-8").replace("number = 2\n", "number = 3\n", 1), encoding="utf-8")
    with pytest.raises(ValueError, match="number them 0, 1, 2"):
        toc.load(f)
