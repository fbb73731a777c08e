#!/usr/bin/env bash
# The second test leg: what Colab and new users get. A separate venv (.venv-latest) on the newest
# Python this machine offers, the newest releases that pyproject.toml's ranges admit (not the
# lock), then the unit tests and a few notebooks in the ci profile. Prints, and writes to
# build/test-latest.txt, which versions differ from requirements.lock and what broke.
#
#   make test-latest [LATEST_PYTHON=python3.13] [LATEST_NB="notebooks/00_setup.ipynb ..."]
#
# Everything is upgraded eagerly within pyproject's ranges, torch included (on Linux that is
# PyPI's CUDA build, several GB the first time; a machine's pip configuration may cap it).
set -euo pipefail
cd "$(dirname "$0")/.."

pick_python() {
  # pyenv's shims answer `command -v` for versions that are installed but not selected: try
  # those interpreters directly too, newest first.
  local pyenv_bins=""
  if command -v pyenv >/dev/null 2>&1; then
    pyenv_bins=$(ls -d "$(pyenv root)"/versions/3.1[0-9]*/bin/python3 2>/dev/null | sort -V -r || true)
  fi
  for p in python3.13 python3.12 $pyenv_bins python3.11 python3; do
    if command -v "$p" >/dev/null 2>&1 && "$p" -c "import venv" 2>/dev/null; then echo "$p"; return; fi
  done
  echo "test-latest: no python3 found" >&2; exit 1
}
PY_BIN="${LATEST_PYTHON:-$(pick_python)}"
NBS="${LATEST_NB:-notebooks/00_setup.ipynb notebooks/03_attention_math.ipynb notebooks/04_transformer.ipynb}"
VENV=.venv-latest
REPORT=build/test-latest.txt
mkdir -p build

echo "test-latest: $("$PY_BIN" --version) in $VENV, the newest releases within pyproject.toml's ranges"
[ -x "$VENV/bin/python" ] || "$PY_BIN" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
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
"$VENV/bin/python" -m pytest -q -p no:cacheprovider tests/ --skip-browser --ignore=tests/test_packaging.py \
  2>&1 | tee build/test-latest-unit.log | tail -25 || status=1
COURSE_PROFILE=ci "$VENV/bin/python" -m pytest -q --nbmake --nbmake-timeout=300 $NBS \
  2>&1 | tee build/test-latest-notebooks.log | tail -10 || status=1
{
  echo "## unit tests"; tail -3 build/test-latest-unit.log
  echo "## notebooks ($NBS)"; tail -3 build/test-latest-notebooks.log
} >> "$REPORT"
cat "$REPORT"
exit $status
