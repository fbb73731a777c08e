"""The lock file, pyproject.toml, environment.yml, the Makefile and .ci/run tell one story."""
from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements.lock"

# What the design says the lock must pin (the libraries the course is built on).
KEY_LOCKED = ("torch", "transformers", "tokenizers", "datasets", "evaluate", "accelerate", "peft",
              "sentence-transformers", "gguf", "ipywidgets", "bertviz", "jupyterlab", "nbmake",
              "matplotlib", "tqdm", "safetensors")


def lock_entries(path: Path = LOCK) -> dict[str, tuple[Version, list[str]]]:
    """``{canonical name: (version, sha256 hashes)}`` from a hashed ``name==version \\`` lock;
    anything else is an error."""
    entries: dict[str, tuple[Version, list[str]]] = {}
    extras: dict[str, tuple[Version, list[str]]] = {}
    text = re.sub(r"\\\n\s*", " ", path.read_text())  # join continuation lines
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[a-z0-9,_-]+\])?==([^\s;]+)"
                         r"((?:\s+--hash=sha256:[0-9a-f]{64})*)", line)
        assert m, f"{path.name}: entry {n}: expected 'name==version --hash=sha256:...', got {raw[:120]!r}"
        name = canonicalize_name(m.group(1))
        entry = (Version(m.group(3)), re.findall(r"sha256:([0-9a-f]{64})", m.group(4)))
        if m.group(2):  # `typepy[datetime]==v` (pip's hash mode needs the extras named) repeats `typepy==v`
            extras[name] = entry
            continue
        assert name not in entries, f"{path.name}: {name} pinned twice"
        entries[name] = entry
    for name, entry in extras.items():
        assert entries.get(name) == entry, f"{path.name}: {name}[...] differs from {name}'s own entry"
    return entries


def read_lock(path: Path = LOCK) -> dict[str, Version]:
    """``{canonical name: version}`` of the lock."""
    return {name: v for name, (v, _) in lock_entries(path).items()}


@pytest.fixture(scope="module")
def lock() -> dict[str, Version]:
    return read_lock()


@pytest.fixture(scope="module")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_lock_is_exact_and_portable(lock):
    text = LOCK.read_text()
    assert "-e " not in text and "file://" not in text and " @ " not in text, \
        "the lock must not hold editable, local-path or URL requirements (drop the course package line)"
    assert "llm-course-utils" not in lock, "the course package itself does not belong in the lock"
    local = [f"{k}=={v}" for k, v in lock.items() if v.local]
    assert not local, f"local version labels are platform builds, not installable everywhere: {local}"


def test_torch_is_pinned_to_the_cpu_wheel_version(lock):
    assert lock["torch"] == Version("2.13.0")
    assert re.search(r"^torch==2\.13\.0 \\$", LOCK.read_text(), re.M)


def test_every_locked_file_is_hashed():
    """pip's hash-checking mode needs a sha256 for every requirement; torch's list also holds the
    local CPU wheel's (the file `make` installs on the course's machines)."""
    entries = lock_entries()
    unhashed = [name for name, (_, hashes) in entries.items() if not hashes]
    assert not unhashed, f"requirements.lock entries without --hash: {unhashed}"
    local = Path("/opt/wheels/torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl")
    if local.is_file():
        import hashlib

        assert hashlib.sha256(local.read_bytes()).hexdigest() in entries["torch"][1]


def test_lock_pins_every_key_library(lock):
    missing = [k for k in KEY_LOCKED if canonicalize_name(k) not in lock]
    assert not missing, f"requirements.lock lacks {missing}"


def _project_requirements(pyproject: dict) -> list[Requirement]:
    reqs = [Requirement(r) for r in pyproject["project"]["dependencies"]]
    for extra in pyproject["project"].get("optional-dependencies", {}).values():
        reqs += [Requirement(r) for r in extra]
    return reqs


def test_pyproject_ranges_admit_every_locked_version(pyproject, lock):
    problems = []
    for req in _project_requirements(pyproject):
        name = canonicalize_name(req.name)
        if name not in lock:
            problems.append(f"{req} is a dependency but is not in requirements.lock")
        elif not req.specifier.contains(lock[name], prereleases=True):
            problems.append(f"{req} does not admit the locked {name}=={lock[name]}")
    assert not problems, "\n".join(problems)


def test_pyproject_states_ranges_not_pins(pyproject):
    pinned = [str(r) for r in _project_requirements(pyproject) if any(s.operator == "==" for s in r.specifier)]
    assert not pinned, f"exact pins in pyproject.toml break installs on Colab / new Pythons: {pinned}"


def test_requires_python_admits_the_locked_python(pyproject):
    assert SpecifierSet(pyproject["project"]["requires-python"]).contains("3.11")


def test_environment_yml_installs_the_same_lock(lock):
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    assert "python=3.11" in deps
    pip_lines = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    assert "-r requirements.lock" in pip_lines   # torch is in the lock, with its hashes
    assert not any(line.startswith("-e") for line in pip_lines), "an editable install breaks pip's hash-checking mode"
    for line in pip_lines:  # any other pin it lists must be the locked one
        if "==" in line and not line.startswith("-"):
            req = Requirement(line)
            name = canonicalize_name(req.name)
            assert name in lock and req.specifier.contains(lock[name]), f"environment.yml {line!r} disagrees with the lock"


def test_makefile_installs_torch_first_then_the_lock_then_the_package():
    text = (ROOT / "Makefile").read_text()
    torch_at = text.index("TORCH_SPEC)")
    lock_at = text.index("pip install --require-hashes -r requirements.lock")
    pkg_at = text.index("pip install --no-deps -e .")
    assert "TORCH_SPEC ?= torch==2.13.0" in text
    assert "--require-hashes --no-deps -r $(VENV)/.torch-requirement" in text
    assert torch_at < lock_at < pkg_at


def test_ci_script_is_strict_and_runs_make_test():
    text = (ROOT / ".ci" / "run").read_text()
    assert text.startswith("#!"), ".ci/run needs a shebang"
    assert "set -euo pipefail" in text
    assert re.search(r"apt-get install -y .*chromium .*chromium-driver", text)
    assert re.search(r"^\s*(exec\s+)?make test\b", text, re.M)
    assert (ROOT / ".ci" / "run").stat().st_mode & 0o111, ".ci/run must be executable"


def test_installed_versions_match_the_lock(lock):
    """The environment the tests run in is the locked one (what measured figures refer to)."""
    wrong = []
    for name, version in lock.items():
        try:
            installed = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            wrong.append(f"{name}: not installed (locked {version})")
            continue
        if installed.public != version.public:
            wrong.append(f"{name}: installed {installed}, locked {version}")
    assert not wrong, "environment differs from requirements.lock (run `make venv`):\n" + "\n".join(wrong)
