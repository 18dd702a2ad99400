"""Robust image decoding: a BMP, PNG, JPEG or TIFF file (by content, not extension) to uint8 RGB [3, H, W].

Uncompressed 24-bit BMP (C-NMC's format) is read straight from the file's bytes with numpy, giving Pillow's
pixels exactly; everything else goes through Pillow, opened for those formats only (an EPS or any other
format Pillow has a plug-in for is refused before a plug-in sees it). Only regular files are read (a FIFO or
device is refused, never opened for a blocking read), and the decode is bounded: a pixel limit (default
16,777,216 = 4096 x 4096, far above a cell crop) and a memory budget of 16 bytes per allowed pixel, against
the peak that each image mode takes to decode and convert (16-bit, alpha and float images cost more per
pixel than 8-bit RGB).
"""

from __future__ import annotations

import errno
import io
import os
import struct
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from fastall.errors import FastallError
from fastall.system.files import open_regular

DEFAULT_MAX_PIXELS = 4096 * 4096
MAX_PIXELS_ENV = "FASTALL_MAX_PIXELS"
BUDGET_BYTES_PER_PIXEL = 16
FORMATS = ("BMP", "PNG", "JPEG", "TIFF")
FORMAT_NAMES = "BMP, PNG, JPEG or TIFF"
_RAW_BYTES = {
    "1": 1,
    "L": 1,
    "P": 1,
    "I;16": 2,
    "I;16B": 2,
    "I;16L": 2,
    "I;16N": 2,
}  # Pillow's storage; else 4

_max_pixels: int | None = None
_BMP_HEADERS = (40, 52, 56, 108, 124)  # BITMAPINFOHEADER and its extensions (V2, V3, V4, V5)
_open_lock = threading.Lock()


class BadImageError(FastallError):
    """A file that cannot be decoded; the message names the file and the problem on one line."""


@contextmanager
def pixel_limit(limit: int | None) -> Iterator[int]:
    """Decode under ``limit`` pixels per image inside the block (None: ``$FASTALL_MAX_PIXELS`` or the
    default); yields the limit in force. Pillow's own bomb limit is raised to match while inside, and both
    return to what they were on exit. Decoding worker processes that are forked inherit it; the CLI also
    exports ``FASTALL_MAX_PIXELS`` for any other process it starts."""
    global _max_pixels
    if limit is not None and limit <= 0:
        raise FastallError(f"max pixels must be positive, got {limit}")
    before, pillow_before = _max_pixels, Image.MAX_IMAGE_PIXELS
    _max_pixels = limit
    try:
        in_force = get_max_pixels()
        if pillow_before is not None and in_force > pillow_before:
            Image.MAX_IMAGE_PIXELS = in_force
        yield in_force
    finally:
        _max_pixels, Image.MAX_IMAGE_PIXELS = before, pillow_before


def get_max_pixels() -> int:
    """The limit in force: ``pixel_limit``, else ``$FASTALL_MAX_PIXELS``, else 16,777,216 (4096 x 4096)."""
    if _max_pixels is not None:
        return _max_pixels
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(raw))
    except (ValueError, OverflowError):
        value = 0
    if value <= 0:
        raise FastallError(f"{MAX_PIXELS_ENV} must be a positive number of pixels, got {raw!r}")
    return value


def decode_bytes_needed(width: int, height: int, mode: str) -> int:
    """About the peak memory of decoding and converting a ``width x height`` image of Pillow ``mode``: the
    decoded pixels, an EXIF-rotated copy, and the conversion to RGB uint8 (heavier for alpha and float)."""
    raw = _RAW_BYTES.get(mode, 4)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        convert = 19
    elif mode == "F":
        convert = 41
    elif mode.startswith("I"):
        convert = 13
    else:
        convert = 6 if mode == "RGB" else 10
    return width * height * (2 * raw + convert)


def _fail(path: Path, problem: str) -> BadImageError:
    return BadImageError(f"{path}: {' '.join(problem.split())}")


def _open_bytes(path: Path):
    try:
        return open_regular(path)
    except FileNotFoundError:
        reason = "broken symlink (target missing)" if os.path.islink(path) else "file not found"
        raise _fail(path, reason) from None
    except PermissionError:
        raise _fail(path, "permission denied (cannot read the file)") from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise _fail(path, "symlink loop") from err
        if (err.strerror or "").startswith("a folder"):
            raise _fail(path, "is a folder, not an image") from err
        if err.errno == errno.EINVAL and err.strerror:
            raise _fail(path, f"is {err.strerror}") from err
        raise _fail(path, f"cannot open ({err.strerror or err})") from err


def _check_size(path: Path, w: int, h: int, mode: str, limit: int) -> None:
    hint = f"raise it with `fastall --max-pixels N` or {MAX_PIXELS_ENV}=N"
    if w * h > limit:
        raise _fail(
            path,
            f"{w}x{h} = {w * h:,} pixels is over the limit of {limit:,} (fastall's decompression-bomb "
            f"guard); {hint}",
        )
    needed, budget = decode_bytes_needed(w, h, mode), limit * BUDGET_BYTES_PER_PIXEL
    if needed > budget:
        raise _fail(
            path,
            f"{w}x{h} {mode} image needs about {needed / 2**20:,.0f} MiB to decode, over fastall's "
            f"budget of {budget / 2**20:,.0f} MiB ({BUDGET_BYTES_PER_PIXEL} bytes x {limit:,} pixels); "
            + hint,
        )


def read_image_file(path: str | Path) -> tuple[bytes, os.stat_result]:
    """The bytes of a regular file and its ``stat`` (``BadImageError`` for anything else, or empty)."""
    path = Path(path)
    with _open_bytes(path) as fh:
        st = os.fstat(fh.fileno())
        if st.st_size == 0:
            raise _fail(path, "empty file (0 bytes)")
        budget = get_max_pixels() * BUDGET_BYTES_PER_PIXEL
        if st.st_size > budget:
            raise _fail(
                path,
                f"file of {st.st_size / 2**20:,.0f} MiB is over fastall's decode budget of "
                f"{budget / 2**20:,.0f} MiB; raise it with `fastall --max-pixels N` or {MAX_PIXELS_ENV}=N",
            )
        try:
            return fh.read(), st
        except OSError as err:
            raise _fail(path, f"cannot read ({err.strerror or err})") from err


def decode_image(path: str | Path) -> torch.Tensor:
    """Decode ``path`` to a uint8 RGB tensor [3, H, W] (EXIF orientation applied, alpha composited on black).

    Raises ``BadImageError`` for empty, truncated, non-image, unreadable or over-large files.
    """
    return decode_bytes(read_image_file(path)[0], path)


def decode_bytes(data: bytes, path: str | Path) -> torch.Tensor:
    """:func:`decode_image` of a file's content already read (``path`` names it in messages)."""
    path = Path(path)
    limit = get_max_pixels()
    try:
        fast = bmp_pixels(data)
        if fast is not None:
            _check_size(path, fast.shape[1], fast.shape[0], "RGB", limit)
            return torch.from_numpy(fast.transpose(2, 0, 1).copy())
        with _pillow_open(data) as im:
            _check_size(path, *im.size, im.mode, limit)
            im.load()
            arr = _to_rgb(_oriented(im))
    except BadImageError:
        raise
    except Image.DecompressionBombError:
        raise _fail(path, _over_pillow(limit)) from None
    except UnidentifiedImageError:
        raise _fail(path, f"not an image fastall reads (a {FORMAT_NAMES} file)") from None
    except (OSError, SyntaxError, EOFError) as err:
        raise _fail(path, f"truncated or corrupt image ({err})") from err
    except Exception as err:  # Pillow plug-ins raise many types on bad input
        raise _fail(path, f"cannot decode ({type(err).__name__}: {err})") from err
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


def _over_pillow(limit: int) -> str:
    """The message for an image that Pillow's own bomb check refused at open (over twice its limit)."""
    pillow = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    hint = f"raise it with `fastall --max-pixels N` or {MAX_PIXELS_ENV}=N"
    if pillow < limit:
        return (
            f"over {pillow:,} pixels, Pillow's own decompression-bomb limit; {hint} (it raises Pillow's too)"
        )
    return f"over {pillow:,} pixels, over the limit of {limit:,} (fastall's decompression-bomb guard); {hint}"


def _pillow_open(data: bytes) -> Image.Image:
    """Pillow's image of ``data`` (header only, no pixel yet), without Pillow's bomb warning: fastall's own
    limit (``_check_size``) applies before any pixel is decoded. The warnings filter is scoped to the call."""
    with _open_lock, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data), formats=FORMATS)


def bmp_pixels(data: bytes) -> np.ndarray | None:
    """HxWx3 RGB view of an uncompressed 24-bit (BI_RGB) BMP, straight from its bytes (bottom-up or
    top-down rows); None for every other kind of file, which Pillow decodes instead."""
    if len(data) < 54 or data[:2] != b"BM":
        return None
    (offset,) = struct.unpack_from("<I", data, 10)
    header, width, height, planes, bits, compression = struct.unpack_from("<IiiHHI", data, 14)
    if header not in _BMP_HEADERS or (planes, bits, compression) != (1, 24, 0) or width <= 0 or height == 0:
        return None
    rows, stride = abs(height), (width * 3 + 3) & ~3
    if offset < 14 + header or offset + stride * rows > len(data):
        return None
    pixels = np.frombuffer(data, np.uint8, stride * rows, offset).reshape(rows, stride)
    pixels = pixels[:, : width * 3].reshape(rows, width, 3)[:, :, ::-1]
    return pixels[::-1] if height > 0 else pixels


def _oriented(im: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(im) or im
    except Exception:  # a broken EXIF block is no reason to reject the pixels
        return im


def _to_rgb(im: Image.Image) -> np.ndarray:
    """HxWx3 uint8 array of any Pillow mode; 16/32-bit grey scaled to 8 bit, alpha composited on black."""
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        wide = np.asarray(im).astype(np.int64 if mode == "I" else np.uint32)
        grey = np.clip((wide + 128) // 257, 0, 255).astype(np.uint8)  # round(v / 257): 65535 -> 255
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        grey = np.asarray(im, dtype=np.float64)
        finite = grey[np.isfinite(grey)]
        scale = 255.0 if finite.size and finite.max() <= 1.0 else 1.0
        grey = np.clip(np.nan_to_num(grey * scale), 0, 255).round().astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if has_alpha:
        rgba = np.asarray(im.convert("RGBA"), dtype=np.uint16)
        rgb = (rgba[:, :, :3] * rgba[:, :, 3:4] + 127) // 255
        return rgb.astype(np.uint8)
    if mode != "RGB":
        im = im.convert("RGB")
    return np.asarray(im, dtype=np.uint8)
