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
    # every step ran; on a CPU the compiled leg of the step-time comparison is skipped, and said so
    assert rep["not_run"].keys() == {"compiled_step.compiled"}, rep["not_run"]
    assert "CPU" in rep["not_run"]["compiled_step.compiled"]
    c = rep["results"]["char_gpt"]
    assert c["steps_run"] == gc.TINY_TRAIN["max_steps"] and c["stopped_by_budget_at"] is None
    assert [e["step"] for e in c["evals"]] == [0, 10, 20]                            # step 0 and each eval
    assert c["evals"][-1]["val_loss"] < c["evals"][0]["val_loss"]                    # it did train
    assert c["goal_met"] in (True, False) and c["final_val_loss"] == c["evals"][-1]["val_loss"]
    # keep_best: the kept step is the evaluation with the lowest validation loss
    best = min(c["evals"], key=lambda e: e["val_loss"])
    assert c["kept_step"] == best["step"] and round(c["kept_val_loss"], 4) == best["val_loss"]
    assert f"step {best['step']}'s weights" in c["kept"]
    assert rep["results"]["kv_cache"]["rows"][0]["same_ids"] is True
    cs = rep["results"]["compiled_step"]
    assert set(cs["legs"]) == {"never"} and cs["legs"]["never"]["step_ms"] > 0 and "compile_s" not in cs
    sd = rep["results"]["static_decode"]
    assert [r["batch"] for r in sd["rows"]] == [1, 2] and all(r["same_ids"] for r in sd["rows"])
    assert all(r["static_tok_s"] > 0 and r["compiled_tok_s"] is None for r in sd["rows"])
    t = rep["results"]["throughput"]
    assert t["runs"][0]["tokens_per_s"] and min(t["peak_gflops"].values()) > 0
    pt = rep["results"]["post_training"]
    assert pt["profile"] == "ci" and list(pt["stages"]) == ["base", "sft", "grpo"]
    assert all(0 <= v["format_rate"] <= 1 and 0 <= v["accuracy"] <= v["accuracy_ci"][1] <= 1 for v in pt["stages"].values())
    assert pt["grpo_gain_points"] == round(100 * (pt["stages"]["grpo"]["accuracy"] - pt["stages"]["sft"]["accuracy"]), 1)
    saved = json.loads(Path(rep["files"][0]).read_text())
    assert saved["gpu"].startswith("no GPU") and saved["date"] == rep["date"] and saved["versions"]["torch"]
    page = Path(rep["files"][1]).read_text()
    for needle in ("# GPU check", "Char GPT", "KV cache", "Training throughput", "## Not run", "Post-training, chapter 12",
                   "| grpo |", "Compiled training steps", "static KV cache", "compiled_step.compiled"):
        assert needle in page


def test_budget_stops_training_and_one_failure_does_not_stop_the_rest(gc, tmp_path):
    rep = gc.main(["--device", "cpu", "--tiny", "--only", "char_gpt", "--budget-s", "0.001", "--out", str(tmp_path)])
    c = rep["results"]["char_gpt"]
    assert c["stopped_by_budget_at"] == 1 and c["steps_run"] == 1
    assert [e["step"] for e in c["evals"]] == [0, 1]    # the start, and the loss where the budget stopped it
    assert set(rep["not_run"]) == {"kv_cache", "throughput", "compiled_step", "static_decode", "post_training"}
    rep = gc.main(["--device", "cpu", "--tiny", "--only", "char_gpt", "--plays", str(tmp_path / "none"),
                   "--out", str(tmp_path)])
    assert "char_gpt" in rep["not_run"] and "FileNotFoundError" in rep["not_run"]["char_gpt"]
    with pytest.raises(ValueError, match="--only"):
        gc.main(["--only", "everything"])


def test_post_training_says_what_a_bare_gpu_machine_lacks(gc, tmp_path, monkeypatch):
    monkeypatch.setattr(gc, "POST_TRAINING_NEEDS", ("datasets", "no_such_module_here"))
    rep = gc.main(["--device", "cpu", "--tiny", "--only", "post_training", "--out", str(tmp_path)])
    assert "post_training" not in rep["results"]
    assert rep["not_run"]["post_training"].startswith("ModuleNotFoundError: post-training needs no_such_module_here")


def test_markdown_of_the_gpu_only_figures(gc):
    """The compiled legs only run on a GPU: their table is checked here on a report of that shape
    (the figures are placeholders for the layout, not results)."""
    report = {"date": "d", "device": "cuda", "gpu": "G", "versions": {"torch": "t"}, "tiny": False,
              "not_run": {}, "seconds": {}, "results": {
                  "compiled_step": {"warm_steps": 30, "timed_steps": 100, "goal": "g", "goal_met": False,
                                    "compile_s": 31.5, "speedup": 1.5, "break_even_steps": 4701,
                                    "legs": {"never": {"first_steps_s": 3.0, "step_ms": 20.0, "precision": "bf16"},
                                             "always": {"first_steps_s": 34.5, "step_ms": 13.3, "precision": "bf16"}}},
                  "static_decode": {"goal": "g2", "goal_met": True, "rows": [
                      {"n_layer": 6, "n_embd": 256, "batch": 1, "dynamic_tok_s": 700.0, "static_tok_s": 650.0,
                       "compiled_tok_s": 2500.0, "compiled_vs_dynamic": 2500 / 700, "compile_s": 20.0}]}}}
    page = gc.markdown(report)
    assert "| always | 34.5 | 13.3 | bf16 |" in page and "compile time about 31.5 s" in page
    assert "pays after 4701 steps" in page
    assert "| 6x256 | 1 | 700 | 650 | 2,500 | 3.57x | 20.0 |" in page and "**met**" in page
