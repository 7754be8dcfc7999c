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
without max-pool) and ``stem_max_pool=false`` are stated as extra lines in the printed
call; ``drop_path_uniform`` and ``drop_path_mode`` change only training (stochastic
depth), so features are equal and a note says so; ``pos_embed_interpolation=official``
(DINO / DINOv2's rule) gives timm's features at the stored grid only, and a note says so; any other Backbone-only setting away from its default is
refused.
The function takes a single-file checkpoint; a sharded one must be consolidated first.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from ssl_zoo.errors import UserError
from ssl_zoo.weights.initial import INIT_KEYS
from ssl_zoo.weights.load import CheckpointError, backbone_state_dict, load_checkpoint, run_config
from ssl_zoo.weights.official import to_official_head

# Backbone settings without effect on the exported weights' features (the model name is
# create_model's first argument; init_from only chose the starting weights).
_NO_FEATURE_EFFECT = ("model_name", *INIT_KEYS)
_HEADS = {"DINO": ("head",), "DINOv2": ("dino_head", "ibot_head")}


class ExportError(UserError):
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
    kwargs, changed = _split_settings(backbone_cfg)
    notes = []
    unknown = sorted(set(changed) - {"small_image_stem", "stem_max_pool", "drop_path_uniform", "drop_path_mode",
                                     "pos_embed_interpolation"})
    if unknown:
        raise ExportError(
            f"checkpoint {ckpt}: backbone.{unknown[0]}={changed[unknown[0]]} is an ssl_zoo setting the exporter "
            "cannot reproduce with timm.create_model; refusing to write a file whose features could differ"
        )
    if "small_image_stem" in changed or "stem_max_pool" in changed:
        notes.append("the run changed the ResNet stem (backbone.small_image_stem / stem_max_pool), which "
                     "timm.create_model cannot express: run the extra lines after create_model, or the features differ")
    if "drop_path_uniform" in changed:
        notes.append("backbone.drop_path_uniform=true changed only the training-time stochastic depth "
                     "(timm builds its linear ramp instead); eval features are identical")
    if "drop_path_mode" in changed:
        notes.append(f"backbone.drop_path_mode={changed['drop_path_mode']} changed only the training-time stochastic "
                     "depth; eval features are identical")
    if "model.pos_embed" in state and backbone_cfg.get("pos_embed_interpolation", "official") == "official":
        notes.append("the run interpolated position embeddings with DINO/DINOv2's rule (backbone.pos_embed_interpolation="
                     "official); plain timm resamples with its own: features are equal at the grid the file "
                     "stores (the training crop size), not at other sizes (e.g. local crops)")
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
        "python": timm_call(model_name, kwargs, out.resolve(), _stem_lines(reference_model, changed)),
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


def _split_settings(backbone_cfg: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(timm.create_model kwargs; Backbone-only settings that differ from their default).

    Backbone's own arguments are read from its signature, so a setting added there later
    is refused by the exporter until it is handled here."""
    from ssl_zoo.models.backbones import Backbone

    params = inspect.signature(Backbone.__init__).parameters
    own = {name: p.default for name, p in params.items() if name != "self" and p.kind is not p.VAR_KEYWORD}
    kwargs = {k: v for k, v in backbone_cfg.items() if k not in own and k not in (*INIT_KEYS, "_target_")}
    changed = {k: v for k, v in backbone_cfg.items()
               if k in own and k not in _NO_FEATURE_EFFECT and v != own[k]}
    return kwargs, changed


def _stem_lines(model: torch.nn.Module, changed: dict[str, Any]) -> list[str]:
    """What Backbone's ResNet stem options do to a timm ResNet, as lines of Python."""
    if "small_image_stem" in changed:
        conv = "model.conv1[0]" if isinstance(model.conv1, torch.nn.Sequential) else "model.conv1"
        return ["# backbone.small_image_stem=true (not a timm argument): stride-1 first conv, no max-pool",
                f"{conv}.stride = (1, 1)", "model.maxpool = torch.nn.Identity()"]
    if "stem_max_pool" in changed:
        return ["# backbone.stem_max_pool=false (not a timm argument): no max-pool in the stem",
                "model.maxpool = torch.nn.Identity()"]
    return []


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
