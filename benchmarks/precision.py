"""fp32 against bf16 on this CPU: bare GEMMs, convolutions, and the probe that chooses
trainer.precision (ssl_zoo/parallel/precision.py), side by side.

    python benchmarks/precision.py            (writes its section of docs/benchmarks.md)

GEMMs and convolutions alone overstate what bf16 gains in training (no casts, no
backward, no elementwise work); the probe times forward + backward under autocast.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from report import cpu_facts, write_section
from train_step import time_steps

from ssl_zoo.parallel.precision import MIN_SPEEDUP, cpu_model_and_flags, measure_cpu_bf16

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- precision:begin -->", "<!-- precision:end -->"

# (m, k, n): the 2048^3, and the shapes of a small model at 32 px: a ViT-Ti MLP on
# 64 x 65 tokens, a DINO head's last layer (batch 128, bottleneck 256 -> 65536 prototypes).
GEMMS = [(2048, 2048, 2048), (4160, 192, 768), (4160, 768, 192), (128, 256, 65536)]
# (batch, channels in, size, channels out): 3x3 convolutions of a resnet10t on 32 px crops.
CONVS = [(64, 32, 16, 32), (64, 64, 8, 64), (64, 128, 4, 128)]


def _best(fn, repeats: int) -> float:
    fn(), fn()  # kernels chosen, memory allocated
    return min(_time(fn) for _ in range(repeats))


def _time(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def gemm_rows(repeats: int) -> list[tuple[str, float, float]]:
    rows = []
    for m, k, n in GEMMS:
        flops = 2 * m * k * n
        rates = []
        for dtype in (torch.float32, torch.bfloat16):
            a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
            rates.append(flops / _best(lambda a=a, b=b: a @ b, repeats) / 1e9)
        rows.append((f"GEMM {m}x{k} @ {k}x{n}", *rates))
    for batch, cin, size, cout in CONVS:
        flops = 2 * batch * cout * cin * 9 * size * size
        rates = []
        for dtype in (torch.float32, torch.bfloat16):
            x, w = torch.randn(batch, cin, size, size, dtype=dtype), torch.randn(cout, cin, 3, 3, dtype=dtype)
            rates.append(flops / _best(lambda x=x, w=w: F.conv2d(x, w, padding=1), repeats) / 1e9)
        rows.append((f"conv 3x3 {cin}->{cout}, {batch}x{size}x{size}", *rates))
    return rows


def policy_costs(steps: int) -> dict[str, float]:
    """Median bf16 step time of the default run (DINO, resnet10t, 32 px, batch 64) with the
    policies of docs/precision.md, and with each one turned off."""
    from ssl_zoo.models import backbones

    default = ("dino", "resnet10t", [])
    times = {"policies on": time_steps(*default, "bf16-mixed", steps, 64),
             "teacher in bf16 (method.fp32_teacher=false)":
                 time_steps("dino", "resnet10t", ["method.fp32_teacher=false"], "bf16-mixed", steps, 64)}
    guard = backbones.guard_small_input_convs
    backbones.guard_small_input_convs = lambda model: None  # the kernel's own (wrong) gradients
    try:
        times["small-input convolutions in bf16"] = time_steps(*default, "bf16-mixed", steps, 64)
    finally:
        backbones.guard_small_input_convs = guard
    times["fp32 (reference)"] = time_steps(*default, "32-true", steps, 64)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--probes", type=int, default=5, help="measurements of the probe (its median is reported)")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    rows = gemm_rows(args.repeats)
    for name, fp32, bf16 in rows:
        print(f"{name:40s} fp32 {fp32:7.1f}  bf16 {bf16:7.1f} GFLOP/s  ({bf16 / fp32:.2f}x)", flush=True)
    # The real thing the probe stands for: a DINO step (resnet10t, batch 64, 2 + 4 crops).
    step = {p: time_steps("dino", "resnet10t", ["augmentation.transform.n_local=4"], p, 4, 64)
            for p in ("32-true", "bf16-mixed")}
    print(f"dino resnet10t step: fp32 {step['32-true']:.3f}s bf16 {step['bf16-mixed']:.3f}s", flush=True)
    costs = policy_costs(max(args.repeats // 2, 4))
    for name, seconds in costs.items():
        print(f"default run step, {name}: {seconds:.3f}s", flush=True)
    probes = [measure_cpu_bf16() for _ in range(args.probes)]
    speedups = [p["speedup"] for p in probes]
    print("probe speedups:", speedups, flush=True)
    load_after = os.getloadavg()[0]
    _, flags = cpu_model_and_flags()
    isa = sorted(f for f in flags or () if f.startswith(("avx512", "amx", "avx_vnni")))
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    median = statistics.median(speedups)
    lines = [
        "## Precision on CPU: GEMMs vs a training step (`python benchmarks/precision.py`)",
        "",
        f"Measured {datetime.date.today()} on {cpu_facts()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}; AVX-512/AMX flags: {' '.join(isa) or 'none'}. 1-min load average "
        f"{load_before:.1f} before, {load_after:.1f} after (`{uptime}`): the machine is shared, each time is "
        f"the fastest of {args.repeats}.",
        "",
        "| kernel | fp32 GFLOP/s | bf16 GFLOP/s | bf16 / fp32 |",
        "|---|---:|---:|---:|",
        *[f"| {name} | {fp32:.1f} | {bf16:.1f} | {bf16 / fp32:.2f} |" for name, fp32, bf16 in rows],
        "",
        "The probe that sets the default `trainer.precision` (forward + backward of a resnet10t at "
        "batch 32 x 32 px and of one ViT-Ti block on 32 x 65 tokens, fp32 against bf16 autocast): "
        f"bf16 / fp32 speed {', '.join(f'{s:.2f}' for s in speedups)} in {args.probes} measurements "
        f"(median {median:.2f}; bf16-mixed is chosen from {MIN_SPEEDUP}x): this machine would train in "
        f"{'bf16-mixed' if median >= MIN_SPEEDUP else '32-true'}. A whole DINO step (resnet10t, batch 64, "
        f"2 global + 4 local crops; `benchmarks/train_step.py`, median of 4) in the same run: fp32 "
        f"{step['32-true']:.3f} s, bf16 {step['bf16-mixed']:.3f} s ({step['32-true'] / step['bf16-mixed']:.2f}x).",
        "",
        "What the bf16 policies of docs/precision.md cost: a step of the default run (DINO, resnet10t, texels "
        f"32 px, batch 64; median of {max(args.repeats // 2, 4)}) in bf16 with each policy turned off in turn:",
        "",
        "| bf16 step of the default run | seconds | vs policies on |",
        "|---|---:|---:|",
        *[f"| {name} | {seconds:.3f} | {seconds / costs['policies on']:.2f}x |" for name, seconds in costs.items()],
    ]
    write_section(args.output, BEGIN, END, "\n".join(lines))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
