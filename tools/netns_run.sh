#!/usr/bin/env bash
# Run a command in a fresh network namespace where only loopback exists, so nothing it starts
# (python -I, curl, git, a C library's resolver) can reach the network. This is the hard
# boundary that the Python-level guard in tests/netguard is not (that one catches accidental
# downloads in Python code; see its docstring).
#
#   tools/netns_run.sh CMD [ARGS...]   run CMD inside the namespace (or, where none can be made,
#                                      run it as is and say so on stderr)
#   tools/netns_run.sh --check         exit 0 if a namespace can be made here, 1 if not
#
# Uses `unshare -n` as root, else `unshare -rn` (an unprivileged user namespace), and brings
# the loopback interface up inside (JupyterLab, the browser test and torch.distributed's gloo
# talk over 127.0.0.1). Where neither works (no util-linux, user namespaces disabled, a
# container's seccomp profile) the command runs without a namespace: the Python guard still
# applies. COURSE_NETNS=0 skips the namespace on purpose.
set -uo pipefail

check_only=0
if [ "${1:-}" = "--check" ]; then check_only=1; shift; fi
if [ "$check_only" -eq 0 ] && [ "$#" -eq 0 ]; then
  echo "usage: tools/netns_run.sh CMD [ARGS...] | --check" >&2; exit 2
fi

# brings lo up with `ip` when there is one, else with an ioctl from Python (SIOCSIFFLAGS)
LO_UP='if command -v ip >/dev/null 2>&1; then ip link set lo up; else
python3 - <<PY
import fcntl, socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
flags = struct.unpack("16sH", fcntl.ioctl(s, 0x8913, struct.pack("16sH", b"lo", 0)))[1]
fcntl.ioctl(s, 0x8914, struct.pack("16sH", b"lo", flags | 1))
PY
fi'

reason=""
if [ "${COURSE_NETNS:-1}" = "0" ]; then
  reason="COURSE_NETNS=0"
elif ! command -v unshare >/dev/null 2>&1; then
  reason="no 'unshare' command (util-linux)"
else
  flags=""
  for f in -n -rn; do
    if [ "$f" = "-n" ] && [ "$(id -u)" != "0" ]; then continue; fi
    if unshare $f sh -c "$LO_UP" >/dev/null 2>&1; then flags=$f; break; fi
  done
  [ -n "$flags" ] || reason="unshare -n / -rn refused here (user namespaces disabled or filtered)"
fi

if [ "$check_only" -eq 1 ]; then
  if [ -z "$reason" ]; then echo "netns: available (unshare $flags)"; exit 0; fi
  echo "netns: unavailable: $reason" >&2; exit 1
fi
if [ -n "$reason" ]; then
  echo "netns: $reason; running without a network namespace (the Python network guard still applies)" >&2
  exec "$@"
fi
exec unshare $flags sh -c "$LO_UP"' && exec "$@"' netns "$@"
