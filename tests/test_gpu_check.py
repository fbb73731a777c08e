"""tools/gpu_check.py: every step runs (tiny, on the CPU), and the results file holds each figure
and says what was not run. The GPU figures themselves come from a run on a GPU machine."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")
TOOL = Path(__file__).resolve().parents[1] / "tools" / "gpu_check.py"


def _load():
    spec = importlib.util.spec_from_file_location("gpu_check", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gc():
    module = _load()
    if not any(module.default_plays_dir().glob("*/*.md")):
        pytest.skip("the Shakespeare asset is not extracted (make assets)")
    return module


def test_plays_split_like_the_course(gc):
    from course_utils.data import TEST_PLAYS

    train, val = gc.read_plays(gc.default_plays_dir())
    assert val.startswith(val.split(":\n", 1)[0] + ":\n") and "\n\n" in val  # SPEAKER:\nline\n\n layout
    assert len(train) > 10 * len(val) > 0
    assert "MACBETH:" in val and "MACBETH:" not in train                     # validation plays held out
    assert "PROSPERO:" not in train and "PROSPERO:" not in val               # the test plays left out
    assert "the-tempest" in TEST_PLAYS
    with pytest.raises(FileNotFoundError, match="make assets"):
        gc.read_plays(Path("/nonexistent/plays"))


def test_tiny_run_writes_every_figure_and_what_was_not_run(gc, tmp_path, capsys):
    rep = gc.main(["--device", "cpu", "--tiny", "--out", str(tmp_path)])
    assert rep["not_run"].keys() == {"post_training_gpu_items"}, rep["not_run"]    # all three steps ran
    c = rep["results"]["char_gpt"]
    assert c["steps_run"] == gc.TINY_TRAIN["max_steps"] and c["stopped_by_budget_at"] is None
    assert [e["step"] for e in c["evals"]] == [0, 10, 20]                            # step 0 and each eval
    assert c["evals"][-1]["val_loss"] < c["evals"][0]["val_loss"]                    # it did train
    assert c["goal_met"] in (True, False) and c["final_val_loss"] == c["evals"][-1]["val_loss"]
    assert rep["results"]["kv_cache"]["rows"][0]["same_ids"] is True
    t = rep["results"]["throughput"]
    assert t["runs"][0]["tokens_per_s"] and min(t["peak_gflops"].values()) > 0
    saved = json.loads(Path(rep["files"][0]).read_text())
    assert saved["gpu"].startswith("no GPU") and saved["date"] == rep["date"] and saved["versions"]["torch"]
    page = Path(rep["files"][1]).read_text()
    for needle in ("# GPU check", "Char GPT", "KV cache", "Training throughput", "## Not run", "post_training"):
        assert needle in page


def test_budget_stops_training_and_one_failure_does_not_stop_the_rest(gc, tmp_path):
    rep = gc.main(["--device", "cpu", "--tiny", "--only", "char_gpt", "--budget-s", "0.001", "--out", str(tmp_path)])
    c = rep["results"]["char_gpt"]
    assert c["stopped_by_budget_at"] == 1 and c["steps_run"] == 1
    assert [e["step"] for e in c["evals"]] == [0, 1]    # the start, and the loss where the budget stopped it
    assert set(rep["not_run"]) == {"kv_cache", "throughput", "post_training_gpu_items"}
    rep = gc.main(["--device", "cpu", "--tiny", "--only", "char_gpt", "--plays", str(tmp_path / "none"),
                   "--out", str(tmp_path)])
    assert "char_gpt" in rep["not_run"] and "FileNotFoundError" in rep["not_run"]["char_gpt"]
    with pytest.raises(ValueError, match="--only"):
        gc.main(["--only", "everything"])
