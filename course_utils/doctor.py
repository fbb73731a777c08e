"""Environment check for bug reports: ``python -m course_utils.doctor`` (or ``make doctor``).

Prints Python, OS, torch and its accelerators (CUDA, XLA, MPS), the versions of the key
libraries, the device the course would use, the precision training will use there and why
(on a CPU: its native bf16 instructions, a timed bf16-vs-fp32 training-step probe and the matmul
peak), the profile, the data directory and the state of
every offline asset. Every probe degrades gracefully: a broken torch install or a missing
asset module becomes a line in the report, never a traceback, because the report is most
needed exactly when something is broken.

Defined in chapter 0, Setup.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from typing import Any, Callable

from . import KEY_PACKAGES, __version__, package_versions
from .profiles import ENV_VAR as PROFILE_ENV, current_profile_name


def _safe(probe: Callable[[], Any]) -> Any:
    """Run ``probe``; return its value, or ``"error: <Type>: <message>"`` if it raised."""
    try:
        return probe()
    except Exception as exc:  # noqa: BLE001 - the report must always print
        return f"error: {type(exc).__name__}: {exc}"


def _torch_info() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "version": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cuda_build": torch.version.cuda,
        "threads": torch.get_num_threads(),
    }
    if info["cuda_available"]:
        info["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    info["mps_available"] = bool(mps is not None and mps.is_available())
    import importlib.util

    info["xla_installed"] = importlib.util.find_spec("torch_xla") is not None
    return info


def _device() -> str:
    from .device import describe_device, get_device

    return describe_device(get_device())


def _precision() -> dict[str, Any]:
    from .device import PRECISION_ENV_VAR, choose_precision, cpu_bf16_isa, get_device, probe_cpu_matmul

    choice = choose_precision(get_device())
    info: dict[str, Any] = {"choice": str(choice), "dtype": choice.name, "reason": choice.reason,
                            "cpu_bf16_isa": cpu_bf16_isa(), "override": os.environ.get(PRECISION_ENV_VAR) or None}
    if choice.probe is not None:
        p = choice.probe
        info["probe"] = {"kind": p.kind, "fp32_gflops": round(p.fp32_gflops, 1), "bf16_gflops": round(p.bf16_gflops, 1),
                         "speedup": round(p.speedup, 2), "tokens": p.tokens, "width": p.width, "threads": p.threads}
        m = probe_cpu_matmul()  # ~0.3 s: what the bf16 units can do, beside what a step gains
        info["matmul_peak"] = {"fp32_gflops": round(m.fp32_gflops, 1), "bf16_gflops": round(m.bf16_gflops, 1),
                               "speedup": round(m.speedup, 2)}
    return info


def _profile() -> str:
    from .profiles import get_profile

    name = current_profile_name()
    get_profile(name)  # raises with a clear message when $COURSE_PROFILE is invalid
    source = f"${PROFILE_ENV}" if os.environ.get(PROFILE_ENV) else "default"
    return f"{name} (from {source})"


def _assets(verify: bool) -> tuple[str, list[dict]]:
    from . import assets  # imported lazily: a broken assets module must not break the report

    return str(assets.data_dir()), assets.status(deep=verify)


def collect(verify: bool = True) -> dict[str, Any]:
    """Everything the report shows, as plain data (what ``--json`` prints).

    ``verify=True`` re-hashes every extracted asset file (a few seconds for ~200 MB).
    """
    info: dict[str, Any] = {
        "course_utils": __version__,
        "python": f"{platform.python_version()} ({platform.python_implementation()}, {sys.executable})",
        "os": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "torch": _safe(_torch_info),
        "packages": _safe(lambda: package_versions(KEY_PACKAGES)),
        "device": _safe(_device),
        "device_override": os.environ.get("COURSE_DEVICE") or None,
        "precision": _safe(_precision),
        "profile": _safe(_profile),
        "offline_env": {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE",
                                                        "TRANSFORMERS_OFFLINE", "COURSE_DATA_DIR")},
    }
    assets_info = _safe(lambda: _assets(verify))
    if isinstance(assets_info, tuple):
        info["data_dir"], info["assets"] = assets_info
    else:
        info["data_dir"], info["assets"] = "unknown", assets_info
    info["assets_verified"] = verify
    return info


def _asset_line(row: dict) -> str:
    state = "OK" if row.get("checksum_ok") else ("CORRUPT (run make assets)" if row.get("present")
                                                 else "missing (run make assets)")
    return (f"  {row.get('name', '?'):<12} {row.get('requirement', ''):<28} sha256 {row.get('sha256', '')}"
            f"  {row.get('size_mb', 0):>7.1f} MB  {state}")


def _precision_line(prec: Any) -> str:
    """``precision bf16 autocast (avx512_bf16, probe 1.40× fp32 at width 256) | probe train step 768
    tokens x width 256, 2 threads: fp32 52 / bf16 73 GFLOP/s``."""
    if not isinstance(prec, dict):
        return f"precision {prec}"
    line = f"precision {prec['choice']}"
    if prec.get("probe"):
        p = prec["probe"]
        line += (f" | probe {p.get('kind', 'matmul')} {p['tokens']} tokens x width {p['width']}, {p['threads']} threads:"
                 f" fp32 {p['fp32_gflops']:.0f} / bf16 {p['bf16_gflops']:.0f} GFLOP/s")
    if prec.get("matmul_peak"):
        m = prec["matmul_peak"]
        line += f" | matmuls alone: fp32 {m['fp32_gflops']:.0f} / bf16 {m['bf16_gflops']:.0f} GFLOP/s"
    if prec.get("override"):
        line += f" (COURSE_PRECISION={prec['override']})"
    return line


def render(info: dict[str, Any]) -> str:
    """The human-readable report for ``info`` (from :func:`collect`)."""
    lines = [f"course_utils {info['course_utils']} -- environment report", "",
             f"python   {info['python']}", f"os       {info['os']}"]
    t = info["torch"]
    if isinstance(t, dict):
        cuda = f"yes ({', '.join(t.get('cuda_devices', []))})" if t["cuda_available"] else "no"
        lines += [f"torch    {t['version']} (CUDA build: {t['cuda_build'] or 'none'}; {t['threads']} CPU threads)",
                  f"         CUDA available: {cuda} | MPS available: {'yes' if t['mps_available'] else 'no'}"
                  f" | torch_xla installed: {'yes' if t['xla_installed'] else 'no'}"]
    else:
        lines.append(f"torch    {t}")
    lines += ["", "packages"]
    pk = info["packages"]
    if isinstance(pk, dict):
        lines += [f"  {name:<22} {ver}" for name, ver in pk.items()]
    else:
        lines.append(f"  {pk}")
    override = f" (COURSE_DEVICE={info['device_override']})" if info["device_override"] else ""
    lines += ["", f"device   {info['device']}{override}", _precision_line(info.get("precision")),
              f"profile  {info['profile']}",
              "env      " + (", ".join(f"{k}={v}" for k, v in info["offline_env"].items() if v) or "(no offline or data-dir variables set)"),
              f"data dir {info['data_dir']}", "", "assets"]
    rows = info["assets"]
    if isinstance(rows, list):
        lines += [_asset_line(r) for r in rows] or ["  (none registered)"]
        ok = sum(bool(r.get("checksum_ok")) for r in rows)
        how = "checksums verified" if info.get("assets_verified", True) else "checksums not re-verified (--no-verify)"
        lines.append(f"  {ok}/{len(rows)} present, {how}")
    else:
        lines.append(f"  could not read asset state: {rows}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Print the report (or JSON with ``--json``); exit 0 even when something is missing."""
    parser = argparse.ArgumentParser(prog="python -m course_utils.doctor", description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead")
    parser.add_argument("--no-verify", action="store_true",
                        help="skip re-hashing the asset files (faster; presence only)")
    parser.add_argument("--reprobe", action="store_true",
                        help="time the CPU's bf16-vs-fp32 training-step probe again (e.g. after a busy first run)")
    args = parser.parse_args(argv)
    if args.reprobe:
        from .device import cached_cpu_probe

        _safe(lambda: cached_cpu_probe(refresh=True))
    info = collect(verify=not args.no_verify)
    print(json.dumps(info, indent=2, default=str) if args.json else render(info))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
