"""`ssl-zoo export ckpt=PATH out=FILE.safetensors [which=teacher|student] [head=true]`."""

from __future__ import annotations

import os
import sys

HELP = """usage: ssl-zoo export ckpt=PATH out=FILE.safetensors [which=teacher|student] [head=true|false]

Write a training checkpoint's backbone as a safetensors file that plain timm loads, and
print the timm.create_model call that loads it (also written to FILE.json).

  ckpt=PATH     a checkpoint written by `ssl-zoo train` (e.g. <run>/checkpoints/last.ckpt)
  out=FILE      the output file; must end in .safetensors
  which=        teacher (default: the EMA teacher, what DINO/DINOv2 evaluate) or student
  head=         true: also write FILE.head.safetensors (DINO / DINOv2 heads and the iBOT
                mask token) to continue pretraining with method.head_init_from=...

example:
  ssl-zoo export ckpt=outputs/run/checkpoints/last.ckpt out=backbone.safetensors head=true
"""

_KEYS = ("ckpt", "out", "which", "head")
_BOOL = {"true": True, "false": False, "1": True, "0": False, "yes": True, "no": False}


def _parse(argv: list[str]) -> dict[str, str]:
    from ssl_zoo.errors import UserError

    args: dict[str, str] = {}
    for item in argv:
        key, sep, value = item.partition("=")
        if not sep or key not in _KEYS:
            raise UserError(f"unknown argument '{item}': give key=value with key in {', '.join(_KEYS)} (see --help)")
        args[key] = value
    for key in ("ckpt", "out"):
        if not args.get(key):
            raise UserError(f"{key}=... is required (see ssl-zoo export --help)")
    if args.get("head", "false").lower() not in _BOOL:
        raise UserError(f"head={args['head']}: give true or false")
    return args


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help", "help") for a in argv):
        print(HELP)
        return 0
    from ssl_zoo.errors import UserError, one_line
    from ssl_zoo.weights.export import export_backbone

    try:
        args = _parse(argv)
        info = export_backbone(args["ckpt"], args["out"], which=args.get("which", "teacher"),
                               head=_BOOL[args.get("head", "false").lower()])
    except (UserError, OSError) as err:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":  # `ssl-zoo --debug export ...`
            raise
        print(f"ssl-zoo export: error: {one_line(err)}", file=sys.stderr)
        return 1
    print(f"wrote {info['file']} ({info['which']} backbone, {info['model_name']})")
    print(f"wrote {info['sidecar']} (the call below)")
    if info["head_file"]:
        print(f"wrote {info['head_file']} (heads for continued pretraining)")
    print("\nload it with plain timm:\n" + "\n".join("  " + line for line in info["python"].splitlines()))
    for note in info["notes"]:
        print(f"note: {note}")
    if info["head_file"]:
        print("\ncontinue pretraining from it:\n"
              f"  ssl-zoo train <the run's overrides> backbone.init_from={info['file']} "
              f"method.head_init_from={info['head_file']}")
    return 0
