"""Session set-up shared by every test: offline mode, a headless plot backend, a network guard.

* The Hugging Face libraries are told to stay offline (``HF_HUB_OFFLINE`` and friends).
* Any socket connect to a non-loopback address raises ``NetworkBlockedError`` ("outbound
  network connection to X blocked during tests"); AF_UNIX and 127.0.0.0/8, ::1 stay allowed.
  The same guard reaches subprocesses (kernels, ``python -m ...``): ``tests/netguard`` is put
  on ``PYTHONPATH``, where its ``sitecustomize.py`` installs it at interpreter start. DNS
  lookups of outside names are refused too. It is a guard against accidental downloads, not a
  sandbox: ``python -I`` subprocesses and non-Python programs bypass it, so ``make test`` also
  runs inside a loopback-only network namespace (``tools/netns_run.sh``) where one is available.
* A test whose code catches the guard's error and carries on still fails: every blocked
  attempt is recorded and checked after each test.
* ``--skip-browser`` skips tests marked ``browser`` (JupyterLab in headless Chromium) for a
  quick local run; ``make test`` and ``.ci/run`` run them.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Iterator

import pytest

NETGUARD_DIR = Path(__file__).resolve().parent / "netguard"

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
}
os.environ.update(OFFLINE_ENV)
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Subprocesses inherit the guard through sitecustomize.py.
_pp = os.environ.get("PYTHONPATH", "")
if str(NETGUARD_DIR) not in _pp.split(os.pathsep):
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(NETGUARD_DIR), _pp) if p)

# Same module name as sitecustomize imports, so one guard (and one BLOCKED list) per process.
if str(NETGUARD_DIR) not in sys.path:
    sys.path.insert(0, str(NETGUARD_DIR))
import netguard  # noqa: E402

netguard.install()  # at import, so imports made while collecting are guarded too


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--skip-browser", action="store_true", default=False,
        help="skip tests marked 'browser' (JupyterLab driven in headless Chromium)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not config.getoption("--skip-browser"):
        return
    skip = pytest.mark.skip(reason="--skip-browser given")
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """The tests' tensors are tiny: one thread avoids OpenMP spin-waits on a busy 2-core machine
    (measured up to 10x slower with two). `make test` also sets OMP_NUM_THREADS=1."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def network_guard() -> Iterator[None]:
    """Session-wide: the guard is on for the whole run (installed when this file is imported)."""
    netguard.install()
    assert netguard.is_installed(), "the network guard failed to install"
    yield


@pytest.fixture(autouse=True)
def _no_swallowed_network_attempts(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail a test during which a connection was blocked, even if its code caught the error."""
    before = len(netguard.BLOCKED)
    yield
    new = netguard.BLOCKED[before:]
    if new and "allow_blocked_network" not in request.keywords:
        del netguard.BLOCKED[before:]
        pytest.fail(f"outbound network connection to {', '.join(new)} blocked during tests "
                    "(the error was caught by the code under test)", pytrace=False)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "allow_blocked_network: the test provokes the network guard on purpose")
