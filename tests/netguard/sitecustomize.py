"""Turn the course's network guard on in every Python process that has this folder on PYTHONPATH.

``make test`` exports ``PYTHONPATH=<repo>/tests/netguard``, so notebook kernels started by
nbmake, the JupyterLab server of the browser test and any ``python -m ...`` a test spawns
refuse outbound connections exactly as the pytest process does (see ``netguard.py``).
``COURSE_NETGUARD=0`` turns it off. Python imports only the first ``sitecustomize`` on
``sys.path``, so this one then runs any other it shadows (Debian ships one, for example).

A guard against accidental downloads, not a sandbox: an interpreter started with ``-I``, ``-E``
or ``-S`` never reads this file, and non-Python programs ignore it. ``tools/netns_run.sh`` runs
a command in a network namespace (loopback only) where the kernel allows one.
"""
from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path


def _chain_shadowed_sitecustomize() -> None:
    here = Path(__file__).resolve().parent
    for entry in sys.path:
        try:
            folder = Path(entry or ".").resolve()
        except OSError:
            continue
        candidate = folder / "sitecustomize.py"
        if folder == here or not candidate.is_file():
            continue
        spec = importlib.util.spec_from_file_location("_shadowed_sitecustomize", candidate)
        if spec is not None and spec.loader is not None:
            module = importlib.util.module_from_spec(spec)
            try:
                spec.loader.exec_module(module)
            except Exception as exc:  # a broken site file must not stop the interpreter
                print(f"netguard: ignoring error in {candidate}: {exc}", file=sys.stderr)
        return


if os.environ.get("COURSE_NETGUARD", "1") != "0":
    import netguard

    netguard.install()

_chain_shadowed_sitecustomize()
