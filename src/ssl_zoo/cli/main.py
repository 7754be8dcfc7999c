"""`ssl-zoo` command line: thin dispatch to Hydra apps and tools.

    ssl-zoo train [hydra overrides]     pretrain + kNN evaluation (see --help)
    ssl-zoo data shard SRC DST          image folder -> WebDataset tar shards
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

USAGE = """usage: ssl-zoo [--debug] <command> [args]

  --debug             show full tracebacks for configuration, data and checkpoint errors

commands:
  train [overrides]   pretrain a method and evaluate it (Hydra app; `ssl-zoo train --help`)
  data shard SRC DST  write an image folder as tar shards for data=shards (`ssl-zoo data -h`)
  eval knn|linear|fewshot ckpt=PATH [key=value ...]
                      evaluate a checkpoint's frozen backbone (`ssl-zoo eval --help`)
  viz ckpt=PATH images=DIR out=DIR [key=value ...]
                      attention and PCA pictures of its backbone (`ssl-zoo viz --help`)
  export ckpt=PATH out=FILE [which=teacher|student] [head=true]
                      the backbone as safetensors for plain timm (`ssl-zoo export --help`)

examples:
  ssl-zoo train                                   # DINO on the embedded texels data, CPU
  ssl-zoo train method=dinov2 backbone=vit_tiny trainer.max_steps=200
  ssl-zoo train -m method=byol,dino,dinov2        # one run per method (Hydra multirun)
  ssl-zoo train --cfg job                         # print the composed config
  ssl-zoo data shard /data/photos /data/shards --shard-size 2000
"""


def _data_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ssl-zoo data", description="Dataset tools (formats: docs/data.md)."
    )
    commands = parser.add_subparsers(dest="tool", required=True, metavar="{shard}")
    shard = commands.add_parser(
        "shard",
        help="write an image folder as WebDataset tar shards",
        description=(
            "Write the images under SRC (any tree; class subfolders become labels, kept "
            "with the class names) as tar shards DST/<prefix>-000000.tar, ... plus "
            "DST/<prefix>-index.json (sample counts: the epoch length of data=shards). "
            "Samples are shuffled before sharding (--no-shuffle keeps the sorted order); "
            "bad files are skipped and counted."
        ),
    )
    shard.add_argument("src", metavar="SRC", help="directory of images")
    shard.add_argument("dst", metavar="DST", help="output directory (created)")
    shard.add_argument("--shard-size", type=int, default=1000, help="samples per shard (default 1000)")
    shard.add_argument("--prefix", default="shard", help="shard file prefix (default 'shard')")
    shard.add_argument("--no-shuffle", dest="shuffle", action="store_false", help="keep the sorted file order")
    shard.add_argument("--seed", type=int, default=0, help="seed of the shuffle (default 0)")
    shard.add_argument("--verify", action="store_true", help="decode every image (finds truncated files; slower)")
    shard.add_argument("--overwrite", action="store_true", help="replace shards with the same prefix in DST")
    shard.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def _data(argv: list[str]) -> int:
    import logging

    from ssl_zoo.datasets.images import DataError
    from ssl_zoo.datasets.shards import INDEX_SUFFIX, write_shards

    args = _data_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    try:
        index = write_shards(
            args.src, args.dst, shard_size=args.shard_size, prefix=args.prefix,
            shuffle=args.shuffle, seed=args.seed, verify=args.verify,
            overwrite=args.overwrite, progress=not args.quiet,
        )  # fmt: skip
    except DataError as err:
        print(f"ssl-zoo data shard: error: {err}", file=sys.stderr)
        return 1
    dst = Path(args.dst).resolve()
    last = len(index["shards"]) - 1
    labels = f"{len(index['classes'])} classes" if index["labeled"] else "unlabeled"
    print(
        f"wrote {index['num_samples']} images ({labels}) in {last + 1} shard(s) to {dst}\n"
        f"index: {dst / (args.prefix + INDEX_SUFFIX)}\n"
        f"skipped bad files: {index['skipped_bad_images']}"
        + (f" (e.g. {', '.join(index['bad_image_examples'][:3])})" if index["skipped_bad_images"] else "")
        + f"\ntrain on them: ssl-zoo train data=shards 'data.urls=\"{dst}/{args.prefix}-{{000000..{last:06d}}}.tar\"'"
    )
    return 0


# Hydra flags after which `ssl-zoo train` does not compose the one train config the
# overrides apply to: multirun sweeps (a=x,y), help, another config. Hydra reports those.
_OTHER_COMPOSITION = ("-m", "--multirun", "-h", "--help", "--hydra-help", "--info", "--shell-completion",
                      "-cn", "--config-name", "-cp", "--config-path", "-cd", "--config-dir", "--experimental-rerun")


def _composes_the_train_config(args: list[str]) -> bool:
    """Whether the overrides can be checked up front by composing the train config
    (one line for an unknown key or option instead of Hydra's multi-line report)."""
    return not any(a.split("=", 1)[0] in _OTHER_COMPOSITION for a in args)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if "--debug" in args[:1]:
        # Full tracebacks for the errors that otherwise print one readable line.
        os.environ["HYDRA_FULL_ERROR"] = "1"
        args = args[1:]
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    command, rest = args[0], args[1:]
    if command == "train":
        from ssl_zoo.cli import train_app
        from ssl_zoo.config import check_moved_keys, check_overrides
        from ssl_zoo.errors import ConfigError

        try:
            if _composes_the_train_config(rest):
                # Overrides are key=value or ~key; flags (--cfg job, -p pkg) are Hydra's.
                check_overrides([a for a in rest if not a.startswith("-") and ("=" in a or a.startswith("~"))])
            else:
                check_moved_keys(rest)
        except ConfigError as err:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"ssl-zoo train: error: {err}", file=sys.stderr)
            return 2

        # Lightning's DDP launcher re-runs `python <sys.argv[0]> <overrides>` per extra
        # process, or `python -m <__main__ module>` when there is one: make both point at
        # the train app, not at this dispatcher.
        sys.argv = [train_app.__file__, *rest]
        main_module = sys.modules.get("__main__")
        if getattr(main_module, "__spec__", None) is not None:
            main_module.__spec__ = None
        train_app.main()
        return 0
    if command == "data":
        return _data(rest)
    if command == "eval":
        from ssl_zoo.cli import eval as cli_eval

        return cli_eval.main(rest)
    if command == "viz":
        from ssl_zoo.cli import viz as cli_viz

        return cli_viz.main(rest)
    if command == "export":
        from ssl_zoo.cli.export import main as export_main

        return export_main(rest)
    print(f"ssl-zoo: unknown command '{command}'\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
