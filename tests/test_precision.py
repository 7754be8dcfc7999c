"""trainer.precision's default: the fastest on the hardware, measured once per machine on
CPUs; an explicit value is kept (ssl_zoo/parallel/precision.py)."""

from __future__ import annotations

import json

import pytest
import torch

from ssl_zoo.errors import ConfigError
from ssl_zoo.parallel import precision
from ssl_zoo.parallel.precision import PIN_ENV, auto_choice, check_precision, is_auto


@pytest.fixture
def unpinned(monkeypatch, tmp_path):
    """No pin (conftest pins 32-true for the other tests), a fresh cache and no choice made yet."""
    monkeypatch.delenv(PIN_ENV, raising=False)
    monkeypatch.setenv(precision.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setattr(precision, "_CHOICES", {})
    return tmp_path / "cache" / "precision.json"


def _cpu(monkeypatch, flags: set[str], measured: float | None = None) -> list[int]:
    """A CPU with these flags whose measurement gives ``measured``; returns the call count."""
    calls = []
    monkeypatch.setattr(precision, "cpu_model_and_flags", lambda: ("Test CPU 9000", flags))
    monkeypatch.setattr(precision, "cpu_has_bf16", lambda: True)

    def measure():
        calls.append(1)
        return {"fp32_ms": 10.0, "bf16_ms": 10.0 / measured, "speedup": measured, "date": "2026-12-01"}

    monkeypatch.setattr(precision, "measure_cpu_bf16", measure)
    return calls


def test_cpu_without_bf16_instructions_trains_in_fp32_without_measuring(unpinned, monkeypatch):
    calls = _cpu(monkeypatch, {"avx2", "avx512f", "avx512bw"}, measured=3.0)
    choice = auto_choice("cpu")
    assert choice.precision == "32-true" and "has no bf16 instructions" in choice.reason
    assert calls == [] and not unpinned.exists()


@pytest.mark.parametrize(("speedup", "expected"), [(2.4, "bf16-mixed"), (1.05, "32-true"), (0.62, "32-true")])
def test_cpu_with_bf16_is_decided_by_the_measurement_once_per_machine(unpinned, monkeypatch, speedup, expected):
    calls = _cpu(monkeypatch, {"avx512_bf16"}, measured=speedup)
    choice = auto_choice("cpu")
    assert choice.precision == expected
    assert f"bf16 autocast ran {speedup:.2f}x as fast as fp32" in choice.reason and str(unpinned) in choice.reason
    entries = json.loads(unpinned.read_text())
    (key,) = entries
    assert key.startswith("Test CPU 9000 | torch ") and torch.__version__ in key
    assert entries[key]["speedup"] == speedup
    # A later run (a fresh process: no in-memory choice) reads the cache instead of measuring.
    monkeypatch.setattr(precision, "_CHOICES", {})
    assert auto_choice("cpu").precision == expected and calls == [1]


def test_an_unreadable_cache_is_measured_again_and_rewritten(unpinned, monkeypatch):
    unpinned.parent.mkdir(parents=True)
    unpinned.write_text("{truncated")
    calls = _cpu(monkeypatch, {"amx_bf16"}, measured=2.0)
    assert auto_choice("cpu").precision == "bf16-mixed" and calls == [1]
    assert json.loads(unpinned.read_text())


def test_the_measurement_times_both_precisions_and_leaves_the_random_stream_alone(monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # quicker on a shared machine; the measurement is the same code
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    try:
        result = precision.measure_cpu_bf16(repeats=1)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(torch.rand(3), expected)
    assert result["fp32_ms"] > 0 and result["bf16_ms"] > 0
    assert result["speedup"] == pytest.approx(result["fp32_ms"] / result["bf16_ms"], rel=1e-2)


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16-mixed"), (False, "16-mixed")])
def test_gpus_get_bf16_where_they_have_it_else_fp16(unpinned, monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16 or including_emulation)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "Some GPU")
    assert auto_choice("gpu").precision == expected
    assert auto_choice("auto").precision == expected  # Lightning's accelerator=auto picks the GPU


def test_the_preset_default_resolves_and_an_explicit_value_is_kept(compose_cfg, monkeypatch):
    monkeypatch.setattr(precision, "_CHOICES", {})
    monkeypatch.setenv(PIN_ENV, "bf16")
    cfg = compose_cfg([])
    assert is_auto(cfg.trainer) and cfg.trainer.precision == "bf16-mixed"
    assert check_precision(cfg) == {"precision": "bf16-mixed", "source": "auto", "reason": f"pinned by {PIN_ENV}=bf16"}
    cfg = compose_cfg(["trainer.precision=32-true"])
    assert not is_auto(cfg.trainer)
    assert check_precision(cfg) == {"precision": "32-true", "source": "trainer.precision", "reason": "set explicitly"}
    # The literal "auto" (Lightning does not know it) is replaced by the choice.
    cfg = compose_cfg(["trainer.precision=auto"])
    assert check_precision(cfg)["precision"] == "bf16-mixed" and cfg.trainer.precision == "bf16-mixed"


def test_gpu_preset_defaults_to_the_gpu_choice(compose_cfg, monkeypatch, unpinned):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *_: "Tesla T4")
    cfg = compose_cfg(["trainer=gpu"])
    assert cfg.trainer.precision == "16-mixed"
    with pytest.raises(ConfigError, match=r"^trainer\.precision=bf16: Tesla T4 has no bf16"):
        check_precision(compose_cfg(["trainer=gpu", "trainer.precision=bf16"]))


def test_the_run_logs_its_precision_once_and_records_it_in_the_summary(tmp_path, capsys):
    from ssl_zoo.config import compose_config
    from ssl_zoo.train import train
    from tests.conftest import TINY_DATA

    run_dir = tmp_path / "run"
    cfg = compose_config([*TINY_DATA, "trainer.max_steps=1", "callbacks.knn=null", "callbacks.progress=null",
                          "callbacks.curve=null"], run_dir)
    summary = train(cfg, run_dir)
    line = f"precision: 32-true (auto: pinned by {PIN_ENV}=32-true)"
    assert capsys.readouterr().err.count(line) == 1
    assert summary["precision"] == {"precision": "32-true", "source": "auto", "reason": f"pinned by {PIN_ENV}=32-true",
                                    "fp32_fallback_step": None}
    assert json.loads((run_dir / "summary.json").read_text())["precision"]["precision"] == "32-true"
