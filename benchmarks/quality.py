"""Does training learn? kNN curves of real runs, written into the docs.

    make bench-quality ARGS="--suite default-data"   # docs/default_data.md (~30 min)
    make bench-quality ARGS="--suite cifar10"        # docs/benchmarks.md (~20 min)
    make bench-quality ARGS="--suite cifar10-long"   # docs/benchmarks.md (~30 min per method)

default-data: each procedural generator (the candidates for the embedded default) under
the same budget as `make train` (8,000 train / 2,000 val images, 2 epochs of 64): the
kNN on raw pixels, at random init (BatchNorm recalibrated), after a supervised run of the
same budget (the ceiling) and after each method on its defaults.

cifar10: the experiment=cifar10_* presets (3 epochs, lightly's benchmark budget) on
../shared/datasets/cifar10 with the k=200, T=0.1 protocol (20,000 train images as the
bank, 10,000 val queries); cifar10-long: the experiment=cifar10_long_* presets (~30 min
each on a 2-core CPU), same protocol.

Every run goes through the real config composition and Lightning loop (``train``); its
curve is kept (summary.json, learning_curve.png) under outputs/quality/.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import resource
import threading
import time
from pathlib import Path

from report import cpu_facts, write_section

from ssl_zoo.config import compose_config
from ssl_zoo.train import train

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["~logger", "callbacks.progress=null", "callbacks.checkpoint=null"]

GENERATORS = {  # data config -> what the class is
    "shapes": "one large shape (the old default)",
    "texels": "many small copies of one shape (the default)",
    "patterns": "a texture family (stripes, dots, bricks, ...)",
    "fractals": "one iterated-function system (FractalDB-like)",
}
METHODS = ["supervised", "dino", "byol", "dinov2"]


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and its reaped children (data workers)."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


class LoadSampler(threading.Thread):
    """The 1-minute load average every 30 s while a run trains (the machine is shared)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.samples: list[float] = [os.getloadavg()[0]]
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(30):
            self.samples.append(os.getloadavg()[0])


def run(tag: str, overrides: list[str], out: Path) -> dict | None:
    """The run's summary with wall, CPU and load; None when it was preempted (a signal
    stopped it part-way: its numbers are not the preset's and are not stored)."""
    run_dir = out / tag
    run_dir.mkdir(parents=True, exist_ok=True)
    load = LoadSampler()
    load.start()
    started, cpu_started = time.perf_counter(), cpu_seconds()
    summary = train(compose_config([*QUIET, *overrides], run_dir), run_dir)
    summary["wall"] = time.perf_counter() - started
    summary["cpu_seconds"] = cpu_seconds() - cpu_started
    load.stop.set()
    if summary.get("preempted_at_step") is not None:
        print(f"{tag}: preempted at step {summary['preempted_at_step']}: not stored "
              f"(its checkpoint: {summary['checkpoint']})", flush=True)
        return None
    summary["load_mean"] = sum(load.samples) / len(load.samples)
    summary["load_max"] = max(load.samples)
    print(f"{tag}: {json.dumps({k: summary[k] for k in ('knn_top1_start', 'knn_top1_end', 'knn_top1_raw_pixels')})}"
          f" in {summary['wall']:.0f} s ({summary['cpu_seconds']:.0f} CPU-s, load {summary['load_mean']:.1f})", flush=True)
    return summary


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


STUDY_RESULTS = ROOT / "docs" / "default_data.json"  # every run so far, so suites can be run in parts
CIFAR_SUITES = {  # suite -> (preset prefix, results file, budget in words)
    "cifar10": ("cifar10", ROOT / "docs" / "cifar10_quality.json", "3 epochs = 60,000 images of 128 per step"),
    "cifar10-long": ("cifar10_long", ROOT / "docs" / "cifar10_long_quality.json",
                     "each preset's epochs (sized for ~30 minutes on a quiet 2-core machine), batches of 128"),
}
KEEP = ("knn_top1_start", "knn_top1_end", "knn_top1_raw_pixels", "knn_history", "steps", "wall", "backbone",
        "images_per_sec", "cpu_seconds", "load_mean", "load_max")


def default_data(args: argparse.Namespace, out: Path) -> None:
    stored = json.loads(STUDY_RESULTS.read_text()) if STUDY_RESULTS.exists() else {}
    for data, m in [] if args.render_only else [(d, m) for d in args.generators for m in args.methods]:
        summary = run(f"{data}_{m}", [f"data={data}", f"method={m}", f"seed={args.seed}"], out)
        if summary is None:
            break
        stored.setdefault(data, {})[m] = {k: summary[k] for k in KEEP}
        STUDY_RESULTS.write_text(json.dumps(stored, indent=1) + "\n")
    rows, curves = [], {}
    for data in (g for g in GENERATORS if g in stored):
        results = stored[data]
        first = results.get("dino") or next(iter(results.values()))
        rows.append(
            f"| `data={data}` | {GENERATORS[data]} | {pct(first['knn_top1_raw_pixels'])} | "
            f"{pct(first['knn_top1_start'])} | "
            + " | ".join(f"{pct(results[m]['knn_top1_end'])}" if m in results else "not run" for m in METHODS)
            + " |"
        )
        curves[data] = {m: r["knn_history"] for m, r in results.items()}
    header = (
        f"Measured {datetime.date.today()} on {cpu_facts()}, run seed {args.seed}, with "
        "`python benchmarks/quality.py --suite default-data` (results kept in "
        "docs/default_data.json). kNN top-1 (%) on the 2,000 val "
        "images with the 8,000 train images as the bank (k=20, T=0.07). Each method after "
        "the default budget (2 epochs = 250 steps of 64 images) on its default config; "
        "'supervised' is `method=supervised` (labels, same backbone, views and budget). The "
        "random-init column is the resnet10t at step 0 (BatchNorm statistics recalibrated on "
        "the bank); DINOv2's `vit_mini` starts from its own random init (in the json).\n\n"
        "| data | the class is | raw pixels | random init (resnet10t) | " + " | ".join(METHODS) + " |\n"
        "|---|---|---|---|" + "---|" * len(METHODS) + "\n" + "\n".join(rows) + "\n\n"
        "![kNN top-1 against the step per generator and method](img/default_data.png)\n"
    )
    plot_curves(curves, ROOT / "docs" / "img" / "default_data.png")
    write_section(ROOT / "docs" / "default_data.md", "<!-- quality:default-data:begin -->",
                  "<!-- quality:default-data:end -->", header)


def cifar10(args: argparse.Namespace, out: Path) -> None:
    prefix, results, budget = CIFAR_SUITES[args.suite]
    stored = json.loads(results.read_text()) if results.exists() else {}
    for method in [] if args.render_only else args.methods:
        overrides = [f"experiment={prefix}_{method}", f"seed={args.seed}", *args.overrides]
        summary = run(f"{prefix}_{method}", overrides, out)
        if summary is None:
            break
        # re-read: another bench-quality process may have stored its method meanwhile
        stored = json.loads(results.read_text()) if results.exists() else {}
        stored[method] = {k: summary[k] for k in KEEP} | {"overrides": args.overrides}
        if summary.get("stop_reason"):
            stored[method]["note"] = f"stopped early at step {summary['steps']}: {summary['stop_reason']}"
        results.write_text(json.dumps(stored, indent=1) + "\n")
    rows, curves = [], {}
    for method, result in stored.items():
        curves[method] = result["knn_history"]
        cpu, ips, load = result.get("cpu_seconds"), result.get("images_per_sec"), result.get("load_mean")
        last = result["knn_history"][-1]["step"] if result["knn_history"] else result["steps"]
        end = pct(result["knn_top1_end"]) + ("" if last == result["steps"] else f" (step {last})")
        note = f" ({result['note']})" if result.get("note") else ""
        rows.append(
            f"| `experiment={prefix}_{method}`{note} | {result['backbone']} | {result['steps']} | "
            f"{pct(result['knn_top1_raw_pixels'])} | {pct(result['knn_top1_start'])} | "
            f"{end} | {result['wall'] / 60:.1f} | "
            + (f"{load:.1f} | " if load is not None else "n/a | ")
            + (f"{ips:.0f} | " if ips is not None else "n/a | ")
            + (f"{cpu / 60:.0f} | {cpu / 120:.0f} |" if cpu is not None else "n/a | n/a |")
        )
    header = (
        f"Measured {datetime.date.today()} on {cpu_facts()}, seed {args.seed}, with "
        f"`python benchmarks/quality.py --suite {args.suite}` (results kept in docs/{results.name}). "
        "kNN top-1 (%), k=200, T=0.1, the 20,000 train images as the bank, the 10,000 val "
        f"images as queries; {budget}. The machine is shared: load is the mean 1-minute load "
        "average while the run trained (2 cores: above 2, other jobs took CPU time from it), "
        "images/s the training throughput under that load, CPU the run's CPU time (main "
        "process and data workers, kNN passes included). CPU / 2 would be the wall time of a "
        "quiet 2-core machine if CPU time did not depend on the load; under contention it grows "
        "(threads spin while waiting for a core), so that column likely overstates it.\n\n"
        "| preset | backbone | steps | raw pixels | random init | end | wall (min) | load | images/s "
        "| CPU (min) | CPU / 2 (min) |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n"
        + "\n".join(rows) + f"\n\n![kNN top-1 against the step](img/{prefix}_quality.png)\n"
    )
    plot_curves({"CIFAR-10": curves}, ROOT / "docs" / "img" / f"{prefix}_quality.png")
    title = "## Learning on CIFAR-10 (`make bench-quality`)" if args.suite == "cifar10" else \
        "## CIFAR-10 in ~30 minutes (`make bench-quality ARGS=\"--suite cifar10-long\"`)"
    write_section(ROOT / "docs" / "benchmarks.md", f"<!-- quality:{args.suite}:begin -->",
                  f"<!-- quality:{args.suite}:end -->", title + "\n\n" + header)


def plot_curves(panels: dict[str, dict[str, list[dict]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.4), squeeze=False, sharey=True,
                             constrained_layout=True)
    for ax, (title, methods) in zip(axes[0], panels.items(), strict=True):
        for method, history in methods.items():
            ax.plot([h["step"] for h in history], [100 * h["top1"] for h in history], marker="o", ms=3, label=method)
        ax.set(title=title, xlabel="optimizer step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("kNN top-1 (%)")
    labels = {}
    for ax in axes[0]:  # one legend for every method of every panel
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            labels.setdefault(label, handle)
    axes[0][-1].legend(labels.values(), labels.keys(), fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--suite", choices=["default-data", *CIFAR_SUITES], required=True)
    parser.add_argument("--generators", nargs="+", default=list(GENERATORS), choices=list(GENERATORS))
    parser.add_argument("--methods", nargs="+", default=None, help="default: every method of the suite")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--render-only", action="store_true", help="redraw the table and plot from the stored results")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides for every run (cifar10 suite); put them before --methods, which takes every word after it")
    args = parser.parse_args()
    out = ROOT / "outputs" / "quality" / datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    if args.suite == "default-data":
        args.methods = args.methods or METHODS
        default_data(args, out)
    else:
        args.methods = args.methods or ["byol", "dino", "dinov2"]
        cifar10(args, out)


if __name__ == "__main__":
    main()
