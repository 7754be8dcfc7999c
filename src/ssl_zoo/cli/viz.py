"""`ssl-zoo viz ckpt=PATH images=DIR out=DIR [key=value ...]`: attention and PCA pictures
of a checkpoint's backbone, one PNG per image (ssl_zoo.eval.visualize)."""

from __future__ import annotations

import sys
from pathlib import Path

from ssl_zoo.cli.common import UsageError, compose_tool, fail, keys_help

PROG = "ssl-zoo viz"
HELP = f"""usage: {PROG} ckpt=PATH images=DIR out=DIR [key=value ...]

Writes OUT/<image name>.png for every image under DIR: the image, the last block's
class-token attention of each head (ViT backbones; DINO fig. 3), and the PCA of the
patch features (DINOv2 fig. 1: first component thresholded, next three as RGB; fit
over all the images together). CNN backbones get the PCA of their last feature map.

examples:
  {PROG} ckpt=outputs/<run>/checkpoints/last.ckpt images=/data/photos out=pictures
  {PROG} ckpt=last.ckpt images=samples out=pictures size=64 which=student

keys (conf_tools/viz.yaml; override any with key=value):
"""


def main(argv: list[str]) -> int:
    if "-h" in argv or "--help" in argv or (argv and argv[0] == "help"):
        print(HELP + keys_help("viz"))
        return 0
    from ssl_zoo.datasets.images import DataError
    from ssl_zoo.eval.visualize import VizError
    from ssl_zoo.weights.load import CheckpointError

    try:
        cfg = compose_tool("viz", argv)
        written, note = run(cfg)
    except (UsageError, VizError, CheckpointError, DataError, ValueError) as err:
        return fail(PROG, err)
    if note:
        print(note)
    print(f"wrote {len(written)} picture(s) to {Path(cfg.out).resolve()}")
    return 0


def run(cfg) -> tuple[list[Path], str | None]:
    """(PNG paths written, a note for the user or None)."""
    import torch
    from omegaconf import OmegaConf

    from ssl_zoo.data.transforms import EvalTransform
    from ssl_zoo.datasets.imagefolder import ImageFolder
    from ssl_zoo.eval.visualize import VizError, denormalize, draw_rows, pictures
    from ssl_zoo.weights.load import load_backbone

    for key in ("ckpt", "images", "out"):
        if OmegaConf.is_missing(cfg, key) or not cfg[key]:
            raise UsageError(f"{key} is not set: {PROG} ckpt=PATH images=DIR out=DIR (see --help)")
    if cfg.attention not in ("auto", True, False):
        raise UsageError(f"attention={cfg.attention!r}: choose auto, true or false")
    if not isinstance(cfg.max_images, int) or cfg.max_images < 1:
        raise UsageError(f"max_images must be an int >= 1, got {cfg.max_images!r}")
    backbone, run_cfg = load_backbone(cfg.ckpt, cfg.which)
    size = cfg.size if cfg.size is not None else int(run_cfg.data.image_size)
    if backbone.patch_size and size % backbone.patch_size:
        raise UsageError(f"size={size} is not a multiple of the patch size {backbone.patch_size} of {backbone.model_name}")
    mean, std = list(run_cfg.data.mean), list(run_cfg.data.std)
    transform = EvalTransform(size=size, crop_fraction=cfg.crop_fraction, mean=mean, std=std)
    dataset = ImageFolder(cfg.images, transform=transform, labels="none", config_key="images")
    count = min(len(dataset), cfg.max_images)
    images = torch.stack([dataset[i][0] for i in range(count)])
    names = [Path(dataset.path(i)).relative_to(dataset.root).with_suffix("").as_posix().replace("/", "__") for i in range(count)]

    note = None
    attention = cfg.attention is not False and backbone.has_patch_tokens
    if cfg.attention is True and not backbone.has_patch_tokens:
        raise VizError(
            f"attention=true, but backbone {backbone.model_name} has no attention (a CNN): use a ViT "
            "checkpoint, or attention=auto for the PCA maps only"
        )
    if cfg.attention == "auto" and not backbone.has_patch_tokens:
        note = (f"attention maps skipped: backbone {backbone.model_name} has no attention (a CNN); "
                "wrote the PCA maps of its last feature map")
    result = pictures(backbone, images, attention=attention, threshold=cfg.pca_threshold)
    shown = denormalize(images, mean, std)
    out = Path(cfg.out).expanduser()
    written = []
    for i, name in enumerate(names):
        heads = None if result["attention"] is None else result["attention"][i : i + 1]
        written.append(draw_rows(out / f"{name}.png", shown[i : i + 1], heads, result["pca"][i : i + 1],
                                 titles=[name[-18:]], dpi=cfg.dpi))
    return written, note


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
