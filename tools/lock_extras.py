"""Print ``name extra1,extra2`` for each installed package that another one requires with extras.

pip's ``--require-hashes`` mode treats ``typepy[datetime]`` (required by dataproperty) as a
requirement that is not pinned unless the lock itself names the extras, so tools/lock.sh writes
``typepy[datetime]==1.3.5``. Run with the venv's Python.
"""
from __future__ import annotations

import importlib.metadata as md

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

installed = {canonicalize_name(d.metadata["Name"]) for d in md.distributions()}
extras: dict[str, set[str]] = {}
for dist in md.distributions():
    for line in dist.requires or []:
        req = Requirement(line)
        if not req.extras or canonicalize_name(req.name) not in installed:
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue   # needed only for an extra of the requiring package
        extras.setdefault(canonicalize_name(req.name), set()).update(req.extras)
for name, ex in sorted(extras.items()):
    print(name, ",".join(sorted(ex)))
