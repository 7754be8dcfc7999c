"""Training-step speed of each method on CPU: fp32 vs bf16 autocast, medians of N steps.

    make bench            (or: python benchmarks/train_step.py --steps 8)

Builds the real method from the Hydra config (no data loading: one fixed batch made by
the real transforms and collate), times forward + backward + optimizer step + EMA, and
writes the table between its markers in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import datetime
import statistics
import time
from pathlib import Path

import torch
from report import cpu_facts, write_section

from ssl_zoo.config import compose_config
from ssl_zoo.optim.run_plan import RunPlan
from ssl_zoo.train import build_all

ROOT = Path(__file__).resolve().parents[1]

BEGIN, END = "<!-- train_step:begin -->", "<!-- train_step:end -->"

CASES = [
    ("dino", "resnet10t", ["augmentation.transform.n_local=4"]),
    ("dino", "vit_tiny", ["augmentation.transform.n_local=4"]),
    ("dinov2", "vit_tiny", ["augmentation.transform.n_local=4"]),
    ("byol", "resnet10t", []),
    ("dino", "vit_small", ["data.image_size=96", "data.local_image_size=48", "augmentation.transform.n_local=2"]),
]


def time_steps(method: str, backbone: str, extra: list[str], precision: str, steps: int, batch: int) -> float:
    cfg = compose_config([
        f"method={method}", f"backbone={backbone}", "logger=csv", "callbacks.knn=null", "callbacks.progress=null",
        "callbacks.checkpoint=null", "data.num_workers=0", f"data.batch_size={batch}",
        "data.train_set.num_images=256", "data.knn_val_set.num_images=64", *extra,
    ], Path("/tmp/ssl_zoo_bench"))
    parts = build_all(cfg)
    module, datamodule = parts["method"], parts["datamodule"]
    datamodule.setup()
    batch_data = next(iter(datamodule.train_dataloader()))
    module.plan_run(RunPlan(total_steps=100, steps_per_data_epoch=10, global_batch_size=batch))
    optimizer = module.configure_optimizers()
    module.train()
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
            loss, _ = module.compute_loss(batch_data, step=10)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        module.update_teacher(10)
        if i >= 2:  # the first steps allocate and pick kernels
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    rows = []
    for method, backbone, extra in CASES:
        fp32 = time_steps(method, backbone, extra, "32-true", args.steps, args.batch)
        bf16 = time_steps(method, backbone, extra, "bf16-mixed", args.steps, args.batch)
        rows.append((method, backbone, " ".join(extra) or "-", fp32, bf16))
        print(f"{method:7s} {backbone:10s} fp32 {fp32:.3f}s  bf16 {bf16:.3f}s  ratio {fp32 / bf16:.2f}", flush=True)
    lines = [
        "## Training step (CPU, fp32 vs bf16 autocast)",
        "",
        f"`make bench` / `python benchmarks/train_step.py`: median of {args.steps} steps (forward, backward,",
        f"AdamW step, EMA update) at batch {args.batch} on {torch.get_num_threads()} threads, one fixed batch of",
        "32 px shapes unless noted; ratio = fp32 time / bf16 time, measured in the same run.",
        "",
        f"Measured {datetime.date.today()} on {cpu_facts()}, torch {torch.__version__}. Without",
        "AVX-512 BF16 or AMX the CPU has no bf16 arithmetic: oneDNN converts, and bf16 is",
        "slower than fp32 (so `trainer=cpu` trains in fp32). CPUs with those flags and GPUs",
        "(`trainer=gpu`, bf16-mixed) have bf16 in hardware; not measured here.",
        "",
        "| method | backbone | overrides | fp32 s/step | bf16 s/step | fp32 / bf16 |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {m} | {b} | `{e}` | {f:.3f} | {h:.3f} | {f / h:.2f} |" for m, b, e, f, h in rows]
    write_section(args.output, BEGIN, END, "\n".join(lines))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
