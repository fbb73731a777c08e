"""Each branch of device selection, with CUDA / torch_xla / MPS faked where this machine lacks them."""
import json
import sys
import types

import numpy as np
import pytest
import torch

from course_utils import device as dev


@pytest.fixture
def no_accelerators(monkeypatch):
    monkeypatch.delenv("COURSE_DEVICE", raising=False)
    monkeypatch.delenv("COURSE_PRECISION", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(dev, "_xla_available", lambda: False)
    monkeypatch.setattr(dev, "_mps_available", lambda: False)
    monkeypatch.setattr(dev, "cpu_bf16_isa", lambda: None)  # a CPU without bf16 units, unless a test says


def test_cpu_when_nothing_else(no_accelerators):
    assert dev.get_device() == torch.device("cpu")
    assert dev.autocast_dtype(torch.device("cpu")) is None


def test_cuda_preferred(no_accelerators, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert dev.get_device().type == "cuda"


def test_xla_uses_torch_xla_device(no_accelerators, monkeypatch):
    fake = types.ModuleType("torch_xla")
    calls = []
    fake.device = lambda: calls.append(1) or torch.device("cpu")  # the current API, not xm.xla_device
    monkeypatch.setitem(sys.modules, "torch_xla", fake)
    monkeypatch.setattr(dev, "_xla_available", lambda: True)
    dev.get_device()
    assert calls == [1]
    dev.get_device("xla")
    assert calls == [1, 1]
    assert dev.autocast_dtype(torch.device("cpu")) is None


def test_mps(no_accelerators, monkeypatch):
    monkeypatch.setattr(dev, "_mps_available", lambda: True)
    assert dev.get_device().type == "mps"
    assert dev.autocast_dtype(torch.device("mps")) == torch.float16


def test_override_and_errors(no_accelerators, monkeypatch):
    assert dev.get_device("cpu").type == "cpu"
    monkeypatch.setenv("COURSE_DEVICE", "cpu")
    assert dev.get_device().type == "cpu"
    with pytest.raises(RuntimeError, match="cuda"):
        dev.get_device("cuda")
    with pytest.raises(RuntimeError, match="torch_xla"):
        dev.get_device("xla")
    with pytest.raises(ValueError, match="expected one of"):
        dev.get_device("tpu")


def test_autocast_dtype_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert dev.autocast_dtype(torch.device("cuda")) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert dev.autocast_dtype(torch.device("cuda")) == torch.float16
    assert dev.autocast_dtype(torch.device("xla")) == torch.bfloat16


def test_autocast_is_noop_on_cpu(no_accelerators):
    with dev.autocast(torch.device("cpu")):
        y = torch.ones(2, 2) @ torch.ones(2, 2)
    assert y.dtype == torch.float32


def test_seed_everything_reproduces():
    dev.seed_everything(7)
    a = (torch.rand(3), np.random.rand(3))
    dev.seed_everything(7)
    b = (torch.rand(3), np.random.rand(3))
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    with pytest.raises(ValueError):
        dev.seed_everything(-1)


# ------------------------------------------------------------------ issue 27: CPU precision by evidence
CPU = torch.device("cpu")


def _probe(fp32: float, bf16: float, width: int = 256) -> "dev.PrecisionProbe":
    return dev.PrecisionProbe(fp32_gflops=fp32, bf16_gflops=bf16, tokens=768, width=width, threads=2, cpu="test cpu",
                              torch=torch.__version__, kind="train step")


@pytest.fixture
def fresh_probe(monkeypatch, tmp_path):
    """No cached probe in memory, a private data dir for the probe file, no precision override."""
    monkeypatch.setenv("COURSE_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("COURSE_PRECISION", raising=False)
    monkeypatch.setattr(dev, "_PROBE_CACHE", {})
    return tmp_path


def test_cpu_with_native_bf16_and_a_faster_probe_picks_bf16(fresh_probe, monkeypatch):
    monkeypatch.setattr(dev, "cpu_bf16_isa", lambda: "avx512_bf16")
    monkeypatch.setattr(dev, "cached_cpu_probe", lambda refresh=False, width=None: _probe(190.0, 780.0))
    choice = dev.choose_precision(CPU)
    assert choice.dtype == torch.bfloat16 and choice.name == "bf16"
    assert str(choice) == "bf16 autocast (avx512_bf16, probe 4.11× fp32 at width 256)"
    assert dev.autocast_dtype(CPU) == torch.bfloat16
    with dev.autocast(CPU):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_cpu_with_bf16_units_but_a_slow_probe_picks_fp32(fresh_probe, monkeypatch):
    # where bf16 does not pay (small matrices on some CPUs) the probe says so and auto keeps fp32
    monkeypatch.setattr(dev, "cpu_bf16_isa", lambda: "avx512_bf16")
    monkeypatch.setattr(dev, "cached_cpu_probe", lambda refresh=False, width=None: _probe(190.0, 200.0))
    choice = dev.choose_precision(CPU)
    assert choice.dtype is None and choice.name == "fp32"
    assert str(choice) == f"fp32 (avx512_bf16, but probe 1.05× fp32 at width 256 (< {dev.MIN_CPU_BF16_SPEEDUP}× needed))"


def test_cpu_without_bf16_units_picks_fp32_without_probing(fresh_probe, monkeypatch):
    monkeypatch.setattr(dev, "cpu_bf16_isa", lambda: None)

    def never(refresh=False, width=None):
        raise AssertionError("no bf16 instructions: there is nothing to probe")

    monkeypatch.setattr(dev, "cached_cpu_probe", never)
    assert str(dev.choose_precision(CPU)) == "fp32 (no native bf16 on this CPU)"


def test_precision_can_be_forced_by_argument_or_environment(fresh_probe, monkeypatch):
    monkeypatch.setattr(dev, "cpu_bf16_isa", lambda: "avx512_bf16")
    monkeypatch.setattr(dev, "cached_cpu_probe", lambda refresh=False, width=None: _probe(190.0, 780.0))
    assert str(dev.choose_precision(CPU, "fp32")) == "fp32 (forced by the mode argument)"
    monkeypatch.setenv("COURSE_PRECISION", "FP32")
    assert dev.autocast_dtype(CPU) is None
    assert dev.describe_precision(CPU) == "fp32 (forced by $COURSE_PRECISION)"
    assert dev.autocast_dtype(CPU, "auto") == torch.bfloat16  # the argument wins over the variable
    monkeypatch.setattr(dev, "cpu_bf16_isa", lambda: None)
    monkeypatch.setenv("COURSE_PRECISION", "bf16")  # emulated bf16 on such a CPU: slow, but asked for
    assert dev.choose_precision(CPU).dtype == torch.bfloat16
    # a GPU keeps its own rule unless forced; a T4 has no bf16 to force
    monkeypatch.delenv("COURSE_PRECISION")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert dev.choose_precision(torch.device("cuda")).dtype == torch.float16
    assert dev.choose_precision(torch.device("cuda"), "fp32").dtype is None
    with pytest.raises(ValueError, match="no bf16"):
        dev.choose_precision(torch.device("cuda"), "bf16")


@pytest.mark.parametrize("bad", ["fp16", "half", "", "bf 16"])
def test_bad_precision_mode_names_the_setting(fresh_probe, monkeypatch, bad):
    with pytest.raises(ValueError, match="mode must be one of auto, fp32, bf16"):
        dev.choose_precision(CPU, bad)
    if bad:
        monkeypatch.setenv("COURSE_PRECISION", bad)
        with pytest.raises(ValueError, match=r"\$COURSE_PRECISION must be one of"):
            dev.choose_precision(CPU)
    with pytest.raises(TypeError, match="string"):
        dev.precision_mode(16)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="torch.device"):
        dev.choose_precision("cpu")  # type: ignore[arg-type]


def test_cpu_bf16_isa_reads_torch_checks_then_cpu_flags(monkeypatch):
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True, raising=False)
    assert dev.cpu_bf16_isa() == "avx512_bf16"
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False, raising=False)
    monkeypatch.setattr(dev.platform, "system", lambda: "Linux")
    monkeypatch.setattr(dev, "_cpuinfo_flags", lambda: {"fp", "asimd", "bf16"})  # an Arm server
    assert dev.cpu_bf16_isa() == "bf16"
    monkeypatch.setattr(dev, "_cpuinfo_flags", lambda: {"sse4_2", "avx2", "fma"})  # older x86
    assert dev.cpu_bf16_isa() is None


def test_probe_measures_both_precisions_and_checks_arguments():
    probe = dev.probe_cpu_matmul(tokens=64, width=32, rounds=2, repeat=1)
    assert probe.fp32_gflops > 0 and probe.bf16_gflops > 0
    assert probe.speedup == pytest.approx(probe.bf16_gflops / probe.fp32_gflops)
    assert (probe.tokens, probe.width, probe.threads) == (64, 32, torch.get_num_threads())
    with pytest.raises(ValueError, match="width must be a positive int"):
        dev.probe_cpu_matmul(width=0)


def test_probe_is_measured_once_and_remembered_on_disk(fresh_probe, monkeypatch):
    calls = []
    monkeypatch.setattr(dev, "probe_cpu_train_step", lambda width: calls.append(1) or _probe(100.0, 250.0, width))
    first = dev.cached_cpu_probe()
    assert dev.cached_cpu_probe() is first and calls == [1]       # in memory for this process
    saved = fresh_probe / "cache" / dev.PROBE_FILE
    assert saved.is_file()
    monkeypatch.setattr(dev, "_PROBE_CACHE", {})                  # a new process on the same machine
    again = dev.cached_cpu_probe()
    assert again == first and calls == [1]                        # read back, not timed again
    dev.cached_cpu_probe(refresh=True)
    assert calls == [1, 1]
    saved.write_text("{not json")                                 # a damaged file is measured over
    monkeypatch.setattr(dev, "_PROBE_CACHE", {})
    assert dev.cached_cpu_probe() == first and calls == [1, 1, 1]


def test_the_choice_follows_the_width_of_the_model(fresh_probe, monkeypatch):
    # measured on this project's CPU: a training step at width 32 is ~0.6x as fast in bf16, at 256 ~1.4x
    monkeypatch.setattr(dev, "cpu_bf16_isa", lambda: "avx512_bf16")
    asked = []
    speed = {32: 0.6, 128: 1.05, 256: 1.4}
    monkeypatch.setattr(dev, "probe_cpu_train_step",
                        lambda width: asked.append(width) or _probe(100.0, 100.0 * speed[width], width))
    assert dev.choose_precision(CPU, width=32).dtype is None
    assert "probe 0.60× fp32 at width 32" in str(dev.choose_precision(CPU, width=32))
    assert dev.autocast_dtype(CPU, width=128) is None
    assert dev.autocast_dtype(CPU, width=256) == torch.bfloat16
    assert dev.choose_precision(CPU).probe.width == dev.DEFAULT_PROBE_WIDTH  # no width: a laptop-sized model
    assert asked == [32, 128, 256]                                          # each width timed once
    saved = json.loads((fresh_probe / "cache" / dev.PROBE_FILE).read_text())
    assert sorted(v["width"] for v in saved.values()) == [32, 128, 256]
    with dev.autocast(CPU, width=32):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    with pytest.raises(ValueError, match="width must be a positive int"):
        dev.choose_precision(CPU, width=0)


def test_train_step_probe_times_both_precisions_and_leaves_the_rng_alone():
    before = torch.random.get_rng_state()
    probe = dev.probe_cpu_train_step(width=32, tokens=128, rounds=1, steps=1)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert probe.kind == "train step" and probe.fp32_gflops > 0 and probe.bf16_gflops > 0
    assert (probe.tokens, probe.width, probe.threads) == (128, 32, torch.get_num_threads())
    assert probe.describe().startswith("train step 128 tokens x width 32")
    with pytest.raises(ValueError, match="multiple of the block size 64"):
        dev.probe_cpu_train_step(width=32, tokens=100)
    with pytest.raises(ValueError, match="n_layer must be a positive int"):
        dev.probe_cpu_train_step(n_layer=0)


def test_model_width_reads_the_config():
    from course_utils.models.gpt import GPT, GPTConfig

    gpt = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=48))
    assert dev.model_width(gpt) == 48
    hf_like = torch.nn.Linear(2, 2)
    hf_like.config = type("Config", (), {"hidden_size": 576})()
    assert dev.model_width(hf_like) == 576
    assert dev.model_width(torch.nn.Linear(2, 2)) is None
