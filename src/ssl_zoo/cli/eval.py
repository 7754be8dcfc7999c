"""`ssl-zoo eval knn|linear|fewshot ckpt=PATH [key=value ...]`: parse, evaluate, report
(rich table, eval.json next to the checkpoint, a W&B table with logger=wandb)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from ssl_zoo.cli.common import UsageError, compose_tool, fail, keys_help

PROG = "ssl-zoo eval"
HELP = f"""usage: {PROG} knn|linear|fewshot ckpt=PATH [key=value ...]

  knn      weighted k-nearest-neighbour vote (DINO protocol)
  linear   linear probe on frozen features: (lr, weight decay) sweep on held-out train
  fewshot  N labeled images per class, nearest class mean, mean +- std over seeds

Data: the run's own kNN bank/queries by default; labeled class folders with
data.train_root=DIR data.val_root=DIR. Features are cached in <checkpoint dir>/features/,
results merge into <checkpoint dir>/eval.json. Details: docs/evaluation.md.

examples:
  {PROG} knn ckpt=outputs/2026-01-01/12-00-00/checkpoints/last.ckpt
  {PROG} linear ckpt=last.ckpt data.train_root=/data/cifar10/train data.val_root=/data/cifar10/val
  {PROG} fewshot ckpt=last.ckpt fewshot.shots=[1,5] fewshot.seeds=3 which=student logger=wandb

keys (conf_tools/eval.yaml; override any with key=value):
"""


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help") or "--help" in argv or "-h" in argv:
        print(HELP + keys_help("eval"))
        return 0
    from ssl_zoo.datasets.images import DataError
    from ssl_zoo.eval.offline import KINDS, EvalError, evaluate
    from ssl_zoo.weights.load import CheckpointError

    kind, overrides = argv[0], argv[1:]
    try:
        if kind not in KINDS:
            raise UsageError(f"unknown evaluation '{kind}': choose one of {', '.join(KINDS)} (see --help)")
        cfg = compose_tool("eval", overrides)
        result = evaluate(kind, cfg)
    except (UsageError, EvalError, CheckpointError, DataError, ValueError) as err:
        return fail(PROG, err)
    print_table(result)
    if cfg.logger == "wandb":
        log_wandb(result, cfg.wandb_project)
    return 0


def _pct(value: float | None, std: float | None = None) -> str:
    if value is None:
        return "n/a"
    return f"{100 * value:.2f}%" + ("" if std is None else f" ± {100 * std:.2f}")


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"ssl-zoo eval {result['kind']}: {result['method']} {result['backbone']} ({result['which']}), "
        f"{result['num_classes']} classes, {result['n_train']} train / {result['n_val']} val images"
    )
    table.add_column("protocol")
    table.add_column("top-1", justify="right")
    table.add_column("top-5", justify="right")
    for row in result["rows"]:
        table.add_row(row["protocol"], _pct(row["top1"], row.get("top1_std")), _pct(row["top5"], row.get("top5_std")))
    console = Console()
    console.print(table)
    cached = result["features_from_cache"]
    state = "read from cache" if all(cached.values()) else "extracted and cached" if result["features"]["train"] else "extracted (cache off)"
    where = Path(result["features"]["train"]).parent if result["features"]["train"] else None
    console.print(f"features: {state}{f' in {where}' if where else ''}", soft_wrap=True)
    console.print(f"results: {result['eval_json']}", soft_wrap=True)


def log_wandb(result: dict[str, Any], project: str) -> None:
    """One W&B run per evaluation with the table and the top-1/top-5 in its summary;
    offline (files in the run directory) unless WANDB_MODE says otherwise."""
    import wandb

    ckpt = Path(result["checkpoint"])
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent
    run = wandb.init(
        project=project, dir=str(run_dir), mode=os.environ.get("WANDB_MODE", "offline"), job_type="eval",
        name=f"eval-{result['kind']}-{result['which']}-{ckpt.stem}",
        config={k: result[k] for k in ("kind", "which", "data", "params", "checkpoint", "method", "backbone")},
    )  # fmt: skip
    columns = ["protocol", "top1", "top1_std", "top5", "top5_std"]
    table = wandb.Table(columns=columns, data=[[row.get(c) for c in columns] for row in result["rows"]])
    run.log({f"eval/{result['kind']}": table})
    for row in result["rows"]:
        run.summary[f"eval/{result['kind']}/{row['protocol']}/top1"] = row["top1"]
    run.finish()
    print(f"W&B: logged eval/{result['kind']} ({run.settings.mode}) under {run_dir / 'wandb'}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
