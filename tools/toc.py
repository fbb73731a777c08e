"""The course's table of contents, read from its one source, ``notebooks/toc.toml``.

    python tools/toc.py            # print the chapters in order
    python tools/toc.py --write    # regenerate README.md's chapter table and ARCHITECTURE.md's module map
    python tools/toc.py --check    # exit 1 (and say what differs) when README or notebooks disagree

README.md holds the generated table between ``<!-- toc:start -->`` and ``<!-- toc:end -->``,
docs/ARCHITECTURE.md the module map between ``<!-- modules:start -->`` and ``<!-- modules:end -->``;
edit ``notebooks/toc.toml``, never the tables. ``tests/test_toc.py`` runs the same checks.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOC_FILE = ROOT / "notebooks" / "toc.toml"
README = ROOT / "README.md"
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"
START, END = "<!-- toc:start -->", "<!-- toc:end -->"
MAP_START, MAP_END = "<!-- modules:start -->", "<!-- modules:end -->"
PART_NAMES = {"I": "Part I — foundations, built from scratch", "II": "Part II — the modern stack"}


@dataclass(frozen=True)
class Chapter:
    number: int
    part: str
    file: str
    title: str
    teaches: str
    modules: tuple[str, ...]

    @property
    def solutions(self) -> str:
        return self.file.replace(".ipynb", "_solutions.ipynb")


def load(path: Path = TOC_FILE) -> tuple[str, list[Chapter]]:
    """``(repo, chapters in order)``; raises ValueError when numbers are not 0, 1, 2, ... in order
    or a file name does not start with its two-digit number."""
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    chapters = [Chapter(c["number"], c["part"], c["file"], c["title"], c["teaches"], tuple(c.get("modules", ())))
                for c in data["chapter"]]
    for i, ch in enumerate(chapters):
        if ch.number != i:
            raise ValueError(f"{path.name}: chapter {i} in order has number {ch.number}; number them 0, 1, 2, ...")
        if not ch.file.startswith(f"{ch.number:02d}_"):
            raise ValueError(f"{path.name}: chapter {ch.number}'s file {ch.file!r} must start with {ch.number:02d}_")
        if ch.part not in PART_NAMES:
            raise ValueError(f"{path.name}: chapter {ch.number}'s part {ch.part!r} is not one of {sorted(PART_NAMES)}")
    return data["repo"], chapters


def colab_url(repo: str, notebook: str) -> str:
    return f"https://colab.research.google.com/github/{repo}/blob/main/notebooks/{notebook}"


def readme_table(repo: str, chapters: list[Chapter]) -> str:
    """The Markdown chapter table, one sub-heading row per part."""
    lines = ["| # | notebook | what it teaches | Colab |", "|---|---|---|---|"]
    part = None
    for ch in chapters:
        if ch.part != part:
            part = ch.part
            lines.append(f"| | **{PART_NAMES[part]}** | | |")
        lines.append(f"| {ch.number} | `{ch.file}` — {ch.title} | {ch.teaches} | [open]({colab_url(repo, ch.file)}) |")
    return "\n".join(lines)


def module_map(chapters: list[Chapter]) -> str:
    """docs/ARCHITECTURE.md's module-to-chapter table."""
    lines = ["| modules | chapter |", "|---|---|"]
    lines += [f"| {', '.join(ch.modules)} | {ch.number} {ch.title} |" for ch in chapters if ch.modules]
    return "\n".join(lines)


def render_between(text: str, table: str, start: str = START, end: str = END, name: str = "README.md") -> str:
    """``text`` with what lies between the ``start`` and ``end`` markers replaced by ``table``."""
    if start not in text or end not in text:
        raise ValueError(f"{name} lacks the {start} ... {end} markers around its generated table")
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    return f"{head}{start}\n{table}\n{end}{tail}"


def render_readme(text: str, table: str) -> str:
    return render_between(text, table)


def notebook_heading(path: Path) -> str:
    """The first markdown heading of a notebook, without the leading #'s."""
    nb = json.loads(path.read_text(encoding="utf-8"))
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            for line in "".join(cell["source"]).splitlines():
                if line.startswith("#"):
                    return line.lstrip("#").strip()
    return ""


def problems(root: Path = ROOT) -> list[str]:
    """Every way the notebooks and README disagree with the TOC (empty when all agree)."""
    repo, chapters = load(root / "notebooks" / "toc.toml")
    out: list[str] = []
    listed = {ch.file for ch in chapters}
    on_disk = {p.name for p in (root / "notebooks").glob("*.ipynb")}
    out += [f"notebooks/{f} is not in notebooks/toc.toml" for f in sorted(on_disk - listed)]
    out += [f"notebooks/toc.toml lists {f}, which does not exist" for f in sorted(listed - on_disk)]
    sols = {p.name for p in (root / "notebooks" / "solutions").glob("*.ipynb")}
    for ch in chapters:
        if ch.file not in on_disk:
            continue
        if ch.solutions not in sols:
            out.append(f"chapter {ch.number} has no notebooks/solutions/{ch.solutions}")
        heading = notebook_heading(root / "notebooks" / ch.file)
        if not re.match(rf"(Chapter {ch.number}\b|{ch.number}\.)", heading) or ch.title.lower() not in heading.lower():
            out.append(f"notebooks/{ch.file}: heading {heading!r} should name chapter {ch.number}, {ch.title!r}")
    readme = (root / "README.md").read_text(encoding="utf-8")
    try:
        if render_readme(readme, readme_table(repo, chapters)) != readme:
            out.append("README.md's chapter table is not the one notebooks/toc.toml gives: run python tools/toc.py --write")
    except ValueError as err:
        out.append(str(err))
    arch = (root / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
    try:
        if render_between(arch, module_map(chapters), MAP_START, MAP_END, "docs/ARCHITECTURE.md") != arch:
            out.append("docs/ARCHITECTURE.md's module map is not the one notebooks/toc.toml gives: "
                       "run python tools/toc.py --write")
    except ValueError as err:
        out.append(str(err))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help="regenerate README.md's chapter table")
    ap.add_argument("--check", action="store_true", help="exit 1 when README or notebooks disagree with the TOC")
    args = ap.parse_args(argv)
    repo, chapters = load()
    if args.write:
        README.write_text(render_readme(README.read_text(encoding="utf-8"), readme_table(repo, chapters)),
                          encoding="utf-8")
        ARCHITECTURE.write_text(render_between(ARCHITECTURE.read_text(encoding="utf-8"), module_map(chapters),
                                               MAP_START, MAP_END, "docs/ARCHITECTURE.md"), encoding="utf-8")
    if args.check:
        found = problems()
        for p in found:
            print(f"toc: {p}", file=sys.stderr)
        return 1 if found else 0
    if not args.write:
        for ch in chapters:
            print(f"{ch.number:>2}  {ch.title:<24} notebooks/{ch.file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
