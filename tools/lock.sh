#!/usr/bin/env bash
# Regenerate requirements.lock from the packages installed in .venv (`make lock`).
#
# The lock is what make, CI and environment.yml install with `pip install --require-hashes`:
# every package of the course's environment at its exact version, with the sha256 of each of
# its files on the index. To add or upgrade a package: install it into .venv, run the tests,
# then run this script and commit the lock together with pyproject.toml's range for it.
#
# Hashes come from `uv pip compile --no-deps --generate-hashes` (uv is installed on demand into
# a throwaway venv under data/tmp). torch's entry also carries the hash of the local CPU wheel
# (2.13.0+cpu, as in pip's find-links on the course's machines), so the hashed install of torch
# can use it instead of PyPI's CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || { echo "lock.sh: no .venv here; run 'make venv' first" >&2; exit 1; }
work=data/tmp/lock; mkdir -p "$work"
uv="$work/uvenv/bin/uv"
if [ ! -x "$uv" ]; then
  python3 -m venv "$work/uvenv" && "$work/uvenv/bin/pip" install -q uv
fi
# Exact pins of everything installed, setuptools included, without the course's own package.
"$PY" -m pip freeze --all --exclude-editable \
  | grep -viE '^(pip|llm-course-utils)==' \
  | sed -E 's/^torch==([0-9.]+)\+cpu$/torch==\1/' > "$work/pins.txt"
"$uv" pip compile --quiet --no-deps --generate-hashes --no-header --no-annotate \
  --python-version 3.11.7 "$work/pins.txt" -o "$work/lock.txt"
# Packages that another one requires with extras are written with them (typepy[datetime]==...):
# in --require-hashes mode pip counts `typepy[datetime]` as unpinned otherwise.
# Both entries are kept: `typepy==1.3.5` for the packages that require it plain.
"$PY" tools/lock_extras.py | while read -r name ex; do
  awk -v n="$name" -v ex="$ex" '
    index($0, n "==") == 1 { grab = 1; extra = n "[" ex "]" substr($0, length(n) + 1) "\n"; print; next }
    grab { extra = extra $0 "\n"; print; if ($0 !~ /\\$/) { printf "%s", extra; grab = 0 }; next }
    { print }' "$work/lock.txt" > "$work/lock2.txt" && mv "$work/lock2.txt" "$work/lock.txt"
done
# The local torch wheel's hash, when the wheel is here.
wheel=$(ls /opt/wheels/torch-*+cpu-cp311-*.whl 2>/dev/null | head -1 || true)
{
  echo "# Exact versions with sha256 hashes: make, CI and environment.yml install this file with"
  echo "# \`pip install --require-hashes\`. Regenerate with \`make lock\` (tools/lock.sh); torch carries the hash"
  echo "# of the local CPU wheel (2.13.0+cpu) beside PyPI's 2.13.0 wheels."
  if [ -n "$wheel" ]; then
    h=$(sha256sum "$wheel" | cut -d' ' -f1)
    awk -v h="$h" '{print} /^torch==/{print "    --hash=sha256:" h " \\"}' "$work/lock.txt"
  else
    # Keep the hash the current lock has for the local wheel (first hash of torch's entry).
    h=$(awk '/^torch==/{getline; print; exit}' requirements.lock | sed -E 's/.*sha256:([0-9a-f]+).*/\1/')
    awk -v h="$h" '{print} /^torch==/{print "    --hash=sha256:" h " \\"}' "$work/lock.txt"
  fi
} > requirements.lock.new
mv requirements.lock.new requirements.lock
echo "lock.sh: requirements.lock has $(grep -cE '^[A-Za-z0-9_.-]+==' requirements.lock) packages"
