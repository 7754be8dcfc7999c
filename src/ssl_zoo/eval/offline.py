"""Offline evaluation of a checkpoint (``ssl-zoo eval knn|linear|fewshot``).

Data: the run's own kNN memory bank and queries, rebuilt from the config stored in the
checkpoint, or two labeled image folders (``data.train_root`` / ``data.val_root``); both
through the run's eval transform unless its keys are overridden. Features come from
``ssl_zoo.eval.features`` (cached next to the checkpoint); the protocols are
``ssl_zoo.eval.knn`` and ``ssl_zoo.eval.linear``. Results merge into ``eval.json`` next
to the checkpoint: ``{checkpoint file: {which: {data: {kind: result}}}}``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from ssl_zoo.eval.features import Features, Split, cached_features, file_sha256, folder_fingerprint
from ssl_zoo.eval.knn import knn_class_scores
from ssl_zoo.eval.linear import accuracies, few_shot, linear_probe
from ssl_zoo.weights.load import load_backbone

KINDS = ("knn", "linear", "fewshot")
RUN_DATA = "run"  # the data tag of the run's own kNN sets in eval.json


class EvalError(ValueError):
    """Bad input to an evaluation; the message names the key or file and what to do."""


def check_config(kind: str, cfg: DictConfig) -> None:
    """Fail on a bad value before any feature is extracted."""
    if kind not in KINDS:
        raise EvalError(f"unknown evaluation '{kind}': choose one of {', '.join(KINDS)}")
    if OmegaConf.is_missing(cfg, "ckpt") or not cfg.ckpt:
        raise EvalError("ckpt is not set: give ckpt=<run dir>/checkpoints/last.ckpt")
    _positive_int("data.batch_size", cfg.data.batch_size)
    if not isinstance(cfg.data.num_workers, int) or cfg.data.num_workers < 0:
        raise EvalError(f"data.num_workers must be an int >= 0, got {cfg.data.num_workers!r}")
    if (cfg.data.train_root is None) != (cfg.data.val_root is None):
        raise EvalError("data.train_root and data.val_root go together: give both (class folders) or neither (the run's kNN sets)")
    if cfg.logger not in (None, "wandb"):
        raise EvalError(f"logger={cfg.logger}: the only logger is wandb (or leave it null)")
    if kind == "knn":
        _positive_int("knn.k", cfg.knn.k)
        if not isinstance(cfg.knn.temperature, (int, float)) or cfg.knn.temperature <= 0:
            raise EvalError(f"knn.temperature must be > 0, got {cfg.knn.temperature!r}")
    if kind == "linear":
        for key in ("lrs", "weight_decays"):
            values = list(cfg.linear[key]) if OmegaConf.is_list(cfg.linear[key]) else [cfg.linear[key]]
            if not values or any(not isinstance(v, (int, float)) or v < 0 for v in values) or (key == "lrs" and 0 in values):
                raise EvalError(f"linear.{key} must be a list of numbers (lrs > 0, decays >= 0), e.g. linear.{key}=[0.01,0.1]")
        _positive_int("linear.epochs", cfg.linear.epochs)
        _positive_int("linear.batch_size", cfg.linear.batch_size)
    if kind == "fewshot":
        shots = list(cfg.fewshot.shots) if OmegaConf.is_list(cfg.fewshot.shots) else [cfg.fewshot.shots]
        for n in shots:
            _positive_int("fewshot.shots (each entry)", n)
        _positive_int("fewshot.seeds", cfg.fewshot.seeds)


def _positive_int(key: str, value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise EvalError(f"{key} must be an int >= 1, got {value!r}")


def eval_transform(run_cfg: DictConfig, data: DictConfig):
    """The run's eval transform with any of data.image_size / crop_fraction / mean / std
    overridden; also returns its resolved arguments (part of the cache key)."""
    node = OmegaConf.to_container(run_cfg.augmentation.eval_transform, resolve=True)
    for key, arg in (("image_size", "size"), ("crop_fraction", "crop_fraction"), ("mean", "mean"), ("std", "std")):
        if data.get(key) is not None:
            value = data[key]
            node[arg] = list(value) if OmegaConf.is_list(value) else value
    try:
        transform = instantiate(node)
    except Exception as err:  # noqa: BLE001 - hydra wraps the constructor's ValueError
        cause = err.__cause__ or err
        raise EvalError(f"data.image_size / crop_fraction / mean / std: {cause}") from None
    return transform, {k: v for k, v in node.items() if k != "_target_"}


def build_splits(cfg: DictConfig, run_cfg: DictConfig, transform) -> tuple[Split, Split, str]:
    """(train split, val split, data tag): folders when data.train_root is set, else the
    run's kNN sets."""
    from ssl_zoo.datasets.imagefolder import ImageFolder

    if cfg.data.train_root is not None:
        splits = []
        for name, key in (("train", "data.train_root"), ("val", "data.val_root")):
            dataset = ImageFolder(cfg.data[key.split(".")[1]], transform=transform, labels="folders", config_key=key)
            description = {"name": key, "root": dataset.root, "files": folder_fingerprint(dataset)}
            splits.append(Split(name, lambda d=dataset: d, description))
        tag = f"{splits[0].description['root']} -> {splits[1].description['root']}"
        return splits[0], splits[1], tag
    data_cfg = run_cfg.get("data") or {}
    nodes = [data_cfg.get("knn_train_set"), data_cfg.get("knn_val_set")]
    if any(node is None for node in nodes):
        raise EvalError(
            "the run has no labeled kNN sets (data.knn_train_set / knn_val_set are null in its config): "
            "give labeled class folders with data.train_root=DIR data.val_root=DIR"
        )
    splits = []
    for name, node in zip(("train", "val"), nodes):
        spec = OmegaConf.to_container(node, resolve=True)

        def make(spec=spec, key=f"data.knn_{name}_set"):
            factory = instantiate(spec)
            if factory is None:
                raise EvalError(f"the run's {key} is empty: give data.train_root=DIR data.val_root=DIR")
            return factory(transform=transform)

        description = {"name": f"run data.knn_{name}_set", "config": spec}
        if "imagefolder" in str(spec.get("_target_", "")):
            # A folder may change after the run: its files are part of the key.
            dataset = make()
            description["files"] = folder_fingerprint(dataset)
            make = lambda d=dataset: d  # noqa: E731 - built already
        splits.append(Split(name, make, description))
    return splits[0], splits[1], RUN_DATA


def features_of(cfg: DictConfig) -> dict[str, Any]:
    """Load the backbone and the train/val features (cached). Returns a dict with
    ``train``, ``val`` (Features), ``classes``, ``data`` (tag), ``run_cfg``, ``sha256``."""
    ckpt = Path(str(cfg.ckpt)).expanduser()
    backbone, run_cfg = load_backbone(ckpt, cfg.which)
    transform, transform_args = eval_transform(run_cfg, cfg.data)
    train_split, val_split, tag = build_splits(cfg, run_cfg, transform)
    sha = file_sha256(ckpt)
    cache_dir = None
    if cfg.cache:
        cache_dir = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else ckpt.resolve().parent / "features"
    key_parts = {"checkpoint_sha256": sha, "which": cfg.which, "transform": transform_args}
    out = {}
    for split in (train_split, val_split):
        out[split.name] = cached_features(
            backbone, split, key_parts, cache_dir, cfg.data.batch_size, cfg.data.num_workers, cfg.progress
        )
    if out["train"].classes != out["val"].classes:
        raise EvalError(
            f"the train and val splits have different classes ({out['train'].classes[:4]}... vs "
            f"{out['val'].classes[:4]}...): the class folders must match"
        )
    return {**out, "classes": out["train"].classes, "data": tag, "run_cfg": run_cfg, "sha256": sha,
            "transform": transform_args, "backbone": backbone}


def run_protocol(kind: str, cfg: DictConfig, train: Features, val: Features, num_classes: int) -> dict[str, Any]:
    """{"params": ..., "rows": [{"protocol", "top1", "top5", ...}], plus kind-specific keys}."""
    if kind == "knn":
        scores = knn_class_scores(train.features, train.labels, val.features, num_classes, cfg.knn.k, cfg.knn.temperature)
        params = {"k": cfg.knn.k, "temperature": cfg.knn.temperature}
        row = {"protocol": f"kNN (k={cfg.knn.k}, T={cfg.knn.temperature})", **accuracies(scores, val.labels, num_classes)}
        return {"params": params, "rows": [row], **{m: row[m] for m in ("top1", "top5")}}
    if kind == "linear":
        params = OmegaConf.to_container(cfg.linear, resolve=True)
        probe = linear_probe(
            train.features, train.labels, val.features, num_classes, list(cfg.linear.lrs),
            list(cfg.linear.weight_decays), cfg.linear.epochs, cfg.linear.batch_size,
            cfg.linear.heldout_fraction, cfg.linear.seed,
        )  # fmt: skip
        metrics = accuracies(probe.scores, val.labels, num_classes)
        row = {"protocol": f"linear probe (lr={probe.lr:g}, wd={probe.weight_decay:g})", **metrics}
        sweep = [{"lr": lr, "weight_decay": wd, "heldout_top1": acc} for (lr, wd), acc in probe.heldout_top1.items()]
        return {"params": params, "rows": [row], **metrics, "chosen": {"lr": probe.lr, "weight_decay": probe.weight_decay},
                "sweep": sweep}
    shots = list(cfg.fewshot.shots) if OmegaConf.is_list(cfg.fewshot.shots) else [cfg.fewshot.shots]
    results = few_shot(train.features, train.labels, val.features, val.labels, num_classes, shots, cfg.fewshot.seeds)
    rows = []
    for n, r in results.items():
        rows.append({"protocol": f"{n}-shot, nearest class mean ({cfg.fewshot.seeds} seeds)",
                     "top1": r["top1_mean"], "top1_std": r["top1_std"], "top5": r["top5_mean"], "top5_std": r["top5_std"]})
    params = {"shots": shots, "seeds": cfg.fewshot.seeds, "classifier": "nearest class mean (CL2N)"}
    return {"params": params, "rows": rows, "shots": {str(n): r for n, r in results.items()}}


def merge_eval_json(path: Path, ckpt_name: str, which: str, data: str, kind: str, result: dict[str, Any]) -> dict:
    """Add one result to eval.json, keeping every other kind, backbone and dataset."""
    content: dict = {}
    if path.is_file():
        try:
            content = json.loads(path.read_text())
        except json.JSONDecodeError:
            content = {}  # a damaged file is rewritten rather than blocking the evaluation
    content.setdefault(ckpt_name, {}).setdefault(which, {}).setdefault(data, {})[kind] = result
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(content, indent=2) + "\n")
    os.replace(tmp, path)
    return content


def evaluate(kind: str, cfg: DictConfig) -> dict[str, Any]:
    """Run one protocol; returns the result written to eval.json (plus its path)."""
    check_config(kind, cfg)
    started = time.perf_counter()
    parts = features_of(cfg)
    train, val = parts["train"], parts["val"]
    protocol = run_protocol(kind, cfg, train, val, len(parts["classes"]))
    ckpt = Path(str(cfg.ckpt)).expanduser().resolve()
    result = {
        "kind": kind,
        "which": cfg.which,
        "data": parts["data"],
        **{k: v for k, v in protocol.items() if k != "rows"},
        "rows": protocol["rows"],
        "num_classes": len(parts["classes"]),
        "n_train": int(train.labels.numel()),
        "n_val": int(val.labels.numel()),
        "feature_dim": int(train.features.shape[1]),
        "transform": parts["transform"],
        "checkpoint": str(ckpt),
        "checkpoint_sha256": parts["sha256"],
        "method": str(parts["run_cfg"].method.get("_target_", "?")).rsplit(".", 1)[-1],
        "backbone": str(parts["run_cfg"].backbone.get("model_name", "?")),
        "features": {s: (str(f.path) if f.path else None) for s, f in (("train", train), ("val", val))},
        "features_from_cache": {s: f.from_cache for s, f in (("train", train), ("val", val))},
        "seconds": round(time.perf_counter() - started, 2),
        "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path = ckpt.parent / "eval.json"
    merge_eval_json(path, ckpt.name, cfg.which, parts["data"], kind, result)
    return {**result, "eval_json": str(path)}
