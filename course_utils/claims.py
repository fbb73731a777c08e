"""Numbers in a notebook's prose, tied to the run that computed them.

A figure typed into a Markdown cell drifts from the code cell that once computed it: a new seed,
recipe or library version changes the run and nothing changes the prose. This module gives a
notebook one mechanism, in two forms.

**1. Render the sentence from the values (preferred for results).** Record each value under a
name as it is computed, then let a code cell print the sentence or table::

    CLAIMS = claims.Claims(P.name)
    CLAIMS.record("minilm_acc", tw_scores["accuracy"])          # returns the value
    CLAIMS.md("MiniLM scored **{minilm_acc:.3f}** on {n_test:,} tweets.", n_test=1000)   # Markdown
    CLAIMS.table({"MiniLM": {"accuracy": 0.781}}, fmt="{:.3f}")  # a Markdown table

**2. A figure that must stay in a Markdown cell** is followed by an HTML comment, invisible when
the cell is rendered, that names the recorded value it states::

    MiniLM scored 0.781<!-- claim minilm_acc profile=laptop tol=0.01 --> on 1,000 tweets.

``CLAIMS.check_prose("07_fine_tuning.ipynb")`` (the notebook's last code cell) reads the notebook's
Markdown, and for every marked figure checks that the name was recorded in this run and, if the
figure belongs to this run's profile (no ``profile=``: every profile), that the value agrees:
within ``tol`` when given, else to the figure's printed precision (0.781 stands for
[0.7805, 0.7815]). ``%`` after the number divides it by 100 (``89 %`` is 0.89). It raises
``AssertionError`` listing every figure that disagrees, so a CI run of the notebook fails when
its prose does. Figures of another profile (a ``laptop`` figure in a ``ci`` run) are checked by
name only; their values are checked when that profile runs (``make course``).

Figures that the notebook does not compute at all (a run recorded in ``docs/RESULTS.md``) are not
claims: the prose cites them as recorded runs with their date.

Defined in chapter 7, Fine-tuning.
"""
from __future__ import annotations

import json
import math
import os
import re
import string
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterable, Mapping

__all__ = ["Claims", "ProseClaim", "parse_prose_claims", "markdown_table", "notebook_markdown", "check_claims"]

NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# a number (ASCII or Unicode minus, thousands commas, decimals), optional %, then the comment
CLAIM_RE = re.compile(
    r"(?P<number>[+\-\u2212]?\d[\d,]*(?:\.\d+)?)(?P<pct>\s?%)?\**\s*"
    r"<!--\s*claim\s+(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<opts>(?:\s+[a-z]+=\S+)*)\s*-->")
LOOSE_RE = re.compile(r"<!--\s*claim\b")
OPTIONS = ("tol", "profile")


@dataclass(frozen=True)
class ProseClaim:
    """One marked figure of a Markdown cell: ``text`` as printed, ``value`` as a float."""

    name: str
    text: str
    value: float
    tol: float
    profile: str | None
    cell: int

    def agrees(self, computed: float) -> bool:
        """``computed`` is within ``tol`` of the printed figure (a small slack for float rounding)."""
        return abs(float(computed) - self.value) <= self.tol * (1 + 1e-9) + 1e-12


def _printed_tolerance(number: str, pct: bool) -> float:
    """Half a unit of the last printed digit: '0.781' -> 0.0005, '2,405' -> 0.5, '89 %' -> 0.005."""
    exponent = Decimal(number.replace(",", "")).as_tuple().exponent
    half = 0.5 * 10.0 ** int(exponent)
    return half / 100 if pct else half


def parse_prose_claims(markdown: str, cell: int = 0) -> list[ProseClaim]:
    """Every ``<number><!-- claim NAME [tol=T] [profile=P] -->`` in ``markdown``.

    Raises ``ValueError`` for a ``<!-- claim`` comment that does not follow a number or has an
    unknown option, so a typo cannot hide a figure from the check.
    """
    if not isinstance(markdown, str):
        raise TypeError(f"markdown must be a string, got {type(markdown).__name__}")
    found: list[ProseClaim] = []
    spans = []
    for m in CLAIM_RE.finditer(markdown):
        spans.append(m.start("name"))
        opts = dict(kv.split("=", 1) for kv in m.group("opts").split())
        unknown = set(opts) - set(OPTIONS)
        if unknown:
            raise ValueError(f"cell {cell}: claim {m.group('name')!r} has unknown option(s) {sorted(unknown)}; "
                             f"accepted: {', '.join(OPTIONS)}")
        number, pct = m.group("number").replace("\u2212", "-"), bool(m.group("pct"))
        value = float(number.replace(",", "")) / (100 if pct else 1)
        try:
            tol = float(opts["tol"]) if "tol" in opts else _printed_tolerance(number, pct)
        except ValueError:
            raise ValueError(f"cell {cell}: claim {m.group('name')!r} has tol={opts['tol']!r}; expected a number") from None
        if tol < 0 or not math.isfinite(tol):
            raise ValueError(f"cell {cell}: claim {m.group('name')!r} needs a finite tol >= 0, got {tol}")
        found.append(ProseClaim(m.group("name"), m.group(0).split("<!--")[0].strip().rstrip("*").rstrip(), value, tol,
                                opts.get("profile"), cell))
    loose = [m.start() for m in LOOSE_RE.finditer(markdown)]
    if len(loose) != len(found):
        bad = markdown[loose[0]:loose[0] + 60] if loose else ""
        raise ValueError(f"cell {cell}: a '<!-- claim ...-->' comment must follow a number directly and read "
                         f"'<!-- claim NAME tol=T profile=P -->' (tol, profile optional); near: {bad!r}")
    return found


def notebook_markdown(path: str | Path) -> list[tuple[int, str]]:
    """(cell index, source) of every Markdown cell of the notebook at ``path``."""
    nb = json.loads(Path(path).read_text(encoding="utf-8"))
    out = []
    for i, cell in enumerate(nb["cells"]):
        if cell.get("cell_type") == "markdown":
            src = cell["source"]
            out.append((i, "".join(src) if isinstance(src, list) else src))
    return out


def check_claims(prose: Iterable[ProseClaim], values: Mapping[str, float], profile: str) -> tuple[list[str], int, int]:
    """Compare marked figures with recorded ``values`` for a run of ``profile``.

    Returns (problems, n_checked_by_value, n_checked_by_name_only). A name that was never
    recorded is a problem in every profile; a value outside the tolerance only in the figure's
    own profile.
    """
    problems, by_value, by_name = [], 0, 0
    for c in prose:
        if c.name not in values:
            problems.append(f"cell {c.cell}: prose names {c.name!r} ({c.text}), which this run never recorded")
            continue
        if c.profile is not None and c.profile != profile:
            by_name += 1
            continue
        by_value += 1
        if not c.agrees(values[c.name]):
            problems.append(f"cell {c.cell}: prose says {c.text} for {c.name!r}, the run computed "
                            f"{float(values[c.name]):.6g} (tolerance {c.tol:g})")
    return problems, by_value, by_name


def markdown_table(rows: Mapping[str, Mapping[str, Any]], fmt: str | Mapping[str, str] = "{:.3f}",
                   index: str = "") -> str:
    """A Markdown table: one row per key of ``rows``, one column per key of the inner mappings.

    ``fmt`` formats numbers (one format, or one per column); strings are printed as they are,
    missing cells are left empty. Works on ``DataFrame.to_dict("index")``.
    """
    if not isinstance(rows, Mapping) or not rows:
        raise ValueError("rows must be a non-empty mapping of row name -> {column: value}")
    columns: list[str] = []
    for r in rows.values():
        if not isinstance(r, Mapping):
            raise TypeError(f"each row must be a mapping of column -> value, got {type(r).__name__}")
        columns += [c for c in r if c not in columns]

    def cell(col: str, v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return ""
        if isinstance(v, str):
            return v
        f = fmt.get(col, "{}") if isinstance(fmt, Mapping) else fmt
        return f.format(v)

    lines = ["| " + " | ".join([index] + [str(c) for c in columns]) + " |",
             "|" + "---|" * (len(columns) + 1)]
    for name, r in rows.items():
        lines.append("| " + " | ".join([str(name)] + [cell(c, r.get(c)) for c in columns]) + " |")
    return "\n".join(lines)


class Claims:
    """The values a notebook computed, by name, and the prose rendered from or checked against them.

    ``profile`` is the run's profile name (``P.name``): a marked figure of another profile is
    checked by name only.
    """

    def __init__(self, profile: str) -> None:
        if not isinstance(profile, str) or not profile:
            raise TypeError(f"profile must be a profile name such as 'ci' or 'laptop', got {profile!r}")
        self.profile = profile
        self.values: dict[str, float] = {}

    def record(self, name: str, value: Any) -> Any:
        """Record ``value`` (a real number) under ``name`` and return it unchanged."""
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise ValueError(f"claim name must be an identifier (letters, digits, _), got {name!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"claim {name!r} must be a real number, got {type(value).__name__}") from None
        self.values[name] = number
        return value

    def update(self, values: Mapping[str, Any]) -> None:
        """Record several values at once."""
        for k, v in values.items():
            self.record(k, v)

    def format(self, template: str, **extra: Any) -> str:
        """``template`` with ``{name:fmt}`` fields filled from the recorded values and ``extra``."""
        fields = {f for _, f, _, _ in string.Formatter().parse(template) if f}
        missing = sorted(f for f in fields if f not in self.values and f not in extra)
        if missing:
            raise KeyError(f"template names {missing}, which were not recorded; recorded: {sorted(self.values)}")
        return template.format_map({**self.values, **extra})

    def md(self, template: str, **extra: Any):
        """The filled ``template`` as ``IPython.display.Markdown`` (a cell's last expression renders it)."""
        from IPython.display import Markdown
        return Markdown(self.format(template, **extra))

    def table(self, rows: Mapping[str, Mapping[str, Any]], fmt: str | Mapping[str, str] = "{:.3f}", index: str = "",
              caption: str = ""):
        """:func:`markdown_table` of ``rows`` (with an optional caption above) as Markdown."""
        from IPython.display import Markdown
        text = markdown_table(rows, fmt, index)
        return Markdown(f"{caption}\n\n{text}" if caption else text)

    def check_prose(self, notebook: str | Path) -> list[ProseClaim] | None:
        """Check the marked figures of ``notebook``'s Markdown against this run; print a one-line account.

        ``notebook`` is a path, or a file name looked up in the working directory and in the
        course's ``notebooks/`` (and ``notebooks/solutions/``). Where the file is not on disk
        (Colab opens a notebook without its repository) it says so and returns None, except under
        ``CI=true``, where a missing file is an error.
        """
        path = _find_notebook(notebook)
        if path is None:
            if os.environ.get("CI", "").lower() == "true":
                raise FileNotFoundError(f"notebook {notebook!r} not found (looked in the working directory and notebooks/)")
            print(f"claims: {notebook} is not on disk here; its prose was not checked")
            return None
        prose = [c for i, src in notebook_markdown(path) for c in parse_prose_claims(src, i)]
        problems, by_value, by_name = check_claims(prose, self.values, self.profile)
        if problems:
            raise AssertionError("the prose disagrees with this run:\n  " + "\n  ".join(problems))
        print(f"claims: {len(self.values)} values recorded; {by_value} figures in the prose checked against this "
              f"{self.profile} run, {by_name} of another profile checked by name (their values: in that profile's run)")
        return prose


def _find_notebook(notebook: str | Path) -> Path | None:
    p = Path(notebook)
    if p.is_file():
        return p
    root = Path(__file__).resolve().parent.parent / "notebooks"
    for candidate in (Path.cwd() / p.name, root / p.name, root / "solutions" / p.name):
        if candidate.is_file():
            return candidate
    return None
