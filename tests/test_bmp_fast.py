"""The BMP fast path: uncompressed 24-bit BMPs decoded from their bytes give exactly Pillow's pixels; every
other BMP goes through Pillow, bad ones fail as before."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from PIL import Image

from fastall.data.images import BadImageError, bmp_pixels, decode_image


def _pillow(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).transpose(2, 0, 1)


def _rgb(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _handmade(
    rgb: np.ndarray, *, top_down: bool, header: int = 40, bits: int = 24, compression: int = 0
) -> bytes:
    """A 24-bit BI_RGB BMP written by hand (Pillow only writes bottom-up BITMAPINFOHEADER files)."""
    h, w, _ = rgb.shape
    stride = (w * 3 + 3) & ~3
    rows = rgb[:, :, ::-1] if top_down else rgb[::-1, :, ::-1]
    body = b"".join(r.tobytes() + b"\0" * (stride - w * 3) for r in rows)
    info = struct.pack(
        "<IiiHHIIiiII", header, w, -h if top_down else h, 1, bits, compression, len(body), 2835, 2835, 0, 0
    )
    info += b"\0" * (header - len(info))
    offset = 14 + len(info)
    return struct.pack("<2sIHHI", b"BM", offset + len(body), 0, 0, offset) + info + body


@pytest.mark.parametrize(("h", "w"), [(1, 1), (5, 1), (3, 2), (4, 3), (7, 5), (9, 8), (2, 13)])
def test_pillow_written_bmp_gives_pillows_pixels(tmp_path, h, w):
    path = tmp_path / "a.bmp"
    Image.fromarray(_rgb(h, w, h * 100 + w)).save(path)
    assert bmp_pixels(path.read_bytes()) is not None  # the fast path is taken
    out = decode_image(path)
    assert out.dtype.is_floating_point is False and out.is_contiguous()
    assert np.array_equal(out.numpy(), _pillow(path))


@pytest.mark.parametrize("header", [40, 108, 124])
@pytest.mark.parametrize("top_down", [False, True])
def test_handmade_bmp_headers_and_row_orders(tmp_path, header, top_down):
    rgb = _rgb(6, 7, header)
    path = tmp_path / "b.bmp"
    path.write_bytes(_handmade(rgb, top_down=top_down, header=header))
    assert bmp_pixels(path.read_bytes()) is not None
    assert np.array_equal(decode_image(path).numpy(), _pillow(path))
    assert np.array_equal(decode_image(path).numpy(), rgb.transpose(2, 0, 1))


@pytest.mark.parametrize("mode", ["P", "L", "RGBA", "1"])
def test_other_bmps_fall_back_to_pillow(tmp_path, mode):
    path = tmp_path / "c.bmp"
    Image.fromarray(_rgb(5, 6, 3)).convert(mode).save(path)
    assert bmp_pixels(path.read_bytes()) is None
    assert np.array_equal(decode_image(path).numpy(), _pillow(path))


def test_compressed_or_odd_headers_are_not_taken(tmp_path):
    rgb = _rgb(4, 4, 9)
    assert bmp_pixels(_handmade(rgb, top_down=False, compression=3)) is None  # BI_BITFIELDS
    assert bmp_pixels(_handmade(rgb, top_down=False, header=64)) is None  # OS/2 2.x
    assert bmp_pixels(b"BM" + b"\0" * 10) is None


def test_truncated_bmp_fails_as_before(tmp_path):
    path = tmp_path / "cut.bmp"
    Image.fromarray(_rgb(40, 40, 1)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert bmp_pixels(path.read_bytes()) is None
    with pytest.raises(BadImageError, match="cut.bmp: truncated or corrupt"):
        decode_image(path)


def test_synthetic_cnmc_cells_decode_identically(tmp_path):
    from fastall.data.synth import synthesize
    from fastall.data.walk import find_images

    synthesize(tmp_path, patients_per_class=1, images_per_patient=2, size=45, prelim=False)
    paths, _ = find_images([tmp_path])
    assert paths
    for path in paths:
        assert bmp_pixels(path.read_bytes()) is not None
        assert np.array_equal(decode_image(path).numpy(), _pillow(path))
