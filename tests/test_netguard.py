"""The network guard blocks outbound connections and lets loopback and Unix sockets through."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import urllib.request
from pathlib import Path

import netguard  # put on sys.path by conftest.py
import pytest

pytestmark = pytest.mark.allow_blocked_network


@pytest.fixture(autouse=True)
def _clear_blocked():
    before = len(netguard.BLOCKED)
    yield
    del netguard.BLOCKED[before:]


def test_guard_is_on_for_the_session():
    assert netguard.is_installed()
    assert os.environ["HF_HUB_OFFLINE"] == "1"


@pytest.mark.parametrize("address", [("1.1.1.1", 443), ("8.8.8.8", 53)])
def test_connect_to_public_ipv4_is_blocked(address):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        with pytest.raises(netguard.NetworkBlockedError, match=rf"connection to {address[0]}:{address[1]} blocked"):
            s.connect(address)
    assert netguard.BLOCKED[-1] == f"{address[0]}:{address[1]}"


def test_create_connection_and_connect_ex_and_sendto_are_blocked():
    with pytest.raises(netguard.NetworkBlockedError, match="1.1.1.1:443"):
        socket.create_connection(("1.1.1.1", 443), timeout=1)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        with pytest.raises(netguard.NetworkBlockedError):
            s.connect_ex(("1.1.1.1", 80))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        with pytest.raises(netguard.NetworkBlockedError, match="9.9.9.9:53"):
            s.sendto(b"x", ("9.9.9.9", 53))


def test_host_names_are_blocked_without_resolving():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        with pytest.raises(netguard.NetworkBlockedError, match="huggingface.co:443"):
            s.connect(("huggingface.co", 443))


def test_http_library_sees_the_error():
    # A RuntimeError, not an OSError: urllib and friends do not swallow it as a network hiccup.
    with pytest.raises(netguard.NetworkBlockedError, match="1.1.1.1:80"):
        urllib.request.urlopen("http://1.1.1.1/", timeout=1)


@pytest.mark.parametrize("host,expected", [
    ("127.0.0.1", True), ("127.5.6.7", True), ("::1", True), ("localhost", True),
    ("::ffff:127.0.0.1", True), ("10.0.0.1", False), ("192.168.1.1", False),
    ("2606:4700:4700::1111", False), ("example.org", False),
])
def test_is_allowed(host, expected):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    assert netguard.is_allowed(family, (host, 80)) is expected


def _serve_once(server: socket.socket) -> None:
    conn, _ = server.accept()
    with conn:
        conn.sendall(b"hello")


def test_loopback_is_allowed():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        t = threading.Thread(target=_serve_once, args=(server,), daemon=True)
        t.start()
        with socket.create_connection(server.getsockname(), timeout=5) as client:
            assert client.recv(5) == b"hello"
        t.join(5)


@pytest.mark.skipif(not hasattr(socket, "AF_UNIX"), reason="no Unix sockets on this OS")
def test_unix_sockets_are_allowed():
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "s")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
            server.bind(path)
            server.listen(1)
            t = threading.Thread(target=_serve_once, args=(server,), daemon=True)
            t.start()
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.connect(path)
                assert client.recv(5) == b"hello"
            t.join(5)


def test_subprocesses_get_the_guard_through_sitecustomize():
    """What nbmake's kernels rely on: PYTHONPATH=tests/netguard installs the guard at start-up."""
    code = ("import socket, netguard\n"
            "assert netguard.is_installed()\n"
            "try:\n    socket.create_connection(('1.1.1.1', 443), timeout=1)\n"
            "except netguard.NetworkBlockedError as e:\n    print('BLOCKED', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=os.environ.copy())  # conftest put tests/netguard on PYTHONPATH
    assert out.returncode == 0, out.stderr
    assert "BLOCKED outbound network connection to 1.1.1.1:443 blocked during tests" in out.stdout


def test_guard_can_be_switched_off_for_subprocesses():
    env = dict(os.environ, COURSE_NETGUARD="0")
    out = subprocess.run([sys.executable, "-c", "import netguard; print(netguard.is_installed())"],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
