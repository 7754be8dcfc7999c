"""Initialise a backbone or heads from official DINO / DINOv2 files or ssl_zoo files.

``backbone.init_from=PATH`` and ``method.head_init_from=PATH`` come here. Every file is
read without unpickling code (``safetensors`` or ``torch.load(weights_only=True)``; the
only class allowed besides tensors is ``argparse.Namespace``, the ``args`` entry of DINO
training checkpoints). Loading is strict: a missing, unexpected or mis-shaped key is an
error that names the file, the key and the architecture the file looks like.

Where each rule comes from (facebookresearch/dino and facebookresearch/dinov2; facts
about key names and shapes only, no code is copied):

What a file holds (``_network``):
- DINO release backbones (``dino_deitsmall16_pretrain.pth``, ...): bare ViT keys, as
  ``vision_transformer.py::VisionTransformer.state_dict()``; ResNet-50 is torchvision's
  layout without ``fc`` (``hubconf.py`` loads it with ``strict=False``).
- DINO training checkpoints (``main_dino.py``, ``save_dict``): ``student`` and
  ``teacher`` are ``utils.MultiCropWrapper`` state dicts, ``backbone.*`` + ``head.*``,
  behind ``module.`` when wrapped in DistributedDataParallel; ``args`` is an
  ``argparse.Namespace``.
- DINOv2 release backbones (``hub/backbones.py``): bare keys of
  ``models/vision_transformer.py::DinoVisionTransformer`` (with ``mask_token``).
- DINOv2 training: ``train/train.py::do_test`` writes ``{"teacher": ...}`` with
  ``backbone.*``, ``dino_head.*``, ``ibot_head.*``; the fvcore checkpointer writes
  ``{"model": SSLMetaArch.state_dict()}`` with ``student.*`` / ``teacher.*``.
- ssl_zoo: ``ssl-zoo export`` safetensors (timm keys) and its ``.head.safetensors``;
  training ``.ckpt`` files (``state_dict`` with ``teacher.backbone.model.*``).

Key renames to timm's ``VisionTransformer`` (``_vit_to_timm``):
- ``blocks.C.N.*`` -> ``blocks.N.*``: DinoVisionTransformer with ``block_chunks > 0``
  wraps blocks in ``BlockChunk`` lists padded with ``nn.Identity`` so ``N`` stays the
  absolute block index.
- ``register_tokens`` (1, R, D) -> ``reg_token``; ``mask_token`` (1, D) ->
  ``Backbone.mask_token`` (1, 1, D), kept out of the timm model.
- ``mlp.w12`` / ``mlp.w3`` (``layers/swiglu_ffn.py::SwiGLUFFN``, ViT-g) -> ``mlp.fc1`` /
  ``mlp.fc2`` of timm's ``SwiGLUPacked`` (first half of fc1 is the gated SiLU input,
  as in the official ``x1, x2 = x12.chunk(2)``).
- ``ls1.gamma`` / ``ls2.gamma`` (``layers/layer_scale.py::LayerScale``), ``norm1``,
  ``attn.qkv``, ``attn.proj``, ``norm2``, ``mlp.fc1``, ``mlp.fc2``, ``norm``,
  ``patch_embed.proj``, ``cls_token``: the same names in timm.
- ``pos_embed``: the official models add one position to the class token and none to
  registers (``prepare_tokens_with_masks``: ``cat(cls, x) + pos`` then registers are
  inserted after the class token). timm models with ``no_embed_class`` (the ``_reg``
  models) get the class position folded into ``cls_token`` (exact: nothing happens
  between the two additions); timm models that embed prefix tokens get zeros for the
  register positions.
- position grids: with ``backbone.pos_embed_interpolation=official`` the backbone keeps
  the file's grid (e.g. DINOv2's 37x37 of 518 px) and interpolates it at every forward
  like the official model (``ssl_zoo.models.pos_embed``), so official weights give the
  official features at every crop size. With ``timm`` the grid is resampled once to the
  backbone's with the rule of the model that made the file (``interpolate_pos_encoding``):
  DINO and DINOv2 without registers use bicubic with ``scale_factor=(n + 0.1) / M`` and
  no antialiasing; DINOv2 ``_reg`` models (``interpolate_offset=0``,
  ``interpolate_antialias=True``) and timm-layout files use bicubic to ``size=n`` with
  antialiasing (timm's ``resample_abs_pos_embed``).

Heads (``load_heads``): ``dino/vision_transformer.py::DINOHead`` and
``dinov2/layers/dino_head.py::DINOHead`` share a layout: ``mlp.{0,2,4}`` Linear (with
``use_bn``: Linear ``mlp.{0,3,6}``, BatchNorm ``mlp.{1,4}``; the same Sequential order as
ours: Linear, [BatchNorm], GELU) and a
weight-normalised ``last_layer`` stored as ``weight_g`` (out, 1) and ``weight_v`` (out,
bottleneck), which are our parametrization's ``original0`` and ``original1``.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ssl_zoo.errors import UserError
from ssl_zoo.models.pos_embed import OFFSET, OfficialPosEmbedViT, interpolate_patch_positions

log = logging.getLogger("ssl_zoo")

WHICH = ("teacher", "student")
HEAD_NAMES = ("head", "dino_head", "ibot_head")
_WRAPPERS = re.compile(r"(^|\.)(module|_fsdp_wrapped_module|_orig_mod)\.")
_CHUNKED = re.compile(r"^blocks\.(\d+)\.(\d+)\.")
# width -> (short name, timm size name, standard depth)
_VIT_SIZES = {192: ("Ti", "tiny", 12), 384: ("S", "small", 12), 768: ("B", "base", 12),
              1024: ("L", "large", 24), 1536: ("g", "giant", 40)}


class InitFromError(UserError):
    """A weights file that cannot initialise the model; the message says why and what to do."""


# --- reading a file ---------------------------------------------------------------------


def read_file(path: str | Path) -> Any:
    """The object stored at ``path``: safetensors -> dict of tensors; else torch.load
    with weights_only=True (argparse.Namespace allowed, for DINO's ``args``)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise InitFromError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise InitFromError(f"{path}: the file is empty (0 bytes)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path), device="cpu")
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch/safetensors raise many types for a bad file
        raise InitFromError(
            f"{path}: cannot be read as {'safetensors' if path.suffix == '.safetensors' else 'a torch file with weights_only=True'} "
            f"({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}); the file is "
            "truncated, corrupt, not a weights file, or holds pickled code, which is refused"
        ) from None


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _network(obj: Any, path: Path, which: str) -> tuple[dict[str, torch.Tensor], str]:
    """(flat state dict of one network, wrappers stripped; what the file is)."""
    if which not in WHICH:
        raise InitFromError(f"init_from_key={which!r}: choose one of {', '.join(WHICH)}")
    if not isinstance(obj, dict):
        raise InitFromError(f"{path}: holds a {type(obj).__name__}, not a dict of weights")
    if isinstance(obj.get("state_dict"), dict):  # Lightning: an ssl_zoo training checkpoint
        prefix = f"{which}."
        state = {k[len(prefix):]: v for k, v in obj["state_dict"].items() if k.startswith(prefix)}
        kind = f"ssl_zoo training checkpoint ({which})"
    elif any(isinstance(obj.get(k), dict) for k in WHICH):  # DINO training / DINOv2 teacher_checkpoint
        if not isinstance(obj.get(which), dict):
            present = [k for k in WHICH if isinstance(obj.get(k), dict)]
            raise InitFromError(f"{path}: has no '{which}' entry (it has {', '.join(present)}): set init_from_key={present[0]}")
        state, kind = obj[which], f"training checkpoint ('{which}' entry)"
    elif isinstance(obj.get("model"), dict):  # DINOv2 fvcore checkpoint: SSLMetaArch
        prefix = f"{which}."
        model = {_WRAPPERS.sub(r"\1", k): v for k, v in obj["model"].items()}
        state = {k[len(prefix):]: v for k, v in model.items() if k.startswith(prefix)}
        kind = f"DINOv2 training checkpoint ('model' entry, {which})"
        if not state:
            state, kind = model, "checkpoint ('model' entry)"
    elif _is_state_dict(obj):
        state, kind = obj, "state dict"
    else:
        raise InitFromError(
            f"{path}: not a weights file this loader knows (top-level keys: {', '.join(map(str, list(obj)[:8]))}); "
            "expected a state dict, a DINO/DINOv2 checkpoint ('teacher'/'student'/'model') or an ssl_zoo file"
        )
    state = {_WRAPPERS.sub(r"\1", k): v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise InitFromError(f"{path}: the {kind} holds no tensors for '{which}'")
    return state, kind


def _backbone_part(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The backbone's keys: under ``backbone.`` when the file holds a whole network, then
    under ``model.`` for ssl_zoo's Backbone wrapper."""
    if any(k.startswith("backbone.") for k in state):
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    if any(k.startswith("model.") for k in state):
        state = {(k[len("model."):] if k.startswith("model.") else k): v for k, v in state.items()}
    return state


# --- describing architectures (for error messages) -------------------------------------


def _block_indices(state: dict[str, torch.Tensor]) -> set[int]:
    return {int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k))}


def describe_weights(state: dict[str, torch.Tensor]) -> tuple[str, str | None]:
    """(what the weights look like, e.g. 'a ViT-B/14 with 4 registers, 12 blocks, layer
    scale'; a suggested backbone override or None)."""
    if "patch_embed.proj.weight" in state:
        width, _, patch, _ = state["patch_embed.proj.weight"].shape
        regs = state.get("register_tokens", state.get("reg_token"))
        n_reg = regs.shape[1] if regs is not None else 0
        depth = len(_block_indices(state))
        fc1 = state.get("blocks.0.mlp.w12.weight", state.get("blocks.0.mlp.fc1.weight"))
        fc2 = state.get("blocks.0.mlp.w3.weight", state.get("blocks.0.mlp.fc2.weight"))
        swiglu = fc1 is not None and fc2 is not None and fc1.shape[0] == 2 * fc2.shape[1]  # gated: 2 x hidden
        layer_scale = any(".ls1." in k for k in state)
        short, size, std_depth = _VIT_SIZES.get(width, (f"(width {width})", None, 0))
        text = (f"a ViT-{short}/{patch}" + (f" with {n_reg} registers" if n_reg else "")
                + f", {depth} blocks" + (", layer scale" if layer_scale else "") + (", SwiGLU MLP" if swiglu else ""))
        suggestion = None
        if size is not None:
            if layer_scale and patch == 14:
                name = f"vit_{size}_patch14{'_reg4' if n_reg == 4 else ''}_dinov2"
            else:
                name = f"vit_{size}_patch{patch}_224"
            suggestion = f"backbone=vit_small backbone.model_name={name}"
            if depth != std_depth:
                suggestion += f" +backbone.depth={depth}"
            if layer_scale and not name.endswith("dinov2"):
                suggestion += " +backbone.init_values=1e-5"
        return text, suggestion
    if "conv1.weight" in state or "conv1.0.weight" in state:
        stages = []
        for stage in range(1, 5):
            stages.append(len({int(m.group(1)) for k in state if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}))
        bottleneck = "layer1.0.conv3.weight" in state
        names = {(3, 4, 6, 3, True): "resnet50", (2, 2, 2, 2, False): "resnet18", (3, 4, 6, 3, False): "resnet34",
                 (3, 4, 23, 3, True): "resnet101", (1, 1, 1, 1, False): "resnet10t"}
        name = names.get((*stages, bottleneck))
        deep_stem = "conv1.0.weight" in state
        if name == "resnet10t" and not deep_stem:
            name = None
        text = f"a ResNet ({'bottleneck' if bottleneck else 'basic'} blocks {'-'.join(map(str, stages))}" \
               f"{', deep stem' if deep_stem else ''})"
        return text, (f"backbone={name}" if name in ("resnet50", "resnet18", "resnet10t") else
                      f"backbone=resnet50 backbone.model_name={name}" if name else None)
    return f"an unknown architecture (keys such as {', '.join(sorted(state)[:3])})", None


def describe_model(model: nn.Module) -> str:
    """What a timm model is, in the words of :func:`describe_weights`."""
    return describe_weights(model.state_dict())[0]


# --- backbone ---------------------------------------------------------------------------


def _fit_pos_embed(state: dict[str, torch.Tensor], model: nn.Module, official: bool) -> str | None:
    """Rewrite ``pos_embed`` (and fold the class position) for ``model``; returns a note."""
    src = state["pos_embed"]
    length, dim = src.shape[1], src.shape[2]
    n_reg_src = state["reg_token"].shape[1] if "reg_token" in state else 0
    for prefix in (1, 0, 1 + n_reg_src):
        side = math.isqrt(max(length - prefix, 0))
        if side > 0 and side * side == length - prefix:
            break
    else:
        return None  # not a square grid: leave it to the strict shape check
    cls_pos = src[:, :1] if prefix >= 1 else None
    reg_pos = src[:, 1:prefix] if prefix > 1 else None
    patch_pos = src[:, prefix:]
    grid = tuple(int(g) for g in model.patch_embed.grid_size)
    note = None
    if (side, side) != grid and isinstance(model, OfficialPosEmbedViT):
        # The official models keep their grid and interpolate from it at every forward.
        note = f"position embeddings kept at their {side}x{side} grid (pos_embed_interpolation=official)"
    elif (side, side) != grid:
        # DINOv2 _reg models and timm: size= with antialias; DINO / DINOv2: +0.1 offset.
        size_rule = not official or n_reg_src > 0
        patch_pos = interpolate_patch_positions(patch_pos, (side, side), grid, 0.0 if size_rule else OFFSET,
                                                antialias=size_rule).to(patch_pos.dtype)
        note = f"position embeddings resampled {side}x{side} -> {grid[0]}x{grid[1]} (bicubic)"
    if getattr(model, "no_embed_class", False):
        if cls_pos is not None and "cls_token" in state:
            state["cls_token"] = state["cls_token"] + cls_pos
        if reg_pos is not None and "reg_token" in state:
            state["reg_token"] = state["reg_token"] + reg_pos
        state["pos_embed"] = patch_pos
    else:
        n_reg = int(getattr(model, "num_reg_tokens", 0))
        parts = [cls_pos if cls_pos is not None else src.new_zeros(1, 1, dim)] if getattr(model, "cls_token", None) is not None else []
        if n_reg:
            parts.append(reg_pos if reg_pos is not None and reg_pos.shape[1] == n_reg else src.new_zeros(1, n_reg, dim))
        state["pos_embed"] = torch.cat([*parts, patch_pos], dim=1)
    return note


def _vit_to_timm(state: dict[str, torch.Tensor], model: nn.Module, official: bool) -> tuple[dict, torch.Tensor | None, list[str]]:
    """``official``: the file comes from DINO / DINOv2 (their position resampling rule),
    not from timm / ssl_zoo."""
    out: dict[str, torch.Tensor] = {}
    mask_token = None
    for key, value in state.items():
        key = _CHUNKED.sub(r"blocks.\2.", key)
        key = key.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2.")
        if key == "register_tokens":
            key = "reg_token"
        if key == "mask_token":
            mask_token = value.reshape(1, 1, -1)
            continue
        out[key] = value
    notes = []
    if "pos_embed" in out and getattr(model, "pos_embed", None) is not None:
        note = _fit_pos_embed(out, model, official)
        if note:
            notes.append(note)
    return out, mask_token, notes


def backbone_weights(path: str | Path, model: nn.Module, which: str = "teacher") -> tuple[dict, torch.Tensor | None, str, list[str]]:
    """(state dict in ``model``'s timm layout, mask token or None, file kind, notes)."""
    path = Path(path).expanduser()
    state, kind = _network(read_file(path), path, which)
    state = _backbone_part(state)
    notes: list[str] = []
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    if isinstance(classifier, str):
        dropped = [k for k in state if k.startswith(classifier + ".")]
        # A classifier (torchvision's fc, timm's head) is not part of a num_classes=0 backbone.
        if dropped and not any(k.startswith(classifier + ".") for k in model.state_dict()):
            for k in dropped:
                del state[k]
            notes.append(f"ignored the classifier ({', '.join(dropped)})")
    mask_token = None
    if hasattr(model, "blocks") and "patch_embed.proj.weight" in state:
        # Official releases are .pth files; ssl_zoo exports and timm weights are safetensors.
        official = path.suffix != ".safetensors" and not kind.startswith("ssl_zoo")
        state, mask_token, more = _vit_to_timm(state, model, official)
        notes += more
    return state, mask_token, kind, notes


def load_backbone_weights(backbone: nn.Module, path: str | Path, which: str = "teacher") -> torch.Tensor | None:
    """Load ``path`` into ``backbone.model`` (an ssl_zoo Backbone), strictly; returns the
    file's mask token (None if it has none)."""
    path = Path(path).expanduser()
    model = backbone.model
    if which not in WHICH:
        raise InitFromError(f"backbone.init_from_key={which}: choose one of {', '.join(WHICH)}")
    try:
        state, mask_token, kind, notes = backbone_weights(path, model, which)
    except InitFromError as err:  # name the config key: the message is printed alone
        raise InitFromError(f"backbone.init_from: {err}") from None
    if "pos_embed" in state and getattr(model, "pos_embed", None) is not None:
        try:  # pos_embed_interpolation=official: the model takes the file's grid
            backbone.store_positions(state["pos_embed"].shape[1])
        except ValueError:
            pass  # not a grid of positions: the strict shape check below names it
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        looks, suggestion = describe_weights(state)
        if wrong:
            k = wrong[0]
            detail = f"{k} has shape {tuple(state[k].shape)} in the file, {tuple(expected[k].shape)} in the backbone"
        elif missing:
            detail = f"missing {', '.join(missing[:3])}" + (f" (+{len(missing) - 3} more)" if len(missing) > 3 else "")
            if unexpected:
                detail += f"; unexpected {', '.join(unexpected[:3])}"
        else:
            detail = f"unexpected {', '.join(unexpected[:3])}" + (f" (+{len(unexpected) - 3} more)" if len(unexpected) > 3 else "")
        advice = f": choose {suggestion}" if suggestion else ""
        raise InitFromError(
            f"backbone.init_from={path} ({kind}): {detail}. The file looks like {looks}; "
            f"backbone.model_name={backbone.model_name} is {describe_model(model)}{advice}"
        )
    model.load_state_dict({k: state[k].to(expected[k].dtype) for k in expected}, strict=True)
    log.info("backbone initialised from %s (%s)%s", path, kind, "".join(f"; {n}" for n in notes))
    return mask_token


# --- heads ------------------------------------------------------------------------------


def _head_groups(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    groups: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        name, _, rest = key.partition(".")
        if name in HEAD_NAMES:
            groups.setdefault(name, {})[rest] = value
    if not groups and any(k.startswith(("mlp.", "last_layer.")) for k in state):
        groups["head"] = {k: v for k, v in state.items() if k.startswith(("mlp.", "last_layer."))}
    return groups


def _to_ours(head: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in head.items():
        key = key.replace("last_layer.weight_g", "last_layer.parametrizations.weight.original0")
        key = key.replace("last_layer.weight_v", "last_layer.parametrizations.weight.original1")
        if key in ("mlp.weight", "mlp.bias"):  # DINOHead with nlayers=1: mlp is a bare Linear
            key = "mlp.0." + key.split(".")[1]
        out[key] = value
    return out


def to_official_head(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our DINOHead state dict in the official key layout (weight_g / weight_v)."""
    return {k.replace("parametrizations.weight.original0", "weight_g").replace("parametrizations.weight.original1", "weight_v"): v
            for k, v in state.items()}


def describe_head(state: dict[str, torch.Tensor]) -> str:
    linears = sorted((int(m.group(1)), v.shape) for k, v in state.items()
                     if (m := re.match(r"mlp\.(\d+)\.weight$", k)) and v.ndim == 2)
    dims = [linears[0][1][1]] + [s[0] for _, s in linears] if linears else []
    last = state.get("last_layer.parametrizations.weight.original1")
    if last is not None:
        dims.append(last.shape[0])
    bn = any(k.endswith("running_mean") for k in state)
    return (f"a DINO head {' -> '.join(map(str, dims))} ({len(linears)} MLP layers, "
            f"{'with' if bn else 'no'} BatchNorm)")


def load_heads(path: str | Path, heads: dict[str, nn.Module], method: str, which: str = "teacher") -> torch.Tensor | None:
    """Load the heads in ``path`` into ``heads`` (our names: ``head`` for DINO,
    ``dino_head`` / ``ibot_head`` for DINOv2), strictly; returns an ssl_zoo mask token
    stored with the heads (None if there is none)."""
    path = Path(path).expanduser()
    try:
        state, kind = _network(read_file(path), path, which)
    except InitFromError as err:  # name the config key: the message is printed alone
        raise InitFromError(f"method.head_init_from: {err}") from None
    groups = _head_groups(state)
    if not groups:
        raise InitFromError(
            f"method.head_init_from={path} ({kind}): no DINO head inside (no head.*, dino_head.*, "
            "ibot_head.* or mlp.*/last_layer.* keys); this may be a backbone-only file"
        )
    for name, head in heads.items():
        source = name if name in groups else None
        if source is None and name == "head":
            source = "dino_head" if "dino_head" in groups else None
        if source is None and name == "dino_head":
            source = "head" if "head" in groups else None
        if source is None:
            hint = (" (the file's head is shared by CLS and patches: set method.separate_ibot_head=false)"
                    if name == "ibot_head" else "")
            raise InitFromError(f"method.head_init_from={path} ({kind}): no '{name}' for method={method} "
                                f"(the file has {', '.join(sorted(groups))}){hint}")
        src = _to_ours(groups[source])
        expected = head.state_dict()
        bad = [k for k in expected if k not in src or tuple(src[k].shape) != tuple(expected[k].shape)]
        bad += [k for k in src if k not in expected]
        if bad:
            k = bad[0]
            detail = (f"{k} has shape {tuple(src[k].shape)} in the file, {tuple(expected[k].shape)} in the model"
                      if k in src and k in expected else f"{'missing' if k in expected else 'unexpected'} {k}")
            raise InitFromError(
                f"method.head_init_from={path} ({kind}, {source}): {detail}. The file has "
                f"{describe_head(src)}; method={method} builds {describe_head(expected)}: set "
                "method.out_dim / hidden_dim / bottleneck_dim / head_layers (and head_use_bn for DINO) to match"
            )
        head.load_state_dict({k: src[k].to(expected[k].dtype) for k in expected}, strict=True)
    if "ibot_head" in groups and "ibot_head" not in heads and method == "dinov2":
        raise InitFromError(f"method.head_init_from={path} ({kind}): the file has a separate ibot_head: "
                            "set method.separate_ibot_head=true")
    unused = sorted(set(groups) - set(heads) - {"head", "dino_head"})
    log.info("heads %s initialised from %s (%s)%s", ", ".join(heads), path, kind,
             f"; not used: {', '.join(unused)}" if unused else "")
    mask = state.get("mask_token", state.get("backbone.mask_token"))
    return mask.reshape(1, 1, -1) if mask is not None else None
