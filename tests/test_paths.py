"""Tests of course_utils.paths: the course writes nothing outside its data folder (issue 28.5)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from course_utils import paths

REPO = Path(__file__).resolve().parents[1]

RUN = """
import course_utils, os
from course_utils import metrics
assert metrics.load_metric("classification").compute(predictions=[0, 1], references=[0, 1])["accuracy"] == 1.0
from course_utils import paths
scratch = paths.scratch_dir("tweets-")
(scratch / "trainer_state.json").write_text("{}")
print(os.environ["HF_HOME"])
print(scratch)
"""


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_a_run_writes_nothing_outside_the_data_folder(tmp_path: Path) -> None:
    home, tmp, data = tmp_path / "home", tmp_path / "tmp", tmp_path / "data"
    for d in (home, tmp):
        d.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TORCHINDUCTOR", "TRITON", "XDG_"))}
    env.update(HOME=str(home), TMPDIR=str(tmp), COURSE_DATA_DIR=str(data), HF_HUB_OFFLINE="1",
               HF_DATASETS_OFFLINE="1", PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", RUN], env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    hf_home, scratch = proc.stdout.split()[-2:]
    assert Path(hf_home) == data / "cache" / "huggingface" and (data / "cache" / "huggingface").is_dir()
    assert Path(scratch).parent == data / "tmp" and not Path(scratch).exists(), "scratch folders go at exit"
    assert _files(home) == [] and _files(tmp) == [], (_files(home), _files(tmp))


def test_learners_settings_win(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "mine"))
    monkeypatch.delenv("TRITON_CACHE_DIR", raising=False)
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path / "data"))
    done = paths.configure_caches()
    assert "HF_HOME" not in done and os.environ["HF_HOME"] == str(tmp_path / "mine")
    assert os.environ["TRITON_CACHE_DIR"] == str(tmp_path / "data" / "cache" / "triton")


def test_scratch_dir_rejects_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))
    assert paths.scratch_dir("x-").parent == tmp_path / "tmp"
    for bad in ("../x", ".hidden", 3):
        with pytest.raises(ValueError, match="prefix"):
            paths.scratch_dir(bad)  # type: ignore[arg-type]


def test_tweet_trainer_output_goes_under_the_data_folder(monkeypatch: pytest.MonkeyPatch) -> None:
    """The `tweets-*` folders were made with tempfile.mkdtemp in the system temp and never removed."""
    import transformers

    from course_utils import assets, finetune

    class Stop(Exception):
        pass

    def capture(trainer: transformers.Trainer, *args: object, **kwargs: object) -> None:
        raise Stop(trainer.args.output_dir)

    monkeypatch.setattr(transformers.Trainer, "train", capture)
    with pytest.raises(Stop) as got:
        finetune.finetune_tweet_classifier("ci", progress=False)
    out = Path(str(got.value))
    assert out.parent == assets.data_dir() / "tmp" and out.name.startswith("tweets-")
