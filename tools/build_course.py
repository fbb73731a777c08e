"""Execute every notebook headless into ``build/`` and write an HTML index (``make course``).

    python tools/build_course.py [--out build] [--profile laptop] [notebooks/ | a.ipynb ...]

Each notebook is run top to bottom in a fresh kernel (cells tagged ``skip-execution`` are
skipped, as nbmake does), in the profile given (default: ``$COURSE_PROFILE``, else ``laptop``).
The executed copy goes to ``build/<name>.ipynb`` with an HTML rendering beside it, solutions
to ``build/solutions/``. ``build/index.html`` links every chapter under its title, read from
the notebook's first markdown heading, so the notebooks stay the one source of the contents.
The build stops at the first failing notebook, says which cell failed, and keeps the partly
executed copy for inspection.
"""
from __future__ import annotations

import argparse
import datetime as dt
import html
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Built:
    """One executed notebook: where it came from, its title, outputs and run time."""

    source: Path
    title: str
    html: Path
    ipynb: Path
    seconds: float


def notebook_title(nb: dict, fallback: str) -> str:
    """Text of the first markdown heading of ``nb`` (``# 3. Attention math`` -> ``3. Attention math``)."""
    for cell in nb.get("cells", []):
        if cell.get("cell_type") != "markdown":
            continue
        src = cell.get("source", "")
        src = "".join(src) if isinstance(src, list) else src
        for line in src.splitlines():
            if line.lstrip().startswith("#"):
                title = line.lstrip().lstrip("#").strip()
                if title:
                    return title
    return fallback


def collect_notebooks(args: list[str]) -> list[Path]:
    """The notebooks named in ``args`` (folders expand to ``*.ipynb`` then ``solutions/*.ipynb``)."""
    found: list[Path] = []
    for arg in args:
        p = Path(arg)
        if p.is_dir():
            found += sorted(q for q in p.glob("*.ipynb"))
            found += sorted(q for q in (p / "solutions").glob("*.ipynb"))
        elif p.suffix == ".ipynb" and p.is_file():
            found.append(p)
        else:
            raise SystemExit(f"build_course: {arg!r} is neither a folder nor an existing .ipynb file")
    unique: list[Path] = []
    for p in found:
        if ".ipynb_checkpoints" not in p.parts and p.resolve() not in {u.resolve() for u in unique}:
            unique.append(p)
    return unique


def _relative_out(path: Path, out: Path) -> Path:
    return out / "solutions" / path.name if path.parent.name == "solutions" else out / path.name


def execute(path: Path, out: Path, timeout: int | None, kernel: str) -> Built:
    """Run ``path`` in a fresh kernel; write the executed ``.ipynb`` and ``.html`` under ``out``."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError, CellTimeoutError
    from nbconvert import HTMLExporter

    nb = nbformat.read(path, as_version=4)
    title = notebook_title(nb, path.stem)
    target = _relative_out(path, out)
    target.parent.mkdir(parents=True, exist_ok=True)
    client = NotebookClient(nb, timeout=timeout, kernel_name=kernel, skip_cells_with_tag="skip-execution",
                            resources={"metadata": {"path": str(path.parent.resolve())}})
    start = time.perf_counter()
    try:
        client.execute()
    except (CellExecutionError, CellTimeoutError) as err:
        failed = target.with_suffix(".failed.ipynb")
        nbformat.write(nb, failed)
        index = next((i for i, c in enumerate(nb.cells) if c.get("cell_type") == "code"
                      and any(o.get("output_type") == "error" for o in c.get("outputs", []))), None)
        where = f"cell {index}" if index is not None else "a cell"
        raise SystemExit(
            f"\nmake course: FAILED {path} ({title}) at {where} after {time.perf_counter() - start:.0f} s.\n"
            f"The partly executed notebook is in {failed}.\n{str(err).strip()[-3000:]}") from None
    seconds = time.perf_counter() - start
    nbformat.write(nb, target)
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nb, resources={"metadata": {"name": title}})
    html_path = target.with_suffix(".html")
    html_path.write_text(body, encoding="utf-8")
    return Built(path, title, html_path, target, seconds)


def render_index(built: list[Built], out: Path, profile: str) -> str:
    """The HTML of ``build/index.html``: chapters, then solutions, each linked under its title."""
    def rows(items: list[Built]) -> str:
        return "\n".join(
            f'    <li><a href="{html.escape(b.html.relative_to(out).as_posix())}">{html.escape(b.title)}</a>'
            f' <small>({html.escape(b.source.name)}, ran in {b.seconds:.0f} s)</small></li>' for b in items)

    chapters = [b for b in built if b.source.parent.name != "solutions"]
    solutions = [b for b in built if b.source.parent.name == "solutions"]
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!doctype html>", '<html lang="en"><head><meta charset="utf-8">',
        "<title>Large Language Models: from Theory to Practice</title>",
        "<style>body{font-family:system-ui,sans-serif;max-width:52rem;margin:2rem auto;line-height:1.5}"
        "small{color:#666}</style></head><body>",
        "<h1>Large Language Models: from Theory to Practice</h1>",
        f"<p>Executed notebooks, profile <code>{html.escape(profile)}</code>, built {stamp} "
        f"with Python {platform.python_version()}.</p>",
        "<h2>Chapters</h2>", "<ol start=\"0\">" if chapters else "<p>No chapters built.</p>",
    ]
    if chapters:
        parts += [rows(chapters), "</ol>"]
    if solutions:
        parts += ["<h2>Exercise solutions</h2>", "<ul>", rows(solutions), "</ul>"]
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("notebooks", nargs="*", default=[str(ROOT / "notebooks")])
    parser.add_argument("--out", default=str(ROOT / "build"), help="output folder (default build/)")
    parser.add_argument("--profile", default=None, help="ci | laptop | gpu (default $COURSE_PROFILE, else laptop)")
    parser.add_argument("--timeout", type=int, default=None, help="seconds per cell (default: no limit)")
    parser.add_argument("--kernel", default="python3")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from course_utils.profiles import current_profile_name, get_profile

    profile = get_profile(current_profile_name(args.profile)).name  # validates the name
    os.environ["COURSE_PROFILE"] = profile  # the kernels inherit it
    out = Path(args.out)
    paths = collect_notebooks(args.notebooks or [str(ROOT / "notebooks")])
    if not paths:
        raise SystemExit(f"build_course: no notebooks found in {' '.join(args.notebooks)}")
    out.mkdir(parents=True, exist_ok=True)
    built: list[Built] = []
    total = time.perf_counter()
    for i, path in enumerate(paths, 1):
        print(f"[{i}/{len(paths)}] {path} (profile {profile}) ...", flush=True)
        b = execute(path, out, args.timeout, args.kernel)
        print(f"    {b.seconds:.0f} s -> {b.html}", flush=True)
        built.append(b)
    (out / "index.html").write_text(render_index(built, out, profile), encoding="utf-8")
    print(f"make course: {len(built)} notebooks in {time.perf_counter() - total:.0f} s; open {out / 'index.html'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
