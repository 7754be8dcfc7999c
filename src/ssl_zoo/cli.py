"""`ssl-zoo` command line: thin dispatch to Hydra apps and tools.

    ssl-zoo train [hydra overrides]     pretrain + kNN evaluation (see --help)
"""

from __future__ import annotations

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

CONFIG_DIR = str(Path(__file__).resolve().parent / "conf")

USAGE = """usage: ssl-zoo <command> [args]

commands:
  train [overrides]   pretrain a method and evaluate it (Hydra app; `ssl-zoo train --help`)

examples:
  ssl-zoo train                                   # DINO on the embedded shapes data, CPU
  ssl-zoo train method=dinov2 backbone=vit_tiny trainer.max_steps=200
  ssl-zoo train -m method=byol,dino,dinov2        # one run per method (Hydra multirun)
  ssl-zoo train --cfg job                         # print the composed config
"""


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def _train_app(cfg: DictConfig) -> float | None:
    from ssl_zoo.train import train

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    summary = train(cfg, run_dir)
    return summary["knn_top1_end"]


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = args[0], args[1:]
    if command == "train":
        sys.argv = ["ssl-zoo train", *rest]
        _train_app()
        return 0
    print(f"ssl-zoo: unknown command '{command}'\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
