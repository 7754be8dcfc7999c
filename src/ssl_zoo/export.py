"""Export a run's backbone as a safetensors file that plain timm loads.

``export_backbone(ckpt, out, which, head)`` writes

- ``out``: the timm model's state dict (``Backbone.model``; ssl_zoo-only parameters such
  as the iBOT mask token are left out), loadable with
  ``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=out,
  custom_load=False), num_classes=0, **kwargs)`` where name and kwargs are the run's
  backbone config (``custom_load=False``: some timm configs, e.g. the augreg ViTs, would
  otherwise read the file as a .npz);
- ``<out without suffix>.json``: that call and what else it needs;
- with ``head=True``, ``<out stem>.head.safetensors``: the projection head(s) in the
  official DINO key layout under our module names (``head.*`` for DINO, ``dino_head.*``
  / ``ibot_head.*`` for DINOv2) plus the mask token, for ``method.head_init_from``.

Settings timm cannot reproduce are never hidden: ``small_image_stem`` (a stride-1 stem
without max-pool) is stated as two extra lines in the printed call; ``drop_path_uniform``
changes only training (stochastic depth), so features are equal and a note says so.
The function takes a single-file checkpoint; a sharded one must be consolidated first.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from ssl_zoo.checkpoints import CheckpointError, backbone_state_dict, load_checkpoint, run_config
from ssl_zoo.models.init_from import to_official_head

# Backbone arguments that are ssl_zoo's, not timm.create_model's.
_SSL_ZOO_ARGS = ("_target_", "model_name", "small_image_stem", "drop_path_uniform", "init_from", "init_from_key")
_HEADS = {"DINO": ("head",), "DINOv2": ("dino_head", "ibot_head")}


class ExportError(ValueError):
    """The checkpoint cannot be exported as asked; the message says why."""


def timm_call(model_name: str, kwargs: dict[str, Any], file: str | Path, extra_lines: list[str] = ()) -> str:
    """The Python lines that rebuild the exported backbone with plain timm (``extra_lines``
    after create_model)."""
    args = "".join(f", {k}={v!r}" for k, v in kwargs.items())
    lines = ["import timm, torch",
             f"model = timm.create_model({model_name!r}, pretrained=True, "
             f"pretrained_cfg_overlay=dict(file={str(file)!r}, custom_load=False), num_classes=0{args})"]
    lines += list(extra_lines)
    lines.append("model.eval()")
    return "\n".join(lines)


def export_backbone(ckpt: str | Path, out: str | Path, which: str = "teacher", head: bool = False) -> dict[str, Any]:
    """Write the backbone (and optionally the heads) of the checkpoint ``ckpt``; returns
    the sidecar's content (paths, the timm call, notes)."""
    import timm
    from safetensors.torch import save_file

    ckpt, out = Path(ckpt).expanduser(), Path(out).expanduser()
    if out.suffix != ".safetensors":
        raise ExportError(f"out={out}: the file name must end in .safetensors")
    checkpoint = load_checkpoint(ckpt)
    cfg = run_config(ckpt, checkpoint)
    state = backbone_state_dict(checkpoint, which, ckpt)
    backbone_cfg = OmegaConf.to_container(cfg.backbone, resolve=True)
    model_name = backbone_cfg["model_name"]
    kwargs = {k: v for k, v in backbone_cfg.items() if k not in _SSL_ZOO_ARGS}
    small_image_stem = bool(backbone_cfg.get("small_image_stem", False))
    notes = []
    if small_image_stem:
        notes.append("backbone.small_image_stem=true changes the stem's stride, which timm.create_model "
                     "cannot express: run the extra lines after create_model, or the features differ")
    if backbone_cfg.get("drop_path_uniform", False):
        notes.append("backbone.drop_path_uniform=true changed only the training-time stochastic depth "
                     "(timm builds its linear ramp instead); eval features are identical")
    weights = {k[len("model."):]: v.contiguous() for k, v in state.items() if k.startswith("model.")}
    extra = {k: v for k, v in state.items() if not k.startswith("model.")}
    unknown = [k for k in extra if k != "mask_token"]
    if unknown:
        raise ExportError(f"checkpoint {ckpt}: backbone parameters outside the timm model: {unknown[:3]}")

    # The file must fit the model the printed call builds: check every key and shape.
    reference_model = timm.create_model(model_name, pretrained=False, num_classes=0, **kwargs)
    reference = reference_model.state_dict()
    bad = sorted(set(reference) ^ set(weights)) + [k for k in reference if k in weights and reference[k].shape != weights[k].shape]
    if bad:
        raise ExportError(f"checkpoint {ckpt}: the {which} backbone does not fit timm.create_model({model_name!r}, "
                          f"**{kwargs}) (first mismatch: {bad[0]}); it cannot be exported for plain timm")

    method = str(cfg.method._target_).rsplit(".", 1)[-1]
    head_tensors = _head_tensors(checkpoint, ckpt, which, method, extra) if head else None  # fails before writing

    out.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt", "ssl_zoo_model_name": model_name, "ssl_zoo_kwargs": json.dumps(kwargs),
                "ssl_zoo_source": str(ckpt.resolve()), "ssl_zoo_which": which}
    save_file(weights, str(out), metadata=metadata)
    info: dict[str, Any] = {
        "file": str(out.resolve()),
        "model_name": model_name,
        "kwargs": kwargs,
        "small_image_stem": small_image_stem,
        "python": timm_call(model_name, kwargs, out.resolve(), _stem_lines(reference_model) if small_image_stem else []),
        "notes": notes,
        "source_checkpoint": str(ckpt.resolve()),
        "which": which,
        "method": method,
        "head_file": None,
    }
    if head_tensors is not None:
        head_file = out.with_name(out.name[: -len(".safetensors")] + ".head.safetensors")
        save_file(head_tensors, str(head_file), metadata={"format": "pt", "ssl_zoo_method": method, "ssl_zoo_which": which})
        info["head_file"] = str(head_file.resolve())
    sidecar = out.with_suffix(".json")
    sidecar.write_text(json.dumps(info, indent=2) + "\n")
    info["sidecar"] = str(sidecar.resolve())
    return info


def _stem_lines(model: torch.nn.Module) -> list[str]:
    """What Backbone(small_image_stem=True) does to a timm ResNet, as lines of Python."""
    conv = "model.conv1[0]" if isinstance(model.conv1, torch.nn.Sequential) else "model.conv1"
    return ["# backbone.small_image_stem=true (not a timm argument): stride-1 first conv, no max-pool",
            f"{conv}.stride = (1, 1)", "model.maxpool = torch.nn.Identity()"]


def _head_tensors(checkpoint: dict, ckpt: Path, which: str, method: str, extra: dict) -> dict[str, torch.Tensor]:
    """The heads in the official DINOHead layout under our module names, plus the mask token."""
    names = _HEADS.get(method)
    if names is None:
        raise ExportError(f"head=true: {method} has no DINO-style head that method.head_init_from can load "
                          "(BYOL's projector and predictor are not exported); export without head=true")
    tensors: dict[str, torch.Tensor] = {}
    for name in names:
        prefix = f"{which}.{name}."
        part = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
        tensors.update({f"{name}.{k}": v.contiguous() for k, v in to_official_head(part).items()})
    if not tensors:
        raise CheckpointError(f"checkpoint {ckpt}: no {which} head inside")
    if "mask_token" in extra:
        tensors["mask_token"] = extra["mask_token"].contiguous()
    return tensors
