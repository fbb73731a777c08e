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


# ----------------------------------------------------------------------------- issue 28, item 11: bypasses
def test_raw_socket_module_is_guarded_too():
    import _socket

    s = _socket.socket(socket.AF_INET, socket.SOCK_STREAM)      # (no context manager on the C class)
    try:
        with pytest.raises(netguard.NetworkBlockedError, match="1.1.1.1:443"):
            s.connect(("1.1.1.1", 443))
        with pytest.raises(netguard.NetworkBlockedError, match="1.1.1.1:80"):
            s.connect_ex(("1.1.1.1", 80))
    finally:
        s.close()
    u = _socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with pytest.raises(netguard.NetworkBlockedError, match="9.9.9.9:53"):
            u.sendto(b"x", ("9.9.9.9", 53))
    finally:
        u.close()


@pytest.mark.skipif(not hasattr(socket.socket, "sendmsg"), reason="no sendmsg on this OS")
def test_sendmsg_to_a_public_address_is_blocked():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        with pytest.raises(netguard.NetworkBlockedError, match="9.9.9.9:53"):
            s.sendmsg([b"x"], [], 0, ("9.9.9.9", 53))
    import _socket

    u = _socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        with pytest.raises(netguard.NetworkBlockedError, match="9.9.9.9:53"):
            u.sendmsg([b"x"], [], 0, ("9.9.9.9", 53))
    finally:
        u.close()


def test_sendmsg_and_sendto_on_loopback_still_work():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as rx, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        rx.bind(("127.0.0.1", 0))
        rx.settimeout(5)
        tx.sendto(b"a", rx.getsockname())
        if hasattr(tx, "sendmsg"):
            tx.sendmsg([b"b"], [], 0, rx.getsockname())
        assert rx.recv(1) == b"a"
        if hasattr(tx, "sendmsg"):
            assert rx.recv(1) == b"b"


@pytest.mark.parametrize("call", [
    lambda: socket.getaddrinfo("huggingface.co", 443),
    lambda: socket.gethostbyname("huggingface.co"),
    lambda: socket.gethostbyname_ex("pypi.org"),
    lambda: socket.gethostbyaddr("1.1.1.1"),
    lambda: __import__("_socket").getaddrinfo("huggingface.co", 443),
], ids=["getaddrinfo", "gethostbyname", "gethostbyname_ex", "gethostbyaddr", "_socket.getaddrinfo"])
def test_dns_lookups_of_outside_names_are_blocked(call):
    with pytest.raises(netguard.NetworkBlockedError, match="DNS lookup"):
        call()


def test_local_and_numeric_lookups_still_work():
    before = len(netguard.BLOCKED)
    assert socket.getaddrinfo("127.0.0.1", 80)[0][4][0] == "127.0.0.1"
    assert socket.getaddrinfo("1.1.1.1", 80, type=socket.SOCK_STREAM)[0][4][0] == "1.1.1.1"   # a literal: no DNS
    assert socket.getaddrinfo(None, 0, socket.AF_INET, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    assert socket.gethostbyname("localhost").startswith("127.")
    socket.getaddrinfo(socket.gethostname(), None)          # this machine's own name (Jupyter, gloo ask it)
    assert len(netguard.BLOCKED) == before


def test_uninstall_restores_everything():
    import _socket

    originals = (socket.socket.connect, socket.socket.sendmsg, socket.getaddrinfo, _socket.socket, _socket.getaddrinfo)
    netguard.uninstall()
    try:
        assert not netguard.is_installed()
        assert _socket.socket is socket.socket.__mro__[1], "the raw socket class was not restored"
        assert not hasattr(socket.getaddrinfo, "_course_netguard_original")
    finally:
        netguard.install()
    assert netguard.is_installed()
    assert _socket.socket is not originals[3] and _socket.socket.__mro__[1] is socket.socket.__mro__[1]
    with pytest.raises(netguard.NetworkBlockedError):
        socket.getaddrinfo("huggingface.co", 443)


def test_isolated_subprocess_is_not_covered_by_the_python_guard():
    """Documented limit: ``python -I`` (and non-Python programs) skip sitecustomize, so only a
    network namespace (tools/netns_run.sh) stops them. This test pins that the docs stay true."""
    out = subprocess.run([sys.executable, "-I", "-c", "import sys; print('netguard' in sys.modules)"],
                         capture_output=True, text=True, timeout=60, env=os.environ.copy())
    assert out.stdout.strip() == "False"
    assert "not a sandbox" in (netguard.__doc__ or "")


NETNS_RUN = Path(__file__).resolve().parents[1] / "tools" / "netns_run.sh"


def _python_in_netns(code: str) -> str:
    """stdout of ``python -I -c code`` (no sitecustomize, so no Python guard) run by netns_run.sh."""
    probe = subprocess.run([str(NETNS_RUN), "--check"], capture_output=True, text=True, timeout=60)
    if probe.returncode != 0:
        pytest.skip("no network namespace here (unshare -n / -rn refused): tools/netns_run.sh runs commands "
                    f"without one, with the Python guard only ({probe.stderr.strip()})")
    out = subprocess.run([str(NETNS_RUN), sys.executable, "-I", "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_netns_run_blocks_what_the_python_guard_cannot():
    stdout = _python_in_netns(
        "import socket\n"
        "try:\n    socket.create_connection(('1.1.1.1', 443), timeout=3)\n    print('CONNECTED')\n"
        "except OSError as e:\n    print('OSError', e.errno)\n"
        "try:\n    socket.getaddrinfo('huggingface.co', 443)\n    print('RESOLVED')\n"
        "except OSError as e:\n    print('gaierror')\n")
    assert "CONNECTED" not in stdout and "RESOLVED" not in stdout
    assert "OSError" in stdout and "gaierror" in stdout


def test_netns_run_keeps_loopback_working():
    stdout = _python_in_netns(
        "import socket, threading\n"
        "s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(1)\n"
        "threading.Thread(target=lambda: s.accept()[0].sendall(b'ok'), daemon=True).start()\n"
        "c = socket.create_connection(s.getsockname(), timeout=5); print(c.recv(2).decode())\n")
    assert stdout.strip() == "ok"


def test_netns_run_without_unshare_says_so_and_still_runs(tmp_path: Path):
    env = dict(os.environ, PATH=str(tmp_path))   # no unshare on PATH
    out = subprocess.run(["/bin/bash", str(NETNS_RUN), "/bin/echo", "ran"], capture_output=True, text=True,
                         timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ran"
    assert "without a network namespace" in out.stderr
