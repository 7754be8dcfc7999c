"""`make train` in fp32 and in bf16 on this CPU: does bf16 learn as well, and how much faster?

    make bench-precision-quality          (or: python benchmarks/precision_quality.py --seeds 0 1)

Runs the default `ssl-zoo train` (DINO, resnet10t, texels, 250 steps) once per seed and
precision, alternating fp32 and bf16 so that the machine's load hits both alike, and
writes kNN top-1, training images/s and wall time to docs/benchmarks.md. bf16 runs through
the product's own policies (small-input convolutions and the DINO teacher in fp32,
docs/precision.md).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from report import cpu_facts, write_section

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- precision_quality:begin -->", "<!-- precision_quality:end -->"
PRECISIONS = ("32-true", "bf16-mixed")


def run(seed: int, precision: str, out: Path) -> dict:
    run_dir = out / f"seed{seed}_{precision}"
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "ssl_zoo.cli", "train", f"seed={seed}", f"trainer.precision={precision}",
         "logger=csv", f"hydra.run.dir={run_dir}"],
        cwd=ROOT, capture_output=True, text=True, env={**os.environ, "WANDB_SILENT": "true"},
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"seed={seed} trainer.precision={precision} failed:\n{proc.stderr[-3000:]}")
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"seed": seed, "precision": precision, "start": summary["knn_top1_start"], "end": summary["knn_top1_end"],
            "images_per_sec": summary["images_per_sec"], "wall": wall, "skipped": summary.get("skipped_steps", 0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    rows = []
    with tempfile.TemporaryDirectory(prefix="ssl_zoo_precision_quality_") as tmp:
        for seed in args.seeds:
            for precision in PRECISIONS:
                rows.append(run(seed, precision, Path(tmp)))
                r = rows[-1]
                print(f"seed {seed} {precision}: kNN {100 * r['start']:.2f}% -> {100 * r['end']:.2f}%, "
                      f"{r['images_per_sec']:.1f} images/s, {r['wall']:.0f} s, skipped steps {r['skipped']}", flush=True)
    load_after = os.getloadavg()[0]
    by = {(r["seed"], r["precision"]): r for r in rows}
    speedups = [by[(s, "bf16-mixed")]["images_per_sec"] / by[(s, "32-true")]["images_per_sec"] for s in args.seeds]
    walls = [by[(s, "32-true")]["wall"] / by[(s, "bf16-mixed")]["wall"] for s in args.seeds]
    gaps = [100 * (by[(s, "bf16-mixed")]["end"] - by[(s, "32-true")]["end"]) for s in args.seeds]
    lines = [
        "## `make train` in bf16 against fp32 (`python benchmarks/precision_quality.py`)",
        "",
        f"Measured {datetime.date.today()} on {cpu_facts()}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}; 1-min load average {load_before:.1f} before, {load_after:.1f} after. The default "
        "run (DINO, resnet10t, texels 32 px, 250 steps of 64 images), fp32 and bf16 alternating.",
        "",
        "| seed | precision | kNN top-1 start | kNN top-1 end | training images/s | wall | skipped steps |",
        "|---|---|---:|---:|---:|---:|---:|",
        *[f"| {r['seed']} | {r['precision']} | {100 * r['start']:.2f}% | {100 * r['end']:.2f}% | "
          f"{r['images_per_sec']:.1f} | {r['wall']:.0f} s | {r['skipped']} |" for r in rows],
        "",
        f"bf16 / fp32: training images/s {', '.join(f'{s:.2f}x' for s in speedups)} (median "
        f"{statistics.median(speedups):.2f}x), whole command {', '.join(f'{w:.2f}x' for w in walls)}; "
        f"final kNN bf16 - fp32: {', '.join(f'{g:+.2f}' for g in gaps)} points.",
    ]
    write_section(args.output, BEGIN, END, "\n".join(lines))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
