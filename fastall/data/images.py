"""Robust image decoding: any Pillow-readable file (by content, not extension) to uint8 RGB [3, H, W].

Uncompressed 24-bit BMP (C-NMC's format) is read straight from the file's bytes with numpy, giving Pillow's
pixels exactly; everything else goes through Pillow.
"""

from __future__ import annotations

import errno
import os
import struct
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from fastall.errors import FastallError

DEFAULT_MAX_PIXELS = 64_000_000
MAX_PIXELS_ENV = "FASTALL_MAX_PIXELS"

_max_pixels: int | None = None
_BMP_HEADERS = (40, 52, 56, 108, 124)  # BITMAPINFOHEADER and its extensions (V2, V3, V4, V5)

warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class BadImageError(FastallError):
    """A file that cannot be decoded; the message names the file and the problem on one line."""


def set_max_pixels(limit: int | None) -> None:
    """Set the decompression-bomb limit (pixels per image); None returns to the env var or the default."""
    global _max_pixels
    if limit is not None and limit <= 0:
        raise FastallError(f"max pixels must be positive, got {limit}")
    _max_pixels = limit


def get_max_pixels() -> int:
    """The limit in force: ``set_max_pixels``, else ``$FASTALL_MAX_PIXELS``, else 64 MP."""
    if _max_pixels is not None:
        return _max_pixels
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(float(raw))
    except ValueError:
        value = 0
    if value <= 0:
        raise FastallError(f"{MAX_PIXELS_ENV} must be a positive number of pixels, got {raw!r}")
    return value


def _fail(path: Path, problem: str) -> BadImageError:
    return BadImageError(f"{path}: {' '.join(problem.split())}")


def _open_bytes(path: Path):
    try:
        fh = open(path, "rb")  # noqa: SIM115 - closed by the caller
    except FileNotFoundError:
        reason = "broken symlink (target missing)" if os.path.islink(path) else "file not found"
        raise _fail(path, reason) from None
    except PermissionError:
        raise _fail(path, "permission denied (cannot read the file)") from None
    except IsADirectoryError:
        raise _fail(path, "is a folder, not an image") from None
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise _fail(path, "symlink loop") from None
        raise _fail(path, f"cannot open ({err.strerror or err})") from None
    return fh


def decode_image(path: str | Path) -> torch.Tensor:
    """Decode ``path`` to a uint8 RGB tensor [3, H, W] (EXIF orientation applied, alpha composited on black).

    Raises ``BadImageError`` for empty, truncated, non-image, unreadable or over-large files.
    """
    path = Path(path)
    limit = get_max_pixels()
    if Image.MAX_IMAGE_PIXELS is not None and limit > Image.MAX_IMAGE_PIXELS:
        Image.MAX_IMAGE_PIXELS = limit
    with _open_bytes(path) as fh:
        try:
            if os.fstat(fh.fileno()).st_size == 0:
                raise _fail(path, "empty file (0 bytes)")
            if fh.read(2) == b"BM":
                fh.seek(0)
                fast = bmp_pixels(fh.read())
                if fast is not None:
                    _check_pixels(path, fast.shape[1], fast.shape[0], limit)
                    return torch.from_numpy(fast.transpose(2, 0, 1).copy())
            fh.seek(0)
            with Image.open(fh) as im:
                _check_pixels(path, *im.size, limit)
                im.load()
                arr = _to_rgb(_oriented(im))
        except BadImageError:
            raise
        except UnidentifiedImageError:
            raise _fail(path, "not an image (unrecognised format)") from None
        except Image.DecompressionBombError as err:
            raise _fail(path, f"refused as a decompression bomb ({err}); raise {MAX_PIXELS_ENV}") from None
        except (OSError, SyntaxError, EOFError) as err:
            raise _fail(path, f"truncated or corrupt image ({err})") from None
        except Exception as err:  # Pillow plug-ins raise many types on bad input
            raise _fail(path, f"cannot decode ({type(err).__name__}: {err})") from None
    return torch.from_numpy(arr.transpose(2, 0, 1).copy())


def _check_pixels(path: Path, w: int, h: int, limit: int) -> None:
    if w * h > limit:
        raise _fail(
            path,
            f"{w}x{h} = {w * h:,} pixels is over the limit of {limit:,} "
            f"(decompression bomb guard); raise it with {MAX_PIXELS_ENV}=<pixels> "
            "or fastall.data.images.set_max_pixels()",
        )


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
        grey = np.asarray(im, dtype=np.float64) if mode == "I" else np.asarray(im).astype(np.float64)
        grey = np.clip(np.round(grey / 257.0), 0, 255).astype(np.uint8)
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
