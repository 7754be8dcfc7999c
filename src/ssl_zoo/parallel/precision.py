"""``trainer.precision``: the fastest one the hardware has, unless the user chose one.

The trainer presets default to ``${fastest_precision:${.accelerator}}``, resolved here:

- GPUs: ``bf16-mixed`` where the GPU has bf16 arithmetic (Ampere and newer), else
  ``16-mixed`` (fp16 autocast with a loss scaler).
- CPUs: ``32-true`` unless bf16 really is faster. A CPU without bf16 instructions
  (``avx512_bf16`` / ``amx_bf16``) emulates it, always slower: fp32 without measuring. With
  them it depends on the CPU and the layers (on an AMD EPYC with avx512_bf16 the bf16 GEMMs
  run 2.4x faster than fp32 but a DINO step on resnet10t only 1.26x, while another CPU
  with the same flag ran bf16 GEMMs at half the fp32 speed; docs/benchmarks.md). So a
  short measurement decides: forward + backward of a small resnet10t and of one ViT block,
  fp32 against bf16 autocast (about a second on an idle machine), cached per machine in ``~/.cache/ssl_zoo/precision.json`` (keyed by CPU
  model, torch version and thread count) so that later runs and the other processes of a
  run read it instead.

``SSL_ZOO_AUTO_PRECISION=<value>`` pins what the default resolves to without measuring
(the test suite pins 32-true so that its numerics do not depend on the CI machine's CPU).
An explicit ``trainer.precision`` is never replaced; :func:`check_precision` refuses one
the hardware cannot run, before anything is built.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ssl_zoo.errors import ConfigError

log = logging.getLogger("ssl_zoo")

PIN_ENV = "SSL_ZOO_AUTO_PRECISION"
CACHE_ENV = "SSL_ZOO_CACHE_DIR"
RESOLVER = "fastest_precision"
# bf16 must win by a margin: a close call flips with the machine's load between measurements
# (and two processes measuring at once must not choose differently).
MIN_SPEEDUP = 1.2
BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86; "bf16": Arm (ARMv8.6 Features)
ALIASES = {"16": "16-mixed", "bf16": "bf16-mixed", "32": "32-true", "64": "64-true"}


@dataclass(frozen=True)
class Choice:
    precision: str
    reason: str


_CHOICES: dict[str, Choice] = {}  # per accelerator: the resolver runs on every access


def fastest_precision(accelerator: Any = "auto") -> str:
    """The OmegaConf resolver behind the presets' default ``trainer.precision``."""
    return auto_choice(str(accelerator)).precision


def auto_choice(accelerator: str) -> Choice:
    if accelerator not in _CHOICES:
        pinned = os.environ.get(PIN_ENV)
        kind = _device_kind(accelerator)
        if pinned:
            choice = Choice(ALIASES.get(pinned, pinned), f"pinned by {PIN_ENV}={pinned}")
        elif kind == "gpu":
            choice = _gpu_choice()
        elif kind == "cpu":
            choice = _cpu_choice()
        else:
            choice = Choice("32-true", f"no automatic choice for trainer.accelerator={accelerator}")
        _CHOICES[accelerator] = choice
    return _CHOICES[accelerator]


def _device_kind(accelerator: str) -> str:
    if accelerator in ("gpu", "cuda"):
        return "gpu"
    if accelerator == "auto":
        return "gpu" if torch.cuda.is_available() else "cpu"
    return accelerator


def _gpu_choice() -> Choice:
    if not torch.cuda.is_available():
        # Composed where no GPU is visible (a login node); the job resolves again on its node.
        return Choice("bf16-mixed", "the GPU default (no GPU visible here to check)")
    name = torch.cuda.get_device_name()
    if torch.cuda.is_bf16_supported(including_emulation=False):
        return Choice("bf16-mixed", f"{name} has bf16 arithmetic")
    return Choice("16-mixed", f"{name} has no bf16 arithmetic (before Ampere): fp16 autocast with a loss scaler")


# --- CPUs -------------------------------------------------------------------------------


def cpu_model_and_flags() -> tuple[str, set[str] | None]:
    """The CPU's model name and flags from /proc/cpuinfo (flags None where unknown)."""
    import platform

    model, flags = platform.processor() or platform.machine() or "unknown CPU", None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() in ("flags", "Features") and flags is None:
                flags = set(value.split())
    except OSError:
        pass
    return model, flags


def cpu_has_bf16() -> bool:
    """Whether oneDNN can run bf16 kernels on this CPU at all (natively or on AVX-512)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _cpu_choice() -> Choice:
    model, flags = cpu_model_and_flags()
    native = None if flags is None else [f for f in BF16_FLAGS if f in flags]
    if not cpu_has_bf16() or native == []:
        return Choice("32-true", f"{model} has no bf16 instructions ({'/'.join(BF16_FLAGS)}): "
                                 "bf16 would be emulated, slower than fp32")
    measured, path = cached_measurement(model)
    speedup = measured["speedup"]
    where = f"cached in {path}" if path else "not cached"
    verdict = "bf16-mixed" if speedup >= MIN_SPEEDUP else "32-true"
    return Choice(verdict, f"{model}: forward + backward under bf16 autocast ran {speedup:.2f}x as fast as fp32 "
                           f"(measured {measured['date']}, {where}; bf16 needs >= {MIN_SPEEDUP}x)")


def cache_path() -> Path:
    root = os.environ.get(CACHE_ENV)
    if root:
        return Path(root).expanduser() / "precision.json"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "ssl_zoo" / "precision.json"


def cache_key(model: str) -> str:
    # The thread count changes what wins (bf16 kernels scale differently), so it is part of the key.
    return f"{model} | torch {torch.__version__} | {torch.get_num_threads()} threads"


def cached_measurement(model: str) -> tuple[dict[str, Any], Path | None]:
    """This machine's measurement: from the cache, else measured now and stored (under a
    lock, so that the processes of a run starting together measure once)."""
    path, key = cache_path(), cache_key(model)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _locked(path.with_suffix(".lock")):
            entries = _read(path)
            if key not in entries:
                if _is_rank_zero():
                    print(f"precision: timing fp32 against bf16 on this CPU, once (cached in {path})",
                          file=sys.stderr, flush=True)
                entries[key] = measure_cpu_bf16()
                tmp = path.with_suffix(f".tmp{os.getpid()}")
                tmp.write_text(json.dumps(entries, indent=2, sort_keys=True) + "\n")
                os.replace(tmp, path)
            return entries[key], path
    except OSError as err:  # a read-only home: measure every time rather than fail
        log.info("precision cache %s not writable (%s): measuring without caching", path, err)
        return measure_cpu_bf16(), None


def _read(path: Path) -> dict[str, Any]:
    try:
        entries = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


@contextlib.contextmanager
def _locked(path: Path):
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock (two processes may both measure)
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def measure_cpu_bf16(repeats: int = 3) -> dict[str, Any]:
    """fp32 vs bf16 autocast for forward + backward of a resnet10t (batch 32, 32 px) and of
    one ViT-Ti block (32 x 65 tokens): what a training step does, including the casts and
    the convolution backward that a bare GEMM benchmark misses. Each time is the fastest of
    ``repeats`` interleaved ones: other processes on the machine only ever add time."""
    import timm
    from timm.models.vision_transformer import Block

    # Building the probes draws random weights: keep the run's random streams untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        probes = [(timm.create_model("resnet10t", num_classes=0), torch.randn(32, 3, 32, 32)),
                  (Block(192, 3), torch.randn(32, 65, 192))]

        def step(model: torch.nn.Module, inputs: torch.Tensor, bf16: bool) -> float:
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model(inputs).float().square().mean()
            loss.backward()
            return time.perf_counter() - start

        totals = {False: 0.0, True: 0.0}
        for model, inputs in probes:
            step(model, inputs, False), step(model, inputs, True)  # the first calls pick kernels
            times: dict[bool, list[float]] = {False: [], True: []}
            for _ in range(repeats):
                for bf16 in (False, True):
                    times[bf16].append(step(model, inputs, bf16))
            for bf16 in (False, True):
                totals[bf16] += min(times[bf16])
    return {"fp32_ms": round(1e3 * totals[False], 2), "bf16_ms": round(1e3 * totals[True], 2),
            "speedup": round(totals[False] / totals[True], 3), "date": datetime.date.today().isoformat()}


# --- the run's precision ----------------------------------------------------------------


def is_auto(trainer: DictConfig) -> bool:
    """Whether trainer.precision is the presets' default (or the literal "auto")."""
    if OmegaConf.is_interpolation(trainer, "precision"):
        return RESOLVER in str(trainer._get_node("precision")._value())
    return str(trainer.get("precision")) == "auto"


def check_precision(cfg: DictConfig) -> dict[str, str]:
    """Resolve and check ``trainer.precision`` before anything is built; log the choice
    (one line) and return it for summary.json. ConfigError for a value the hardware
    cannot run."""
    trainer = cfg.trainer
    accelerator = str(trainer.get("accelerator", "auto"))
    if is_auto(trainer):
        choice = auto_choice(accelerator)
        if str(trainer.precision) == "auto":
            trainer.precision = choice.precision  # Lightning does not know "auto"
        info = {"precision": choice.precision, "source": "auto", "reason": choice.reason}
    else:
        value = trainer.get("precision")
        check_supported(value, accelerator)
        info = {"precision": str(value), "source": "trainer.precision", "reason": "set explicitly"}
    line = f"precision: {info['precision']} ({info['source']}: {info['reason']})"
    log.info(line)
    if _is_rank_zero():
        print(line, file=sys.stderr, flush=True)
    return info


def check_supported(value: Any, accelerator: str) -> None:
    """ConfigError if this hardware cannot run trainer.precision=value (names Lightning does
    not know are left to Lightning, whose message lists the valid ones)."""
    precision = ALIASES.get(str(value), str(value))
    fix = "or remove the override to let ssl_zoo choose"
    if precision == "64-true":
        raise ConfigError(
            "trainer.precision=64-true: float64 training is not supported (the data, losses and callbacks "
            f"produce float32 tensors; the first step would fail): use 32-true or bf16-mixed, {fix}"
        )
    kind = _device_kind(accelerator)
    if kind == "cpu":
        if precision == "16-mixed":
            raise ConfigError(
                "trainer.precision=16-mixed: fp16 autocast does not run on CPUs (Lightning would switch to "
                f"bf16-mixed silently): use trainer.precision=bf16-mixed or 32-true, {fix}"
            )
        if precision == "16-true" and not _cpu_has_fp16():
            raise ConfigError(
                "trainer.precision=16-true: this CPU has no fp16 arithmetic (no avx512_fp16/amx_fp16): use "
                f"trainer.precision=32-true, {fix}"
            )
        if precision.startswith("bf16") and not cpu_has_bf16():
            model, _ = cpu_model_and_flags()
            raise ConfigError(
                f"trainer.precision={value}: this CPU ({model}) has no bf16 support (oneDNN needs at least "
                f"AVX-512): use trainer.precision=32-true, {fix}"
            )
    elif kind == "gpu" and torch.cuda.is_available() and precision.startswith("bf16"):
        if not torch.cuda.is_bf16_supported(including_emulation=False):
            raise ConfigError(
                f"trainer.precision={value}: {torch.cuda.get_device_name()} has no bf16 arithmetic (before "
                f"Ampere): use trainer.precision=16-mixed, {fix}"
            )


def _is_rank_zero() -> bool:
    # Before the process group exists: torchrun and Lightning's launcher set these.
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0")) or 0) == 0


def _cpu_has_fp16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):
        return False
