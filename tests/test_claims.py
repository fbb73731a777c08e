"""course_utils.claims: prose figures parsed, checked against a run, and rendered from values."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from course_utils import claims
from course_utils.claims import Claims, check_claims, markdown_table, parse_prose_claims

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def test_parse_number_forms_and_printed_tolerance() -> None:
    md = ("MiniLM scored **0.781**<!-- claim acc --> and TF-IDF −0.016<!-- claim margin profile=laptop -->; "
          "2,405<!-- claim n_tweets --> tweets, 89 %<!-- claim share tol=0.02 -->.")
    got = {c.name: c for c in parse_prose_claims(md, cell=3)}
    assert got["acc"].value == 0.781 and got["acc"].tol == pytest.approx(0.0005) and got["acc"].profile is None
    assert got["margin"].value == -0.016 and got["margin"].profile == "laptop"
    assert got["n_tweets"].value == 2405 and got["n_tweets"].tol == 0.5
    assert got["share"].value == pytest.approx(0.89) and got["share"].tol == 0.02
    assert all(c.cell == 3 for c in got.values())


def test_printed_precision_is_the_default_tolerance() -> None:
    (c,) = parse_prose_claims("0.781<!-- claim acc -->")
    assert c.agrees(0.7814) and c.agrees(0.7806) and not c.agrees(0.7816) and not c.agrees(0.780)
    (p,) = parse_prose_claims("89 %<!-- claim share -->")
    assert p.agrees(0.8949) and not p.agrees(0.8951)


@pytest.mark.parametrize("bad", ["<!-- claim acc -->", "score 0.7 <!-- claim acc colour=red -->",
                                 "0.7<!-- claim -->", "0.7<!-- claim acc tol=x -->"])
def test_malformed_markup_is_an_error(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_prose_claims(bad)


def test_check_claims_by_value_and_by_name() -> None:
    prose = parse_prose_claims("a 0.78<!-- claim a --> b 0.50<!-- claim b profile=laptop --> c 1<!-- claim c -->")
    problems, by_value, by_name = check_claims(prose, {"a": 0.781, "b": 0.9}, profile="ci")
    assert (by_value, by_name) == (1, 1)          # b is a laptop figure: name only in a ci run
    assert len(problems) == 1 and "'c'" in problems[0]                    # never recorded
    problems, by_value, _ = check_claims(prose, {"a": 0.79, "b": 0.5, "c": 1}, profile="laptop")
    assert by_value == 3 and len(problems) == 1 and "'a'" in problems[0]  # 0.79 is not "0.78"


def test_record_format_and_bad_input() -> None:
    C = Claims("ci")
    assert C.record("acc", 0.78125) == 0.78125
    assert C.format("acc {acc:.3f} on {n:,}", n=1000) == "acc 0.781 on 1,000"
    with pytest.raises(KeyError, match="nope"):
        C.format("{nope:.2f}")
    with pytest.raises(ValueError, match="identifier"):
        C.record("a.b", 1.0)
    with pytest.raises(TypeError, match="real number"):
        C.record("x", "high")
    with pytest.raises(TypeError, match="profile"):
        Claims("")
    assert "0.781" in C.md("{acc:.3f}").data


def test_markdown_table() -> None:
    text = markdown_table({"BERT": {"acc": 0.8301, "note": "pretrained"}, "TF-IDF": {"acc": 0.845}}, index="model")
    assert text.splitlines() == ["| model | acc | note |", "|---|---|---|",
                                 "| BERT | 0.830 | pretrained |", "| TF-IDF | 0.845 |  |"]
    with pytest.raises(ValueError):
        markdown_table({})


def _notebook(tmp_path: Path, markdown: str) -> Path:
    nb = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": markdown},
                    {"cell_type": "code", "metadata": {}, "source": "x = 0.5  # 0.9<!-- claim not_prose -->",
                     "outputs": [], "execution_count": None}], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(nb), encoding="utf-8")
    return path


def test_check_prose_passes_and_fails(tmp_path: Path, capsys) -> None:
    path = _notebook(tmp_path, "accuracy 0.78<!-- claim acc --> (laptop 0.9<!-- claim acc profile=laptop -->)")
    C = Claims("ci")
    C.record("acc", 0.781)
    assert len(C.check_prose(path)) == 2                      # code cells are not read
    assert "1 figures in the prose checked" in capsys.readouterr().out
    C.record("acc", 0.7)
    with pytest.raises(AssertionError, match="prose says 0.78"):
        C.check_prose(path)


def test_check_prose_missing_file(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CI", raising=False)
    assert Claims("ci").check_prose("no_such_notebook.ipynb") is None
    monkeypatch.setenv("CI", "true")
    with pytest.raises(FileNotFoundError):
        Claims("ci").check_prose("no_such_notebook.ipynb")


def test_every_notebooks_markup_parses() -> None:
    """A typo in any notebook's claim markup is caught here, without running the notebook."""
    for path in sorted(NOTEBOOKS.glob("**/*.ipynb")):
        for i, src in claims.notebook_markdown(path):
            parse_prose_claims(src, i)
