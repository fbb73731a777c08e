"""Block outbound network connections during tests; loopback and Unix sockets stay allowed.

Shared by ``tests/conftest.py`` (the pytest process) and ``tests/netguard/sitecustomize.py``
(every other Python process started with ``tests/netguard`` on ``PYTHONPATH``: notebook
kernels under nbmake, ``python -m course_utils.doctor``, a JupyterLab server).

The guard patches ``socket.socket.connect``/``connect_ex``/``sendto`` at class level, so
everything built on Python sockets (``http.client``, ``urllib3``/``requests``, ``httpx``,
``asyncio``, ``tornado``) is covered. A blocked attempt raises :class:`NetworkBlockedError`
("outbound network connection to 1.1.1.1:443 blocked during tests") and is recorded in
:data:`BLOCKED`, so a test whose code swallowed the error can still be failed afterwards.

Set ``COURSE_NETGUARD=0`` to turn the subprocess guard off (for a debugging session only).
"""
from __future__ import annotations

import ipaddress
import socket
from typing import Any

#: Every blocked attempt in this process, as ``"host:port"`` strings, in order.
BLOCKED: list[str] = []

_LOCAL_NAMES = frozenset({"localhost", "localhost.", "localhost.localdomain", "ip6-localhost", ""})
_MARK = "_course_netguard_original"


class NetworkBlockedError(RuntimeError):
    """An outbound connection was attempted while the course's network guard was on.

    A ``RuntimeError`` rather than an ``OSError`` on purpose: HTTP libraries catch ``OSError``
    and retry or fall back quietly, which would hide the attempt.
    """


def _format(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        host, port = address[0], address[1]
        host = host.decode() if isinstance(host, bytes) else str(host)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return repr(address)


def is_allowed(family: int, address: Any) -> bool:
    """True for non-IP families (AF_UNIX, netlink, ...) and for loopback IP addresses.

    Host names other than ``localhost`` are refused without being resolved (resolving them
    would itself be network traffic).
    """
    if family not in (socket.AF_INET, socket.AF_INET6):
        return True
    if not isinstance(address, tuple) or not address:
        return False
    host = address[0]
    if isinstance(host, bytes):
        host = host.decode(errors="replace")
    host = str(host).split("%", 1)[0]  # IPv6 scope id: "fe80::1%eth0"
    if host.lower() in _LOCAL_NAMES:
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _check(sock: socket.socket, address: Any) -> None:
    if not is_allowed(sock.family, address):
        where = _format(address)
        BLOCKED.append(where)
        raise NetworkBlockedError(
            f"outbound network connection to {where} blocked during tests "
            "(the course must run offline; only loopback and Unix sockets are allowed)"
        )


def is_installed() -> bool:
    """Whether the guard is active in this process."""
    return hasattr(socket.socket.connect, _MARK)


def install() -> None:
    """Patch :class:`socket.socket` so non-loopback connects raise. Idempotent."""
    if is_installed():
        return
    original_connect = socket.socket.connect
    original_connect_ex = socket.socket.connect_ex
    original_sendto = socket.socket.sendto

    def connect(self: socket.socket, address: Any) -> None:
        _check(self, address)
        return original_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        _check(self, address)
        return original_connect_ex(self, address)

    def sendto(self: socket.socket, data: Any, *args: Any) -> int:
        # sendto(data, address) or sendto(data, flags, address)
        if args:
            _check(self, args[-1])
        return original_sendto(self, data, *args)

    for name, new, old in (("connect", connect, original_connect),
                           ("connect_ex", connect_ex, original_connect_ex),
                           ("sendto", sendto, original_sendto)):
        setattr(new, _MARK, old)
        new.__name__ = name
        new.__doc__ = f"{old.__doc__ or ''}\n\n(wrapped by the course's test network guard)"
        setattr(socket.socket, name, new)


def uninstall() -> None:
    """Restore the original socket methods (used by the guard's own tests)."""
    for name in ("connect", "connect_ex", "sendto"):
        current = getattr(socket.socket, name)
        original = getattr(current, _MARK, None)
        if original is not None:
            setattr(socket.socket, name, original)
