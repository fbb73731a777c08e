"""Read a notebook's own code, so tests can compare it with the package (book and package stay one).

``notebook_namespace(path, names)`` executes, in a fresh namespace, only the code cells of the
notebook that define one of ``names`` (a ``def``/``class`` at top level, or an assignment), plus
the cells' imports, and returns that namespace. No copy of the notebook's code lives in a test.
"""
from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any, Iterable

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def code_cells(path: str | Path) -> list[str]:
    """The source of every code cell of a notebook, magics and shell lines removed."""
    path = Path(path)
    if not path.is_absolute() and not path.exists():
        path = NOTEBOOKS / path
    nb = json.loads(path.read_text(encoding="utf-8"))
    cells = []
    for cell in nb["cells"]:
        if cell.get("cell_type") != "code":
            continue
        src = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        lines = [ln for ln in src.splitlines() if not ln.lstrip().startswith(("%", "!"))]
        cells.append("\n".join(lines))
    return cells


def _defined_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
    return names


def notebook_namespace(path: str | Path, names: Iterable[str]) -> dict[str, Any]:
    """Execute the notebook's top-level imports and the definitions of ``names``; return them.

    Only ``import`` statements and the ``def``/``class`` nodes named in ``names`` are run, so
    training loops and plots in the same cell are not executed. Raises ``LookupError`` naming
    what the notebook no longer defines.
    """
    wanted = set(names)
    imports: list[ast.stmt] = []
    defs: list[ast.stmt] = []
    for src in code_cells(path):
        try:
            tree = ast.parse(src)
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                imports.append(node)
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name in wanted:
                defs.append(node)
    found = {getattr(d, "name") for d in defs}
    missing = wanted - found
    if missing:
        raise LookupError(f"{path} no longer defines {sorted(missing)}; update the notebook or the test")
    ns: dict[str, Any] = {"__name__": "notebook"}
    module = ast.Module(body=imports + defs, type_ignores=[])
    exec(compile(module, str(path), "exec"), ns)
    return ns
