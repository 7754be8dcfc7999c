"""Read an ssl_zoo training checkpoint back: its run config and a backbone with its weights.

Every tool that takes ``ckpt=...`` (eval, viz, export) starts here, so a checkpoint is
understood one way. Loading never unpickles code (``torch.load(weights_only=True)``).

The run config travels inside the checkpoint (``ssl_zoo_config``, the resolved config
the run was composed from); checkpoints written before that existed fall back to the
run directory's ``.hydra/config.yaml`` (``<run>/checkpoints/x.ckpt`` -> ``<run>/.hydra``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from ssl_zoo.errors import UserError
from ssl_zoo.weights.atomic import CONFIG_KEY

WHICH = ("teacher", "student")


class CheckpointError(UserError):
    """A checkpoint file that cannot be used; the message names the file and what to do."""


def load_checkpoint(path: str | Path, optimizer: bool = False) -> dict[str, Any]:
    """The checkpoint dict at ``path``, loaded with ``weights_only=True`` on the CPU.

    A file (one process, DDP) or an FSDP2 directory (torch.distributed.checkpoint shards,
    see :func:`load_sharded_checkpoint`), which comes back consolidated: whole tensors,
    the same keys as a file. ``optimizer``: also the optimizer states of a directory (a
    file has them anyway)."""
    path = Path(path).expanduser()
    if path.is_dir():
        return load_sharded_checkpoint(path, optimizer=optimizer)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file (give the path of a .ckpt file)")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path}: the file is empty (0 bytes), not a checkpoint")
    try:
        checkpoint = _torch_load(path)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a bad file
        raise CheckpointError(
            f"checkpoint {path}: cannot be read as a torch checkpoint with weights_only=True "
            f"({type(err).__name__}: {_first_sentence(err)}); the file is truncated, "
            "corrupt, not a checkpoint, or holds pickled code, which is refused"
        ) from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(
            f"checkpoint {path}: no 'state_dict' inside; this is not a checkpoint written by "
            "ssl-zoo train (a bare backbone state dict goes to backbone.init_from instead)"
        )
    return checkpoint


SHARDED_META = "meta.pt"  # Lightning's ModelParallelStrategy: everything but the tensors
DCP_METADATA = ".metadata"  # torch.distributed.checkpoint: written last, once every shard is


def is_sharded_checkpoint(path: str | Path) -> bool:
    return Path(path).is_dir() and (Path(path) / SHARDED_META).is_file()


def _check_sharded(path: Path) -> None:
    missing = [name for name in (SHARDED_META, DCP_METADATA) if not (path / name).is_file()]
    if missing:
        raise CheckpointError(
            f"checkpoint {path}: a directory without {' and '.join(missing)}, so not a complete FSDP2 "
            "(torch.distributed.checkpoint) checkpoint: its save was interrupted, or this is another "
            "directory; give an older checkpoint"
        )


def load_sharded_checkpoint(path: Path, optimizer: bool = False) -> dict[str, Any]:
    """An FSDP2 checkpoint directory read in this one process: Lightning's metadata plus the
    whole tensors gathered from every shard (any number of processes wrote them). Optimizer
    states come back in ``torch.optim`` form (integer ids in param_groups order), as a
    single-process or DDP run saves them, so that any strategy resumes from them."""
    import warnings

    from torch.distributed.checkpoint.state_dict_loader import _load_state_dict_from_keys

    _check_sharded(path)
    try:
        checkpoint = _torch_load(path / SHARDED_META)
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(f"checkpoint {path}: {SHARDED_META} cannot be read ({_first_sentence(err)})") from None
    optimizers = [f"optimizer_{i}" for i in range(_count_optimizers(path))] if optimizer else []
    keys = {"state_dict", *optimizers}
    try:
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
            warnings.simplefilter("ignore", UserWarning)
            tensors = _load_state_dict_from_keys(keys, checkpoint_id=str(path))
    except Exception as err:  # noqa: BLE001
        raise CheckpointError(
            f"checkpoint {path}: its shards cannot be read ({type(err).__name__}: {_first_sentence(err)}); "
            "a shard file is missing or corrupt"
        ) from None
    checkpoint["state_dict"] = tensors["state_dict"]
    if optimizer:
        checkpoint["optimizer_states"] = [_indexed_optimizer_state(tensors[name]) for name in optimizers]
    return checkpoint


def _sharded_metadata(path: Path):
    from torch.distributed.checkpoint import FileSystemReader

    return FileSystemReader(str(path)).read_metadata()


def _count_optimizers(path: Path) -> int:
    names = {key.split(".", 1)[0] for key in _sharded_metadata(path).state_dict_metadata}
    return sum(1 for name in names if name.startswith("optimizer_"))


def _indexed_optimizer_state(state: dict[str, Any]) -> dict[str, Any]:
    """FQN-keyed optimizer state (torch.distributed.checkpoint) -> torch.optim's own form,
    whose ids number the parameters in param_groups order."""
    ids: dict[str, int] = {}
    groups = [{**group, "params": [ids.setdefault(name, len(ids)) for name in group["params"]]}
              for group in state["param_groups"]]
    return {"state": {ids[name]: value for name, value in state["state"].items()}, "param_groups": groups}


def tensor_shapes(path: str | Path) -> tuple[dict[str, tuple[int, ...]], dict[str, Any]]:
    """({model tensor name: shape}, stored run config) of a checkpoint, reading only
    metadata for an FSDP2 directory (no shard is loaded)."""
    path = Path(path).expanduser()
    if path.is_dir():
        _check_sharded(path)
        meta = _torch_load(path / SHARDED_META)
        prefix = "state_dict."
        shapes = {key[len(prefix):]: tuple(entry.size) for key, entry in _sharded_metadata(path).state_dict_metadata.items()
                  if key.startswith(prefix) and hasattr(entry, "size")}
        return shapes, meta.get(CONFIG_KEY) or {}
    checkpoint = load_checkpoint(path)
    return {k: tuple(v.shape) for k, v in checkpoint["state_dict"].items()}, checkpoint.get(CONFIG_KEY) or {}


def _first_sentence(err: Exception) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return text.split(". ", 1)[0].rstrip(".")[:160]


def _torch_load(path: Path) -> Any:
    try:
        # mmap: checking a large checkpoint before training does not read it all.
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as err:
        if "mmap" not in str(err):
            raise
        return torch.load(path, map_location="cpu", weights_only=True)  # the legacy (non-zip) format


def run_config(path: str | Path, checkpoint: dict[str, Any] | None = None) -> DictConfig:
    """The config of the run that wrote the checkpoint at ``path``."""
    path = Path(path).expanduser()
    checkpoint = load_checkpoint(path) if checkpoint is None else checkpoint
    stored = checkpoint.get(CONFIG_KEY)
    if stored is not None:
        return OmegaConf.create(stored)
    candidate = path.resolve().parent.parent / ".hydra" / "config.yaml"
    if candidate.is_file():
        return OmegaConf.load(candidate)
    raise CheckpointError(
        f"checkpoint {path}: it holds no run config and {candidate} does not exist; keep the "
        "checkpoint inside its run directory (<run>/checkpoints/), where .hydra/config.yaml is"
    )


def check_resumable(path: str | Path, method: torch.nn.Module, model_name: str) -> None:
    """CheckpointError unless the checkpoint at ``path`` holds exactly ``method``'s tensors
    (names and shapes), so that a resume fails before training, not in Lightning's loader."""
    stored, stored_cfg = tensor_shapes(path)
    expected = {k: tuple(v.shape) for k, v in method.state_dict().items()}
    written_by = ""
    if stored_cfg:
        target = str(stored_cfg.get("method", {}).get("_target_", "?")).rsplit(".", 1)[-1]
        written_by = f" (written by {target} on backbone={stored_cfg.get('backbone', {}).get('model_name', '?')})"
    missing = [k for k in expected if k not in stored]
    unexpected = [k for k in stored if k not in expected]
    mismatched = [k for k in expected if k in stored and stored[k] != expected[k]]
    if missing or unexpected or mismatched:
        details = []
        if missing:
            details.append(f"{len(missing)} tensors missing (e.g. {missing[0]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        if mismatched:
            key = mismatched[0]
            details.append(
                f"{len(mismatched)} of another shape (e.g. {key}: {stored[key]} in the file, "
                f"{expected[key]} here)"
            )
        raise CheckpointError(
            f"ckpt_path={path}: does not fit this run's {type(method).__name__} on backbone={model_name}"
            f"{written_by}: {'; '.join(details)}. Resume with the overrides the checkpoint was trained "
            "with, or start fresh without ckpt_path"
        )


def backbone_state_dict(checkpoint: dict[str, Any], which: str, path: str | Path = "<checkpoint>") -> dict[str, torch.Tensor]:
    """The ``Backbone`` state dict of the teacher or the student, keys relative to it."""
    if which not in WHICH:
        raise CheckpointError(f"which={which!r}: choose one of {', '.join(WHICH)}")
    prefix = f"{which}.backbone."
    state = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
    if not state:
        present = sorted({k.split(".", 1)[0] for k in checkpoint["state_dict"]})
        hint = " (this method has no teacher: use which=student)" if which == "teacher" else ""
        raise CheckpointError(
            f"checkpoint {path}: no {which} backbone inside (top-level modules: {', '.join(present)}){hint}"
        )
    return state


def load_backbone(path: str | Path, which: str = "teacher"):
    """(Backbone with the checkpoint's weights, in eval mode; the run config).

    ``which``: the EMA teacher (what DINO and DINOv2 evaluate) or the student.
    """
    from hydra.utils import instantiate

    from ssl_zoo.weights.initial import architecture_node

    checkpoint = load_checkpoint(path)
    cfg = run_config(path, checkpoint)
    state = backbone_state_dict(checkpoint, which, path)
    # The checkpoint's weights replace any backbone.init_from of the run (which need not
    # exist on this machine any more).
    backbone = instantiate(architecture_node(cfg.backbone))
    if "mask_token" in state:
        backbone.enable_mask_token("checkpoint")
    if "model.pos_embed" in state:  # a pretrained grid kept by pos_embed_interpolation=official
        try:
            backbone.store_positions(state["model.pos_embed"].shape[1])
        except ValueError:
            pass  # not a grid of positions: the check below names the mismatch
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint {path}: its {which} backbone does not match backbone={cfg.backbone.model_name} "
            f"of its own config (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    return backbone.eval(), cfg


def newest_checkpoint(directory: str | Path) -> tuple[Path | None, list[str]]:
    """(the complete checkpoint in ``directory`` with the highest global step, or None;
    why other files were passed over). Ties go to last.ckpt, then to the newer file.
    Saves are atomic (ssl_zoo.weights.atomic), so a file that loads is complete; one that
    does not (copied in part, from another tool) is skipped, not fatal."""
    directory = Path(directory)
    best, best_key, skipped = None, None, []
    for path in sorted(directory.glob("*.ckpt")) if directory.is_dir() else []:
        try:
            if path.is_dir():  # FSDP2: complete once torch.distributed.checkpoint wrote .metadata
                _check_sharded(path)
            step = int(_torch_load(path / SHARDED_META if path.is_dir() else path).get("global_step", -1))
        except Exception as err:  # noqa: BLE001 - any unreadable file is passed over
            skipped.append(f"{path.name} ({type(err).__name__})")
            continue
        key = (step, path.name == "last.ckpt", path.stat().st_mtime)
        if best_key is None or key > best_key:
            best, best_key = path, key
    return best, skipped
