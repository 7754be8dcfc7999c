"""WebDataset tar shards: writing them from an image folder, and streaming them for training.

Format (readable by ``webdataset.WebDataset``): each sample is three tar members sharing
a key, ``<key>.<ext>`` (the original file's bytes, extension lower-cased), ``<key>.cls``
(the label as ASCII, -1 when unlabeled) and ``<key>.json`` ({"path": relative path,
"label": int}). The writer adds ``<prefix>-index.json`` beside the shards: sample count per
shard, class names, source. Tars are deterministic (sorted input, fixed seed, mtime 0).

Reading (:class:`ShardDataset`, an IterableDataset):

- ``urls``: local paths, brace ranges (``train-{000000..000099}.tar``) and globs, or a list.
- Epoch length: ``num_samples`` (from the index beside the shards unless set). Each rank
  yields exactly ``num_samples // (world_size * batch_size)`` full batches per epoch, so
  Lightning knows the epoch length and every rank takes the same number of steps.
- Split: each epoch the shard list is shuffled with a seed shared by every process
  (``seed``, epoch), then dealt to the world_size x num_workers reader slots, greedily
  balancing sample counts. With fewer shards than slots, every slot reads every shard
  and keeps every n-th sample instead. Shard sizes rarely divide evenly: each slot keeps
  the first samples of its deal up to its share of the epoch, and a slot whose deal is
  short takes the samples that others have over (reading those parts of their shards),
  so no sample is read twice in an epoch. The samples beyond the epoch's full batches
  wait for the next epoch's deal. (A skipped bad image is replaced by re-reading the
  slot's share: the only repeats.) The exact split needs the sample counts of the index
  beside the shards; with ``num_samples`` alone the shard sizes are estimated as equal
  shares, each reader reads its shards to the end, and one whose shards run short
  re-reads them.
- Shuffle: shard order per epoch, then a buffer of ``shuffle_buffer`` encoded samples
  (bytes, decoded only when they leave the buffer).
- Bad images are skipped and counted like image folders (``ssl_zoo.datasets.images``); the
  next sample takes the place, so batches stay full.
"""

from __future__ import annotations

import glob
import io
import json
import logging
import os
import random
import sys
import tarfile
from collections.abc import Callable, Iterator, Sequence

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from ssl_zoo.datasets.images import (
    IMAGE_EXTENSIONS,
    BadImageError,
    BadImageLog,
    DataError,
    check_policy,
    load_image,
)

log = logging.getLogger("ssl_zoo.data")

INDEX_SUFFIX = "-index.json"
FORMAT = "ssl_zoo-shards-v1"
_IMAGE_KEYS = tuple(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)


# --------------------------------------------------------------------------- writing


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o444
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def write_shards(
    src: str,
    dst: str,
    shard_size: int = 1000,
    prefix: str = "shard",
    shuffle: bool = True,
    seed: int = 0,
    verify: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict:
    """Write the images under ``src`` (an image folder, class subfolders optional) as
    tar shards of ``shard_size`` samples into ``dst``; returns the index (also written
    to ``dst/<prefix>-index.json``). Bad files are skipped and counted (``verify``
    decodes every image to catch truncated data too, ~2 ms per image)."""
    from ssl_zoo.datasets.imagefolder import ImageFolder

    if not isinstance(shard_size, int) or shard_size < 1:
        raise DataError(f"--shard-size must be an int >= 1, got {shard_size!r}")
    if not prefix or "/" in prefix or prefix.startswith("."):
        raise DataError(f"--prefix must be a plain file-name prefix, got {prefix!r}")
    folder = ImageFolder(src, config_key="SRC")
    dst = os.path.abspath(os.path.expanduser(dst))
    index_path = os.path.join(dst, prefix + INDEX_SUFFIX)
    existing = sorted(glob.glob(os.path.join(glob.escape(dst), glob.escape(prefix) + "-*.tar")))
    if (existing or os.path.exists(index_path)) and not overwrite:
        raise DataError(
            f"{dst} already holds shards with prefix {prefix!r} (e.g. "
            f"{os.path.basename(existing[0]) if existing else os.path.basename(index_path)}): "
            f"choose another DST or --prefix, or pass --overwrite"
        )
    os.makedirs(dst, exist_ok=True)
    for path in existing:
        os.remove(path)

    order = np.arange(len(folder))
    if shuffle:  # shards of mixed classes: the reader's buffer shuffle is then enough
        order = np.random.default_rng(seed).permutation(len(folder))
    bad = list(folder.bad_images())
    shards: list[dict] = []
    tar, current, written = None, None, 0

    def close() -> None:
        if tar is not None:
            tar.close()
            os.replace(current + ".tmp", current)

    bar = _progress(progress, len(order), f"sharding {folder.root}")
    try:
        for i in order.tolist():
            path, label = folder.path(i), folder.label(i)
            with open(path, "rb") as f:
                data = f.read()
            if verify:
                try:
                    load_image(data, name=path)
                except BadImageError as err:
                    bad.append((err.path, err.reason))
                    bar.advance()
                    continue
            if written % shard_size == 0:
                close()
                current = os.path.join(dst, f"{prefix}-{len(shards):06d}.tar")
                tar = tarfile.open(current + ".tmp", "w", format=tarfile.USTAR_FORMAT)
                shards.append({"name": os.path.basename(current), "num_samples": 0})
            key = f"{written:09d}"
            ext = os.path.splitext(path)[1].lower().lstrip(".")
            rel = os.path.relpath(path, folder.root).replace(os.sep, "/")
            _tar_member(tar, f"{key}.{ext}", data)
            _tar_member(tar, f"{key}.cls", str(label).encode())
            _tar_member(tar, f"{key}.json", json.dumps({"path": rel, "label": label}).encode())
            shards[-1]["num_samples"] += 1
            written += 1
            bar.advance()
        close()
    finally:
        bar.stop()
    if written == 0:
        raise DataError(f"no usable image under {folder.root}: nothing was written")
    index = {
        "format": FORMAT,
        "source": folder.root,
        "num_samples": written,
        "classes": folder.classes,
        "labeled": bool(folder.classes),
        "shard_size": shard_size,
        "shuffled": shuffle,
        "seed": seed,
        "skipped_bad_images": len(bad),
        "bad_image_examples": [name for name, _ in bad[:5]],
        "shards": shards,
    }
    tmp = index_path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(index, f, indent=1)
        f.write("\n")
    os.replace(tmp, index_path)
    return index


class _NoBar:
    def advance(self) -> None:
        pass

    def stop(self) -> None:
        pass


class _RichBar:
    def __init__(self, total: int, description: str) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeRemainingColumn(),
            transient=False,
        )
        self.task = self.progress.add_task(description, total=total)
        self.progress.start()

    def advance(self) -> None:
        self.progress.advance(self.task)

    def stop(self) -> None:
        self.progress.stop()


def _progress(enabled: bool, total: int, description: str):
    return _RichBar(total, description) if enabled else _NoBar()


# --------------------------------------------------------------------------- reading


def expand_urls(urls: str | Sequence[str], config_key: str = "data.urls") -> list[str]:
    """Local shard paths from paths, brace ranges and globs (in the given order; a glob's
    matches sorted)."""
    from braceexpand import braceexpand

    if urls is None or (isinstance(urls, str) and not urls.strip()):
        raise DataError(
            f"{config_key} is not set: give the shards, e.g. "
            f"'{config_key}=\"/data/shards/train-{{000000..000099}}.tar\"'"
        )
    items = [urls] if isinstance(urls, str) else list(urls)
    paths: list[str] = []
    missing: list[str] = []
    for item in items:
        item = str(item)
        if "://" in item or item.startswith("pipe:"):
            raise DataError(f"{config_key}: only local paths are supported, got {item!r} (mount or copy the shards)")
        for pattern in braceexpand(os.path.expanduser(item)):
            if any(c in pattern for c in "*?["):
                matches = sorted(glob.glob(pattern))
                if not matches:
                    missing.append(pattern)
                paths.extend(os.path.abspath(m) for m in matches)
            elif os.path.isfile(pattern):
                paths.append(os.path.abspath(pattern))
            else:
                missing.append(pattern)
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise DataError(f"{config_key}: no shard at {shown}: expected .tar files written by `ssl-zoo data shard`")
    if not paths:
        raise DataError(f"{config_key}={urls!r} names no shard")
    return paths


def read_indexes(paths: Sequence[str]) -> tuple[dict[str, int], list[str] | None]:
    """Sample counts of the shards listed by ``*-index.json`` files beside them, and the
    class names they agree on (None if they do not or say nothing)."""
    counts: dict[str, int] = {}
    classes: list[str] | None = None
    for directory in sorted({os.path.dirname(p) for p in paths}):
        for index_path in sorted(glob.glob(os.path.join(glob.escape(directory), "*" + INDEX_SUFFIX))):
            try:
                with open(index_path) as f:
                    index = json.load(f)
                entries = index["shards"]
            except (OSError, ValueError, KeyError, TypeError) as err:
                log.warning("data: ignoring unreadable shard index %s (%s)", index_path, err)
                continue
            for entry in entries:
                counts[os.path.join(directory, entry["name"])] = int(entry["num_samples"])
            if index.get("classes"):
                classes = list(index["classes"]) if classes in (None, index["classes"]) else None
    return counts, classes


def _samples(path: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) of one tar shard, in order (WebDataset grouping: the key is
    the member name up to the first dot of its base name)."""
    try:
        with tarfile.open(path, "r|*") as tar:
            key, sample = None, {}
            for member in tar:
                if not member.isfile():
                    continue
                directory, base = os.path.split(member.name)
                stem, dot, ext = base.partition(".")
                if not dot:
                    continue
                member_key = f"{directory}/{stem}" if directory else stem
                if member_key != key and sample:
                    yield key, sample
                    sample = {}
                key = member_key
                sample[ext.lower()] = tar.extractfile(member).read()
            if sample:
                yield key, sample
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"shard {path} is unreadable ({err}): rewrite it with `ssl-zoo data shard`") from None


def _label(sample: dict[str, bytes]) -> int:
    if "cls" in sample:
        try:
            return int(sample["cls"].decode().strip())
        except ValueError:
            pass
    if "json" in sample:
        try:
            return int(json.loads(sample["json"]).get("label", -1))
        except (ValueError, AttributeError):
            pass
    return -1


def _deal(order: Sequence[int], counts: Sequence[int], slots: int) -> list[list[int]]:
    """Shards (in ``order``) dealt to ``slots`` readers, each to the one with the fewest
    samples so far (ties: the lowest slot)."""
    dealt: list[list[int]] = [[] for _ in range(slots)]
    load = [0] * slots
    for shard in order:
        slot = min(range(slots), key=lambda s: (load[s], s))
        dealt[slot].append(shard)
        load[slot] += counts[shard]
    return dealt


Piece = tuple[int, range]  # (shard, indices of its samples in tar order)


def _split_exactly(own: list[list[Piece]], quotas: Sequence[int]) -> list[list[Piece]]:
    """Every slot's pieces cut to exactly its quota: each keeps the first ``quotas[s]``
    samples of ``own[s]``; the rest (in slot order) fill the slots that fall short, so no
    sample is assigned twice. If the samples run out (data.num_samples above what the
    shards hold), the last slots stay short and re-read their share in ``__iter__``."""
    kept: list[list[Piece]] = []
    spare: list[Piece] = []
    for pieces, quota in zip(own, quotas, strict=True):
        mine, need = [], quota
        for shard, indices in pieces:
            take = min(need, len(indices))
            if take:
                mine.append((shard, indices[:take]))
            if take < len(indices):
                spare.append((shard, indices[take:]))
            need -= take
        kept.append(mine)
    for mine, quota in zip(kept, quotas, strict=True):
        need = quota - sum(len(indices) for _, indices in mine)
        while need > 0 and spare:
            shard, indices = spare[0]
            take = min(need, len(indices))
            mine.append((shard, indices[:take]))
            if take < len(indices):
                spare[0] = (shard, indices[take:])
            else:
                spare.pop(0)
            need -= take
    return kept


class ShardDataset(IterableDataset):
    """Samples (transform(image), label) streamed from WebDataset tar shards.

    Args:
        urls: shard paths, brace ranges or globs (a string or a list).
        transform: applied to the (3, H, W) uint8 RGB image (may use
            ``max_decode_reduction`` like image folders).
        num_samples: samples in these shards; None reads the ``*-index.json`` beside
            them (written by ``ssl-zoo data shard``).
        shuffle_buffer: encoded samples held for the within-shard shuffle (0: none).
        shuffle_shards: shuffle the shard order every epoch.
        seed: the data order's seed (shard deals and buffers), e.g. the run's seed.
        on_bad_image: "skip" (default: drop and count) or "raise".
        config_key: the config key of ``urls`` (for error messages).

    Call :meth:`configure` (the datamodule does) before iterating under a DataLoader
    with several workers or processes; without it one iteration yields every sample once.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        transform: Callable | None = None,
        num_samples: int | None = None,
        shuffle_buffer: int = 1000,
        shuffle_shards: bool = True,
        seed: int = 0,
        on_bad_image: str = "skip",
        config_key: str = "data.urls",
    ) -> None:
        self.paths = expand_urls(urls, config_key)
        counts, self.classes = read_indexes(self.paths)
        self.classes = self.classes or []
        unknown = [p for p in self.paths if p not in counts]
        if num_samples is None:
            if unknown:
                raise DataError(
                    f"{config_key}: no sample count for {len(unknown)} shard(s) (e.g. {unknown[0]}): "
                    f"no *{INDEX_SUFFIX} beside them lists them. Set data.num_samples=<samples in "
                    f"these shards>, or write the shards with `ssl-zoo data shard`"
                )
            num_samples = sum(counts[p] for p in self.paths)
        elif not isinstance(num_samples, int) or isinstance(num_samples, bool) or num_samples < 1:
            raise DataError(f"data.num_samples must be an int >= 1 or null, got {num_samples!r}")
        elif not unknown and num_samples != sum(counts[p] for p in self.paths):
            log.info(
                "data: data.num_samples=%d (the shard index says %d): epochs follow data.num_samples",
                num_samples, sum(counts[p] for p in self.paths),
            )  # fmt: skip
        if not isinstance(shuffle_buffer, int) or shuffle_buffer < 0:
            raise DataError(f"data.shuffle_buffer must be an int >= 0, got {shuffle_buffer!r}")
        self.num_samples = num_samples
        # sizes for the deal: known counts, else equal shares
        self.shard_sizes = [counts.get(p, max(1, num_samples // len(self.paths))) for p in self.paths]
        # Without the index's counts a shard is read to its end: the split over readers is
        # then by shards only (a short reader re-reads its own, an over-full one stops).
        self._read_limits = [counts.get(p, sys.maxsize) for p in self.paths]
        self.transform = transform
        self.shuffle_buffer = shuffle_buffer
        self.shuffle_shards = shuffle_shards
        self.seed = int(seed)
        self.on_bad_image = check_policy(on_bad_image)
        self.bad_log = BadImageLog()
        self.epoch = 0
        self.plan: dict | None = None

    def configure(self, batch_size: int, num_workers: int, rank: int = 0, world_size: int = 1) -> None:
        """Fix the epoch: every rank yields num_samples // (world_size * batch_size) full
        batches, split over its workers (call in the training process, where rank and
        world size are known; workers receive the plan with the dataset)."""
        batches = self.num_samples // (world_size * batch_size)
        if batches < 1:
            raise DataError(
                f"{self.num_samples} samples in the shards make no full batch of data.batch_size="
                f"{batch_size} on each of {world_size} process(es): lower data.batch_size or add shards"
            )
        self.plan = {
            "batch_size": batch_size,
            "num_workers": max(1, num_workers),
            "rank": rank,
            "world_size": world_size,
            "batches": batches,
        }

    def __len__(self) -> int:
        """Samples this process yields per epoch (all of them before ``configure``)."""
        if self.plan is None:
            return self.num_samples
        return self.plan["batches"] * self.plan["batch_size"]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _slot_and_quota(self) -> tuple[int, int, int | None]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        if self.plan is None:
            if workers > 1:
                raise DataError("ShardDataset.configure(batch_size, num_workers, ...) must be called before iterating with several workers")
            return 0, 1, None
        plan = self.plan
        if workers != plan["num_workers"]:
            raise DataError(f"ShardDataset was configured for {plan['num_workers']} workers, iterated with {workers}")
        batches = plan["batches"] // workers + (worker < plan["batches"] % workers)
        return plan["rank"] * workers + worker, plan["world_size"] * workers, batches * plan["batch_size"]

    def _quotas(self, slots: int) -> list[int] | None:
        """Samples each reader slot yields this epoch (None: unconfigured, read all)."""
        if self.plan is None:
            return None
        batches, workers = self.plan["batches"], slots // self.plan["world_size"]
        per_worker = [batches // workers + (w < batches % workers) for w in range(workers)]
        return [per_worker[s % workers] * self.plan["batch_size"] for s in range(slots)]

    def _pieces(self, slot: int, slots: int, epoch: int) -> list[Piece]:
        """The (shard, sample indices) this slot reads in ``epoch``: the same deal is
        computed in every process and worker, so the slots' pieces never overlap."""
        order = list(range(len(self.paths)))
        if self.shuffle_shards:
            random.Random(f"{self.seed}-{epoch}").shuffle(order)
        if len(self.paths) >= slots:
            dealt = _deal(order, self.shard_sizes, slots)
            own = [[(shard, range(self._read_limits[shard])) for shard in mine] for mine in dealt]
        else:  # fewer shards than readers: everyone reads everything, keeps its n-th
            own, offset = [[] for _ in range(slots)], 0
            for shard in order:
                size = self.shard_sizes[shard]
                for s in range(slots):
                    indices = range((s - offset) % slots, self._read_limits[shard], slots)
                    if len(indices):
                        own[s].append((shard, indices))
                offset += size
        quotas = self._quotas(slots)
        return own[slot] if quotas is None else _split_exactly(own, quotas)[slot]

    def _stream(
        self, pieces: list[Piece], again: int, rng: random.Random
    ) -> Iterator[tuple[str, dict[str, bytes]]]:
        """The samples of ``pieces``; ``again`` > 0 re-reads them in another shard order
        (a slot short of its quota: it skipped bad images, or shard sizes were estimates)."""
        if again:
            pieces = list(pieces)
            rng.shuffle(pieces)
        for shard, indices in pieces:
            last = indices[-1]
            for index, (key, sample) in enumerate(_samples(self.paths[shard])):
                if index in indices:
                    yield f"{self.paths[shard]}:{key}", sample
                if index >= last:
                    break

    def _shuffled(self, stream: Iterator, rng: random.Random) -> Iterator:
        if self.shuffle_buffer <= 1:
            yield from stream
            return
        buffer: list = []
        for item in stream:
            if len(buffer) < self.shuffle_buffer:
                buffer.append(item)
                continue
            i = rng.randrange(len(buffer))
            buffer[i], item = item, buffer[i]
            yield item
        rng.shuffle(buffer)
        yield from buffer

    def _decode(self, name: str, sample: dict[str, bytes]):
        ext = next((e for e in _IMAGE_KEYS if e in sample), None)
        if ext is None:
            raise BadImageError(name, f"no image in the sample (members: {', '.join(sorted(sample))})")
        reduction = getattr(self.transform, "max_decode_reduction", None)
        image = load_image(sample[ext], name=f"{name}.{ext}", reduction=reduction)
        return (self.transform(image) if self.transform is not None else image), _label(sample)

    def __iter__(self):
        slot, slots, quota = self._slot_and_quota()
        epoch = self.epoch
        self.epoch += 1
        rng = random.Random(f"{self.seed}-{epoch}-{slot}")
        pieces = self._pieces(slot, slots, epoch)
        yielded, passes = 0, 0
        while quota is None or yielded < quota:
            seen = 0
            for name, sample in self._shuffled(self._stream(pieces, passes, rng), rng):
                seen += 1
                try:
                    item = self._decode(name, sample)
                except BadImageError as err:
                    if self.on_bad_image == "raise":
                        raise BadImageError(err.path, f"{err.reason} (data.on_bad_image=raise)") from None
                    self.bad_log.record(err.path, err.reason)
                    continue
                yield item
                yielded += 1
                if quota is not None and yielded >= quota:
                    return
            passes += 1
            if quota is None:
                return
            if seen == 0 or (passes > 1 and yielded == 0):
                raise DataError(
                    f"reader {slot} of {slots} found no usable sample in its shards "
                    f"({len(self.paths)} shard(s), e.g. {self.paths[0]})"
                )

    def bad_images(self) -> list[tuple[str, str]]:
        return self.bad_log.entries()
