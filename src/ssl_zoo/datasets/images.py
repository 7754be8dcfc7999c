"""One image loader for image folders and shards, and the bookkeeping of bad files.

``load_image`` turns a file (path or bytes) into a (3, H, W) uint8 RGB tensor or raises
:class:`BadImageError` saying what is wrong with it:

- empty file, not an image (PIL cannot identify it), truncated or corrupt data (PIL
  raises while decoding), an image above PIL's decompression-bomb limit
  (``PIL.Image.MAX_IMAGE_PIXELS`` pixels; raise it in code for huge scans), pixel
  formats without a standard 8-bit meaning (32-bit float "F").
- every valid image becomes RGB: grayscale and bilevel are replicated, palette and CMYK
  converted, alpha composited over black (premultiplied: colours hidden under
  transparent pixels never leak in), 16-bit grayscale scaled to 8 bits (round(v / 257),
  not clipped; Pillow already reads 16-bit RGB PNGs as their high byte). Multi-frame
  files give their first frame. An image smaller than the crop is valid: the crop
  upsamples it.
- JPEGs are decoded smaller when the transform allows (``reduction(width, height)``,
  e.g. ``MultiCropTransform.max_decode_reduction``; PIL draft mode).

Bad files are found in two places. ``scan_files`` checks what is cheap before training
(extension, size, header: format, size, mode, bomb limit, and whether a JPEG or PNG ends
with its end-of-image marker, decoding it in full when not; ~0.1-0.2 ms per file), so
empty, non-image, truncated and oversized files are dropped and counted at setup.
Corrupt data inside a complete file only shows up when decoded, in the dataloader
workers, which are separate processes: each
dataset owns a :class:`BadImageLog`, a directory where every process appends
"path<TAB>reason" lines, so the training process reads back the failures of every
worker (and of every epoch) without shared memory or queues. The count is of distinct
files.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import warnings
import weakref
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError

from ssl_zoo.errors import UserError

IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp",
    ".tif", ".tiff", ".ppm", ".pgm", ".pbm", ".pnm",
)  # fmt: skip
BAD_IMAGE_POLICIES = ("skip", "raise")
EXAMPLES = 5  # bad files named in warnings and reports

Reduction = Callable[[int, int], int]


def pil_rgb_to_tensor(image: Image.Image) -> torch.Tensor:
    """(3, H, W) uint8 view of an RGB PIL image's pixels (one copy, channels-last memory,
    which torch's uint8 resize kernels read directly). Read-only: do not write to it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "non-writable array"
        return torch.from_numpy(np.asarray(image)).permute(2, 0, 1)


class DataError(UserError):
    """The data cannot be used as configured: the message says what, where and what to do."""


class BadImageWarning(UserWarning):
    """Bad files were skipped (data.on_bad_image=skip); shown on the console."""


class BadImageError(DataError):
    """One file is not a usable image."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"bad image {path}: {reason}")
        self.path, self.reason = path, reason


def check_policy(on_bad_image: str) -> str:
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise DataError(
            f"data.on_bad_image must be one of {list(BAD_IMAGE_POLICIES)}, got {on_bad_image!r}"
        )
    return on_bad_image


def has_image_extension(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


# --------------------------------------------------------------------------- decoding


def _open(source: str | Path | bytes, name: str) -> Image.Image:
    """Open (header only) and check what the header tells."""
    if isinstance(source, bytes | bytearray | memoryview):
        if len(source) == 0:
            raise BadImageError(name, "empty file (0 bytes)")
        stream = io.BytesIO(source)
    else:
        try:
            size = os.path.getsize(source)
        except OSError as err:
            raise BadImageError(name, f"unreadable: {err.strerror or err}") from None
        if size == 0:
            raise BadImageError(name, "empty file (0 bytes)")
        stream = source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(stream)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        raise BadImageError(
            name,
            f"above PIL's decompression-bomb limit: {err} (PIL.Image.MAX_IMAGE_PIXELS; "
            f"raise it in code if such images are intended)",
        ) from None
    except UnidentifiedImageError:
        raise BadImageError(name, "not an image (PIL cannot identify the format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise BadImageError(name, f"unreadable header: {err}") from None
    if image.mode == "F":
        raise BadImageError(name, "32-bit float pixels (mode F) have no standard 8-bit meaning")
    return image


_TAILS = {"JPEG": b"\xff\xd9", "PNG": b"IEND\xaeB`\x82"}  # end-of-image markers


def _tail(source: str | Path | bytes, length: int) -> bytes:
    if isinstance(source, bytes | bytearray | memoryview):
        return bytes(source[-length:])
    with open(source, "rb") as f:
        f.seek(max(0, os.path.getsize(source) - length))
        return f.read()


def check_header(source: str | Path | bytes, name: str | None = None) -> tuple[int, int]:
    """(width, height) if the file looks like a usable image, else BadImageError.

    Reads the header, and the last bytes of JPEG and PNG files: a file that does not end
    with its end-of-image marker (truncated, or followed by extra data) is decoded in
    full to decide, so truncated files are found here rather than during training.
    """
    name = str(source) if name is None else name
    image = _open(source, name)
    try:
        marker = _TAILS.get(image.format)
        if marker is not None and _tail(source, len(marker)) != marker:
            try:
                image.load()
            except Exception as err:  # noqa: BLE001 - decoders raise anything on broken data
                raise BadImageError(name, f"cannot decode: {str(err) or type(err).__name__}") from None
        return image.size
    finally:
        image.close()


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode.startswith("I"):  # I;16, I;16B, I;16L, I;16N, I (32-bit): 16-bit range
        values = np.asarray(image).astype(np.float32)
        gray = np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    elif mode in ("PA", "LA", "La", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        black = Image.new("RGBA", image.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, image).convert("RGB")
    return image.convert("RGB")


def load_image(
    source: str | Path | bytes, name: str | None = None, reduction: Reduction | None = None
) -> torch.Tensor:
    """Decode one file to a (3, H, W) uint8 RGB tensor; BadImageError if it is not usable.

    Args:
        source: a path, or the bytes of the file (shards).
        name: how to name the file in errors (default: the path).
        reduction: ``(width, height) -> k``; a JPEG is decoded at 1/k of its size
            (k in 1, 2, 4, 8; PIL draft mode) when the caller says nothing is lost.
    """
    name = str(source) if name is None else name
    image = _open(source, name)
    try:
        if reduction is not None and image.format == "JPEG":
            width, height = image.size
            k = reduction(width, height)
            if k > 1:
                image.draft(image.mode, (max(1, width // k), max(1, height // k)))
        image.load()
        return pil_rgb_to_tensor(_to_rgb(image))
    except BadImageError:
        raise
    except Exception as err:  # noqa: BLE001 - decoders raise anything on broken data
        reason = str(err) or type(err).__name__
        raise BadImageError(name, f"cannot decode: {reason}") from None
    finally:
        image.close()


# Truncated JPEGs must fail, not come back half grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


# ----------------------------------------------------------------------- bookkeeping


def scan_files(
    files: Iterable[tuple[str, str]], check_headers: bool = True
) -> tuple[list[str], list[tuple[str, str]]]:
    """Split (path, display name) pairs into usable paths and (name, reason) bad ones.

    Checked here: the extension, empty files and, with ``check_headers``, the header
    (not an image, bomb limit, unsupported pixel format); data errors are the workers'.
    """
    good, bad = [], []
    for path, name in files:
        if not has_image_extension(path):
            ext = os.path.splitext(path)[1] or "no extension"
            bad.append((name, f"not an image file ({ext}; images are {', '.join(IMAGE_EXTENSIONS[:6])}, ...)"))
            continue
        try:
            if check_headers:
                check_header(path, name)
            elif os.path.getsize(path) == 0:
                raise BadImageError(name, "empty file (0 bytes)")
        except BadImageError as err:
            bad.append((name, err.reason))
            continue
        good.append(path)
    return good, bad


def _remove_dir(path: str, owner_pid: int) -> None:
    if os.getpid() == owner_pid:  # forked workers inherit this finaliser: not theirs
        shutil.rmtree(path, ignore_errors=True)


class BadImageLog:
    """Bad files of one dataset, from setup and from every process that decodes it.

    ``record`` appends to a file named after the calling process in a temporary
    directory created by the process that built the dataset (which removes it when the
    dataset goes away); ``report`` merges them, counting distinct files.
    """

    def __init__(self, at_setup: Sequence[tuple[str, str]] = ()) -> None:
        self.at_setup = list(at_setup)
        self.directory = tempfile.mkdtemp(prefix="ssl_zoo_bad_images_")
        self._warned = 0
        weakref.finalize(self, _remove_dir, self.directory, os.getpid())

    def record(self, name: str, reason: str) -> None:
        line = f"{name}\t{reason}".replace("\n", " ") + "\n"
        try:
            with open(os.path.join(self.directory, f"{os.getpid()}.tsv"), "a") as f:
                f.write(line)
        except OSError:  # the directory is gone (dataset finalised): nothing to report to
            pass
        if self._warned < EXAMPLES:
            self._warned += 1
            message = f"data: skipping bad image {name}: {reason} (data.on_bad_image=skip; counted in summary.json)"
            warnings.warn(message, BadImageWarning, stacklevel=2)

    def entries(self) -> list[tuple[str, str]]:
        seen: dict[str, str] = dict(self.at_setup)
        try:
            names = sorted(os.listdir(self.directory))
        except OSError:
            names = []
        for file in names:
            try:
                with open(os.path.join(self.directory, file)) as f:
                    for line in f:
                        name, _, reason = line.rstrip("\n").partition("\t")
                        seen.setdefault(name, reason)
            except OSError:
                continue
        return list(seen.items())

    def report(self) -> dict:
        return bad_image_report(self.entries())


def bad_image_report(entries: Iterable[tuple[str, str]]) -> dict:
    """{"count": distinct bad files, "examples": the first few, "reasons": example -> why}."""
    unique: dict[str, str] = {}
    for name, reason in entries:
        unique.setdefault(name, reason)
    examples = list(unique)[:EXAMPLES]
    return {
        "count": len(unique),
        "examples": examples,
        "reasons": {name: unique[name] for name in examples},
    }


def warn_skipped(bad: Sequence[tuple[str, str]], where: str) -> None:
    if not bad:
        return
    shown = "; ".join(f"{name} ({reason})" for name, reason in bad[:EXAMPLES])
    more = f" and {len(bad) - EXAMPLES} more" if len(bad) > EXAMPLES else ""
    warnings.warn(
        f"data: skipping {len(bad)} bad file(s) under {where} (data.on_bad_image=skip): "
        f"{shown}{more}. They are counted in summary.json (bad_images); "
        f"data.on_bad_image=raise stops on them instead.",
        BadImageWarning,
        stacklevel=1,
    )
