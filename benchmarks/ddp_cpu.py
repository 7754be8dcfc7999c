"""Images/s of 2 DDP processes (trainer=ddp_cpu, gloo) and 2 FSDP2 processes
(trainer=fsdp_cpu) against 1 process on the same cores and the same global batch, through
the real CLI.

    python benchmarks/ddp_cpu.py            (writes its section of docs/benchmarks.md)

Each figure is the run's median of the Throughput callback (images over all processes per
second between step ends, data loading included), from summary.json. The two setups
alternate, ``--repeats`` times each, so that the machine's load hits both alike. With 2
processes Lightning gives each one thread per core share (2 cores: 1 thread each).
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
from pathlib import Path

import torch
from report import cpu_facts, write_section

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- ddp_cpu:begin -->", "<!-- ddp_cpu:end -->"

COMMON = ["logger=csv", "callbacks.knn=null", "callbacks.curve=null", "callbacks.progress=null",
          "callbacks.checkpoint=null", "data.train_set.num_images=4096"]
SETUPS = {"1 process": ["trainer=cpu"], "2 processes (DDP, gloo)": ["trainer=ddp_cpu"],
          "2 processes (FSDP2, gloo)": ["trainer=fsdp_cpu"]}


def run(setup: list[str], global_batch: int, processes: int, steps: int, extra: list[str]) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        args = ["train", *setup, *COMMON, *extra, f"data.batch_size={global_batch // processes}",
                f"+data.global_batch_size={global_batch}", f"trainer.max_steps={steps}", f"hydra.run.dir={tmp}/run"]
        result = subprocess.run([sys.executable, "-m", "ssl_zoo.cli", *args], cwd=ROOT, capture_output=True, text=True,
                                env={**os.environ, "HYDRA_FULL_ERROR": "1", "SSL_ZOO_AUTO_PRECISION": "32-true"})
        if result.returncode:
            raise SystemExit(f"ssl-zoo {' '.join(args)} failed:\n{result.stderr[-3000:]}")
        return json.loads((Path(tmp) / "run" / "summary.json").read_text())["images_per_sec"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--global-batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("overrides", nargs="*", help="more overrides for both setups (e.g. method=byol)")
    args = parser.parse_args()
    load_before = os.getloadavg()[0]
    rates: dict[str, list[float]] = {name: [] for name in SETUPS}
    for _ in range(args.repeats):
        for name, setup in SETUPS.items():
            processes = 1 if setup == ["trainer=cpu"] else 2
            rates[name].append(run(setup, args.global_batch, processes, args.steps, args.overrides))
            print(f"{name}: {rates[name][-1]:.1f} images/s", flush=True)
    load_after = os.getloadavg()[0]
    uptime = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    single = statistics.median(rates["1 process"])
    lines = [
        "## DDP and FSDP2 on CPU: 2 processes against 1 (`python benchmarks/ddp_cpu.py`)",
        "",
        f"The default run (DINO, resnet10t, texels 32 px, 2 global + 2 local crops"
        f"{', ' + ' '.join(args.overrides) if args.overrides else ''}), global batch {args.global_batch} "
        f"({args.global_batch} x 1 process or {args.global_batch // 2} x 2), {args.steps} steps, fp32, data "
        f"workers as configured (2 per process); images/s = median of the Throughput callback over "
        f"the steps, {args.repeats} runs per setup alternating.",
        "",
        "| setup | images/s (runs) | median | vs 1 process |",
        "|---|---|---:|---:|",
        *[f"| {name} | {', '.join(f'{r:.1f}' for r in values)} | {statistics.median(values):.1f} | "
          f"{statistics.median(values) / single:.2f}x |" for name, values in rates.items()],
        "",
        f"Measured {datetime.date.today()} on {cpu_facts()}, torch {torch.__version__}; 1-min load average "
        f"{load_before:.1f} before and {load_after:.1f} after (`{uptime}`): the 2 cores are shared with other "
        "work, so the figures move between runs. DDP adds no cores here: it splits the same 2 between 2 "
        "processes (one intra-op thread each, set by Lightning) and adds a gradient all-reduce (gloo) per "
        "step; FSDP2 adds an all-gather per sharded unit in forward and backward and a reduce-scatter of the "
        "gradients. The single process runs 2 intra-op threads, which suffer most when other processes take the "
        "cores (an OpenMP thread that is descheduled stalls the others at every parallel region): on a loaded "
        "machine 2 single-threaded processes can be the faster setup; compare on an idle machine before "
        "concluding more.",
    ]
    write_section(args.output, BEGIN, END, "\n".join(lines))
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
