"""Block outbound network connections during tests; loopback and Unix sockets stay allowed.

What it is: a guard against *accidental* downloads (a loader that forgot ``local_files_only``, a
library phoning home), so that a test that would need the network fails loudly here rather than
passing on a connected laptop and failing offline. It is **not a sandbox**: code that wants to
reach the network can (``python -I`` or ``-S`` subprocesses, which skip ``sitecustomize``;
non-Python programs such as ``curl`` or ``git``; C extensions with their own sockets or
resolver; ``ctypes``). For a hard boundary run the tests in a network namespace:
``tools/netns_run.sh`` (``unshare -rn``, loopback only) does that where the kernel allows it.

Shared by ``tests/conftest.py`` (the pytest process) and ``tests/netguard/sitecustomize.py``
(every other Python process started with ``tests/netguard`` on ``PYTHONPATH``: notebook
kernels under nbmake, ``python -m course_utils.doctor``, a JupyterLab server).

The guard patches ``socket.socket.connect``/``connect_ex``/``sendto``/``sendmsg`` at class
level, so everything built on Python sockets (``http.client``, ``urllib3``/``requests``,
``httpx``, ``asyncio``, ``tornado``) is covered; ``_socket.socket`` (the C class underneath)
is replaced by a guarded subclass, so code that skips the ``socket`` module is covered too; and
DNS lookups of outside names (``getaddrinfo``, ``gethostbyname[_ex]``, ``gethostbyaddr``, in
``socket`` and ``_socket``) are refused, since a lookup is itself traffic to a resolver.
Numeric addresses, ``localhost`` and this machine's own host name still resolve. A blocked attempt raises :class:`NetworkBlockedError`
("outbound network connection to 1.1.1.1:443 blocked during tests") and is recorded in
:data:`BLOCKED`, so a test whose code swallowed the error can still be failed afterwards.

Set ``COURSE_NETGUARD=0`` to turn the subprocess guard off (for a debugging session only).
"""
from __future__ import annotations

import _socket
import ipaddress
import socket
from typing import Any, Callable

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


def _local_host_names() -> frozenset[str]:
    try:
        own = socket.gethostname()
    except OSError:
        return _LOCAL_NAMES
    return _LOCAL_NAMES | {own.lower()}


def _lookup_allowed(host: Any, own_names: frozenset[str]) -> bool:
    """No DNS traffic: None/empty, localhost names, this machine's name, or an address literal."""
    if host is None:
        return True
    if isinstance(host, (bytes, bytearray)):
        host = bytes(host).decode(errors="replace")
    host = str(host).split("%", 1)[0]
    if host.lower() in own_names:
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _check_lookup(host: Any, own_names: frozenset[str], reverse: bool = False) -> None:
    if reverse:   # gethostbyaddr: a reverse lookup of anything but a local name or address asks a resolver
        family = socket.AF_INET6 if ":" in str(host) else socket.AF_INET
        allowed = str(host).lower() in own_names or is_allowed(family, (host, 0))
    else:
        allowed = _lookup_allowed(host, own_names)
    if not allowed:
        BLOCKED.append(f"DNS {host}")
        raise NetworkBlockedError(
            f"DNS lookup of {host!r} blocked during tests (the course must run offline; numeric "
            "addresses, localhost and this machine's own name are allowed)")


# (owner, attribute name) of everything install() replaces, for uninstall()
_PATCHED: list[tuple[Any, str, Any]] = []


def is_installed() -> bool:
    """Whether the guard is active in this process."""
    return hasattr(socket.socket.connect, _MARK)


def _guarded_methods(cls: type) -> dict[str, Callable[..., Any]]:
    """Wrappers of ``cls``'s connect/connect_ex/sendto/sendmsg that check the address first."""
    original_connect, original_connect_ex = cls.connect, cls.connect_ex
    original_sendto = cls.sendto

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

    methods: dict[str, Callable[..., Any]] = {"connect": connect, "connect_ex": connect_ex, "sendto": sendto}
    if hasattr(cls, "sendmsg"):
        original_sendmsg = cls.sendmsg

        def sendmsg(self: socket.socket, buffers: Any, *args: Any) -> int:
            # sendmsg(buffers[, ancdata[, flags[, address]]])
            if len(args) >= 3 and args[2] is not None:
                _check(self, args[2])
            return original_sendmsg(self, buffers, *args)

        methods["sendmsg"] = sendmsg
    for name, new in methods.items():
        old = getattr(cls, name)
        setattr(new, _MARK, old)
        new.__name__ = name
        new.__doc__ = f"{old.__doc__ or ''}\n\n(wrapped by the course's test network guard)"
    return methods


def _guarded_lookup(fn: Callable[..., Any], own_names: frozenset[str], reverse: bool = False) -> Callable[..., Any]:
    def lookup(host: Any, *args: Any, **kwargs: Any) -> Any:
        _check_lookup(host, own_names, reverse)
        return fn(host, *args, **kwargs)

    setattr(lookup, _MARK, fn)
    lookup.__name__, lookup.__doc__ = fn.__name__, f"{fn.__doc__ or ''}\n\n(wrapped by the course's test network guard)"
    return lookup


def _patch(owner: Any, name: str, new: Any) -> None:
    _PATCHED.append((owner, name, getattr(owner, name)))
    setattr(owner, name, new)


def install() -> None:
    """Patch the socket layer so non-loopback connects and outside DNS lookups raise. Idempotent."""
    if is_installed():
        return
    for name, new in _guarded_methods(socket.socket).items():
        _patch(socket.socket, name, new)
    # _socket.socket is a C type whose methods cannot be replaced: a guarded subclass takes its
    # name in the _socket module (socket.socket itself already derives from the original)
    raw = _socket.socket
    guarded_raw = type("socket", (raw,), {**_guarded_methods(raw), "__module__": "_socket",
                                           "__doc__": raw.__doc__})
    _patch(_socket, "socket", guarded_raw)
    if getattr(_socket, "SocketType", None) is raw:
        _patch(_socket, "SocketType", guarded_raw)
    own_names = _local_host_names()
    for module in (socket, _socket):
        for name, reverse in (("getaddrinfo", False), ("gethostbyname", False), ("gethostbyname_ex", False),
                              ("gethostbyaddr", True)):
            fn = getattr(module, name, None)
            if fn is not None and not hasattr(fn, _MARK):
                _patch(module, name, _guarded_lookup(fn, own_names, reverse))


def uninstall() -> None:
    """Restore everything :func:`install` replaced (used by the guard's own tests)."""
    while _PATCHED:
        owner, name, original = _PATCHED.pop()
        setattr(owner, name, original)
