"""The first run on a CUDA machine: does every method train on the GPUs, and how fast?

    make gpu-check                       (or: python benchmarks/gpu_check.py [--steps 50])

Runs ``ssl-zoo train`` as a user would, one process tree per case:
- BYOL, DINO and DINOv2 for ``--steps`` optimizer steps each with ``trainer=gpu``
  (bf16-mixed where the GPU has bf16, else 16-mixed with a loss scaler: the automatic
  choice, ssl_zoo/parallel/precision.py), on every visible GPU (DDP);
- DINOv2 with ViT-S under ``trainer=fsdp`` (FSDP2, bf16 parameters) on every visible GPU.

and writes ``gpu_check.json`` (``--out``): per case images/s, peak GPU memory, skipped
and fp16-overflow steps, the final loss and the precision in use, plus the GPU names and
the fast-path facts the issue asks a first GPU run to record (fused SDPA backends, TF32,
bf16 support). It is a tool, not a test: nothing fails on a slow number. Without CUDA it
says so in one line and exits 0 (``--cpu-smoke`` runs the same matrix on CPU presets with
a few steps, to check the tool itself).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import torch

ROOT = Path(__file__).resolve().parents[1]


class GpuStats(L.Callback):
    """Added to each run (``+callbacks.gpu_stats``): peak memory and the final loss, written
    as ``gpu_stats.json`` in the run directory by rank 0."""

    def __init__(self, out: str) -> None:
        self.out = Path(out)

    def on_train_start(self, trainer, pl_module) -> None:
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()

    def on_train_end(self, trainer, pl_module) -> None:
        loss = pl_module.last_loss
        stats = {
            "final_loss": None if loss is None else float(loss),
            "peak_gpu_memory_gb": round(torch.cuda.max_memory_allocated() / 1e9, 3) if torch.cuda.is_available() else None,
            "precision": str(trainer.precision),
            "world_size": trainer.world_size,
        }
        if trainer.is_global_zero:
            self.out.write_text(json.dumps(stats, indent=2) + "\n")


def cases(steps: int, cpu: bool) -> dict[str, list[str]]:
    ddp, fsdp = ("trainer=cpu", "trainer=fsdp_cpu") if cpu else ("trainer=gpu", "trainer=fsdp")
    common = [f"trainer.max_steps={steps}", "logger=csv", "callbacks.knn.every_n_steps=0"]
    if cpu:  # the tool's own check: tiny data, so that the matrix runs in a minute or two
        common += ["data.train_set.num_images=256", "data.knn_val_set.num_images=64", "data.batch_size=16",
                   "data.num_workers=0"]
    vit_s = ["backbone=vit_small", "data.image_size=64", "data.local_image_size=32"]
    return {
        "byol": ["method=byol", ddp, *common],
        "dino": ["method=dino", ddp, *common],
        "dinov2": ["method=dinov2", ddp, *common],
        "dinov2_vit_small_fsdp": ["method=dinov2", *vit_s, fsdp, *common],
    }


def fast_path_facts() -> dict[str, object]:
    if not torch.cuda.is_available():
        return {}
    backends = torch.backends.cuda
    return {
        "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "bf16": torch.cuda.is_bf16_supported(including_emulation=False),
        "flash_sdpa": backends.flash_sdp_enabled(),
        "mem_efficient_sdpa": backends.mem_efficient_sdp_enabled(),
        "tf32_matmul": backends.matmul.allow_tf32,
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
    }


def run_case(name: str, overrides: list[str], out_dir: Path) -> dict[str, object]:
    run_dir = out_dir / name
    stats_file = run_dir / "gpu_stats.json"
    args = [sys.executable, "-m", "ssl_zoo.cli", "train", *overrides, f"hydra.run.dir={run_dir}",
            "+callbacks.gpu_stats._target_=gpu_check.GpuStats", f"+callbacks.gpu_stats.out={stats_file}"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "benchmarks"), os.environ.get("PYTHONPATH", "")]),
           "WANDB_SILENT": "true"}
    print(f"gpu-check: {name}: {' '.join(overrides)}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    result: dict[str, object] = {"overrides": overrides, "exit_code": proc.returncode,
                                 "wall_sec": round(time.perf_counter() - start, 1)}
    if proc.returncode != 0:
        result["error"] = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        print(f"gpu-check: {name} FAILED (exit {proc.returncode}): {result['error'][-1] if result['error'] else ''}")
        return result
    summary = json.loads((run_dir / "summary.json").read_text())
    result.update(json.loads(stats_file.read_text()) if stats_file.exists() else {})
    result.update({"images_per_sec": summary["images_per_sec"], "skipped_steps": summary.get("skipped_steps"),
                   "overflow_steps": summary.get("overflow_steps"), "steps": summary["steps"],
                   "precision_choice": summary["precision"]})
    print(f"gpu-check: {name}: {result['images_per_sec'] or 0:.1f} images/s, peak "
          f"{result.get('peak_gpu_memory_gb')} GB, skipped {result['skipped_steps']}, final loss "
          f"{result.get('final_loss')}", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "gpu_check")
    parser.add_argument("--cpu-smoke", action="store_true", help="the same matrix on CPU presets (checks the tool)")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.cpu_smoke:
        print("gpu-check: no CUDA device on this machine (torch.cuda.is_available() is False): nothing to check")
        return 0
    steps = 3 if args.cpu_smoke and args.steps == 50 else args.steps
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"facts": fast_path_facts(), "steps": steps, "cases": {}}
    for name, overrides in cases(steps, cpu=args.cpu_smoke).items():
        report["cases"][name] = run_case(name, overrides, args.out)
    path = args.out / "gpu_check.json"
    path.write_text(json.dumps(report, indent=2) + "\n")
    failed = [n for n, r in report["cases"].items() if r["exit_code"] != 0]
    print(f"gpu-check: wrote {path}" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
