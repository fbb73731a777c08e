#!/usr/bin/env bash
# The second test leg: what Colab and new users get. A separate venv (.venv-latest) on the newest
# Python this machine offers, the newest releases that pyproject.toml's ranges admit (not the
# lock), then the unit tests and a few notebooks in the ci profile. Prints, and writes to
# build/test-latest.txt, which versions differ from requirements.lock and what broke.
#
#   make test-latest [LATEST_PYTHON=python3.13] [LATEST_TORCH="torch==2.14.*"] [LATEST_NB="notebooks/00_setup.ipynb ..."]
#
# torch stays at LATEST_TORCH (default: the lock's 2.13.0): on Linux a newer torch, or any torch
# for a Python without a CPU wheel on disk, is a CUDA build of several GB from PyPI. Everything
# else is upgraded eagerly within pyproject's ranges.
set -euo pipefail
cd "$(dirname "$0")/.."

pick_python() {
  for p in python3.13 python3.12 python3.11 python3; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c "import venv" 2>/dev/null; then echo "$p"; return; fi
  done
  echo "test-latest: no python3 found" >&2; exit 1
}
PY_BIN="${LATEST_PYTHON:-$(pick_python)}"
TORCH="${LATEST_TORCH:-torch==2.13.0}"
NBS="${LATEST_NB:-notebooks/00_setup.ipynb notebooks/03_attention_math.ipynb notebooks/04_transformer.ipynb}"
VENV=.venv-latest
REPORT=build/test-latest.txt
mkdir -p build

echo "test-latest: $("$PY_BIN" --version) in $VENV, $TORCH, newest releases within pyproject.toml's ranges"
[ -x "$VENV/bin/python" ] || "$PY_BIN" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q "$TORCH"
"$VENV/bin/python" -m pip install -q --upgrade --upgrade-strategy eager -e ".[dev]"

{
  echo "# test-latest, $(date -u +%Y-%m-%dT%H:%MZ), $("$VENV/bin/python" --version)"
  echo "## versions that differ from requirements.lock"
  "$VENV/bin/python" - <<'PY'
import re
from importlib import metadata
from packaging.utils import canonicalize_name
text = re.sub(r"\\\n\s*", " ", open("requirements.lock").read())
lock = {canonicalize_name(m.group(1)): m.group(2) for m in re.finditer(r"^([A-Za-z0-9][\w.-]*)==(\S+)", text, re.M)}
for dist in sorted(metadata.distributions(), key=lambda d: d.metadata["Name"].lower()):
    name = canonicalize_name(dist.metadata["Name"])
    if name in lock and lock[name] != dist.version.split("+")[0]:
        print(f"- {name}: {lock[name]} -> {dist.version}")
PY
} > "$REPORT"

status=0
export OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg TOKENIZERS_PARALLELISM=false
export PYTHONPATH="$PWD/tests/netguard${PYTHONPATH:+:$PYTHONPATH}"
"$VENV/bin/python" -m course_utils.assets fetch-all >/dev/null
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/ --skip-browser -x --ignore=tests/test_packaging.py \
  2>&1 | tee build/test-latest-unit.log | tail -25 || status=1
COURSE_PROFILE=ci "$VENV/bin/python" -m pytest -q --nbmake --nbmake-timeout=300 $NBS \
  2>&1 | tee build/test-latest-notebooks.log | tail -10 || status=1
{
  echo "## unit tests"; tail -3 build/test-latest-unit.log
  echo "## notebooks ($NBS)"; tail -3 build/test-latest-notebooks.log
} >> "$REPORT"
cat "$REPORT"
exit $status
