"""Normalise the course's notebooks so that opening one in JupyterLab changes nothing.

JupyterLab 4.6 marks a notebook modified the moment its kernel starts when the file's
``metadata.language_info`` is not exactly what the kernel reports: it writes the kernel's full
record (``codemirror_mode``, ``file_extension``, ``mimetype``, ``name``, ``nbconvert_exporter``,
``pygments_lexer``, ``version``) into the notebook. Measured here with JupyterLab 4.6.6 and
ipykernel on Python 3.11.7: a notebook holding only ``{"name": "python"}`` opened dirty; the full
record with ``version`` 3.11.7 opened clean; the same record with another ``version`` (or none)
opened dirty again. So this tool writes the full record, with the version of the Python that
runs it (the course's lock is made for 3.11; run it with ``.venv/bin/python``). A learner whose
kernel runs another 3.11.x patch release still sees the notebook marked modified (only
``version`` differs); nothing in the file can prevent that.

Besides the metadata, every notebook gets: nbformat 4.5 with a unique ``id`` on every cell, no
outputs and no execution counts (the repository's notebooks are committed clean), no
``execution`` timing metadata (nbclient adds it), and the JSON layout JupyterLab itself saves
(``nbformat.writes``: one-space indent, sorted keys, a final newline).

    .venv/bin/python tools/normalize_notebooks.py notebooks/             # rewrite in place
    .venv/bin/python tools/normalize_notebooks.py --check notebooks/     # exit 1 if any would change
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import platform
import sys
from pathlib import Path

import nbformat

KERNELSPEC = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
LOCK_PYTHON = "3.11"   # the Python minor version requirements.lock is made for


def language_info(version: str | None = None) -> dict:
    """What ipykernel reports as ``language_info`` for Python ``version`` (default: this one)."""
    version = version or platform.python_version()
    return {"codemirror_mode": {"name": "ipython", "version": 3}, "file_extension": ".py",
            "mimetype": "text/x-python", "name": "python", "nbconvert_exporter": "python",
            "pygments_lexer": "ipython3", "version": version}


def _cell_id(path_name: str, index: int, used: set[str]) -> str:
    """A stable new id (8 hex digits from the file name and position), unique in the notebook."""
    n = 0
    while True:
        cid = hashlib.sha1(f"{path_name}:{index}:{n}".encode()).hexdigest()[:8]
        if cid not in used:
            return cid
        n += 1


def normalize(nb: nbformat.NotebookNode, name: str = "", version: str | None = None) -> nbformat.NotebookNode:
    """A normalised copy of ``nb`` (see the module docstring); ``name`` seeds new cell ids."""
    nb = copy.deepcopy(nb)
    nb.nbformat, nb.nbformat_minor = 4, 5
    nb.metadata["kernelspec"] = dict(KERNELSPEC)
    nb.metadata["language_info"] = language_info(version)
    nb.metadata.pop("widgets", None)   # saved widget state is output, not source
    used: set[str] = set()
    for i, cell in enumerate(nb.cells):
        cid = cell.get("id")
        if not isinstance(cid, str) or not cid or cid in used:
            cid = _cell_id(name, i, used)
        cell["id"] = cid
        used.add(cid)
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
    nbformat.validate(nb)
    return nb


def normalized_text(path: Path, version: str | None = None) -> str:
    """The file's text as :func:`normalize` and JupyterLab's layout would write it."""
    nb = nbformat.read(path, as_version=4)
    return nbformat.writes(normalize(nb, path.name, version)) + "\n"


def notebooks(paths: list[str]) -> list[Path]:
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(q for q in p.rglob("*.ipynb") if ".ipynb_checkpoints" not in q.parts)
        elif p.suffix == ".ipynb":
            found.append(p)
        else:
            raise SystemExit(f"not a notebook or a folder: {p}")
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="notebooks or folders (searched recursively)")
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a file would change")
    parser.add_argument("--python-version", help="the language_info version to write (default: this Python's)")
    args = parser.parse_args(argv)
    version = args.python_version or platform.python_version()
    if not version.startswith(LOCK_PYTHON + "."):
        print(f"warning: writing Python {version} into the notebooks; the lock is made for {LOCK_PYTHON} "
              "(run with .venv/bin/python or pass --python-version)", file=sys.stderr)
    changed = []
    for path in notebooks(args.paths):
        text = normalized_text(path, version)
        if path.read_text(encoding="utf-8") != text:
            changed.append(path)
            if not args.check:
                path.write_text(text, encoding="utf-8")
    verb = "would change" if args.check else "normalised"
    for path in changed:
        print(f"{verb}: {path}")
    if args.check and changed:
        print(f"{len(changed)} notebook(s) not normalised: run .venv/bin/python tools/normalize_notebooks.py "
              + " ".join(args.paths), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
