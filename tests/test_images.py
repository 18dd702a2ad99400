"""decode_image on a corpus of bad and odd files made here: conversions, EXIF, bombs, and one-line errors."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fastall.data import images
from fastall.data.images import BadImageError, decode_image
from fastall.data.synth import _bmp_bytes
from fastall.errors import FastallError


@pytest.fixture(autouse=True)
def _default_limit(monkeypatch):
    monkeypatch.delenv(images.MAX_PIXELS_ENV, raising=False)
    yield
    assert images._max_pixels is None  # every limit set in a test was scoped


def _rgb(h: int = 6, w: int = 5) -> np.ndarray:
    return np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3) * 3


def _bad(path, fragment: str) -> str:
    with pytest.raises(BadImageError) as info:
        decode_image(path)
    message = str(info.value)
    assert message.startswith(str(path)) and fragment in message and "\n" not in message
    assert isinstance(info.value, FastallError)
    return message


def test_bmp_round_trip_and_pillow_agree(tmp_path):
    arr = _rgb(7, 5)
    (tmp_path / "a.bmp").write_bytes(_bmp_bytes(arr))
    out = decode_image(tmp_path / "a.bmp")
    assert out.dtype == torch.uint8 and out.shape == (3, 7, 5)
    assert np.array_equal(out.permute(1, 2, 0).numpy(), arr)
    assert np.array_equal(np.asarray(Image.open(tmp_path / "a.bmp")), arr)


def test_content_not_extension(tmp_path):
    Image.fromarray(_rgb()).save(tmp_path / "png inside.bmp", format="PNG")
    assert np.array_equal(decode_image(tmp_path / "png inside.bmp").permute(1, 2, 0).numpy(), _rgb())
    Image.fromarray(_rgb()).save(tmp_path / "ünïcode çell ✓.tif")
    assert decode_image(tmp_path / "ünïcode çell ✓.tif").shape == (3, 6, 5)


def test_one_pixel(tmp_path):
    Image.new("RGB", (1, 1), (10, 20, 30)).save(tmp_path / "one.bmp")
    assert decode_image(tmp_path / "one.bmp").flatten().tolist() == [10, 20, 30]


def test_grayscale_palette_and_cmyk(tmp_path):
    Image.fromarray(np.full((3, 4), 77, np.uint8), "L").save(tmp_path / "g.bmp")
    assert (decode_image(tmp_path / "g.bmp") == 77).all()
    pal = Image.new("P", (4, 3))
    pal.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
    pal.putpixel((1, 1), 1)
    pal.save(tmp_path / "p.bmp")
    out = decode_image(tmp_path / "p.bmp")
    assert out[:, 1, 1].tolist() == [200, 100, 50] and out[:, 0, 0].tolist() == [0, 0, 0]
    Image.new("CMYK", (2, 2), (0, 0, 0, 0)).save(tmp_path / "c.jpg")
    assert decode_image(tmp_path / "c.jpg").shape == (3, 2, 2)
    Image.new("1", (3, 3), 1).save(tmp_path / "b.png")
    assert (decode_image(tmp_path / "b.png") == 255).all()


def test_alpha_composited_on_black(tmp_path):
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[..., :3] = 200
    rgba[..., 3] = [[0, 128, 255], [255, 255, 0]]
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = decode_image(tmp_path / "a.png")
    assert out[0].tolist() == [[0, 100, 200], [200, 200, 0]] and (out[0] == out[2]).all()
    Image.fromarray(np.full((2, 2, 2), 255, np.uint8), "LA").save(tmp_path / "la.png")
    assert (decode_image(tmp_path / "la.png") == 255).all()
    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    pal.putpixel((1, 0), 1)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "pt.png", transparency=0)
    out = decode_image(tmp_path / "pt.png")
    assert out[:, 0, 0].tolist() == [0, 0, 0] and out[:, 0, 1].tolist() == [0, 255, 0]


def test_sixteen_bit_scaled(tmp_path):
    values = np.array([[0, 257 * 100, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "i16.png")
    assert Image.open(tmp_path / "i16.png").mode in ("I;16", "I")
    assert decode_image(tmp_path / "i16.png")[0].tolist() == [[0, 100, 255]]
    Image.fromarray(values).save(tmp_path / "i16.tif")
    assert decode_image(tmp_path / "i16.tif")[1].tolist() == [[0, 100, 255]]


def test_exif_orientation_applied(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(tmp_path / "rot.jpg", exif=exif, quality=95)
    out = decode_image(tmp_path / "rot.jpg")
    assert out.shape == (3, 40, 20)
    top, bottom = out[:, :15].float().mean((1, 2)), out[:, -15:].float().mean((1, 2))
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]


def test_decompression_bomb_refused(tmp_path, monkeypatch):
    Image.new("RGB", (20, 20)).save(tmp_path / "big.png")
    with images.pixel_limit(399):
        msg = _bad(tmp_path / "big.png", "400 pixels is over the limit of 399")
    assert "FASTALL_MAX_PIXELS" in msg
    with images.pixel_limit(400):
        assert decode_image(tmp_path / "big.png").shape == (3, 20, 20)
    monkeypatch.setenv(images.MAX_PIXELS_ENV, "100")
    _bad(tmp_path / "big.png", "over the limit of 100")
    monkeypatch.setenv(images.MAX_PIXELS_ENV, "lots")
    with pytest.raises(FastallError, match="FASTALL_MAX_PIXELS must be"):
        decode_image(tmp_path / "big.png")
    monkeypatch.setenv(images.MAX_PIXELS_ENV, "200000000")
    assert images.get_max_pixels() == 200_000_000
    assert decode_image(tmp_path / "big.png").shape == (3, 20, 20)


def test_pixel_limit_is_scoped(tmp_path):
    """The limit, Pillow's own limit and the warnings filter return to what they were; nothing global."""
    pillow, filters, env = Image.MAX_IMAGE_PIXELS, list(warnings.filters), dict(os.environ)
    Image.new("RGB", (20, 20)).save(tmp_path / "big.png")
    with images.pixel_limit(pillow * 3) as limit:
        assert limit == images.get_max_pixels() == pillow * 3
        assert pillow * 3 == Image.MAX_IMAGE_PIXELS  # Pillow no longer refuses what fastall allows
        with images.pixel_limit(100):
            _bad(tmp_path / "big.png", "over the limit of 100")
        assert images.get_max_pixels() == pillow * 3
    decode_image(tmp_path / "big.png")
    assert pillow == Image.MAX_IMAGE_PIXELS and warnings.filters == filters and dict(os.environ) == env
    assert images.get_max_pixels() == images.DEFAULT_MAX_PIXELS
    with pytest.raises(FastallError, match="must be positive"), images.pixel_limit(0):
        pass


def test_empty_truncated_and_not_images(tmp_path):
    (tmp_path / "zero.bmp").write_bytes(b"")
    _bad(tmp_path / "zero.bmp", "empty file (0 bytes)")
    data = _bmp_bytes(_rgb(40, 40))
    (tmp_path / "cut.bmp").write_bytes(data[: len(data) // 2])
    _bad(tmp_path / "cut.bmp", "truncated")
    (tmp_path / "header only.bmp").write_bytes(data[:20])
    _bad(tmp_path / "header only.bmp", "")
    (tmp_path / "text.bmp").write_text("this is not a bitmap\nreally\n")
    _bad(tmp_path / "text.bmp", "not an image")
    Image.fromarray(_rgb(64, 64)).save(tmp_path / "cut.png")
    raw = (tmp_path / "cut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(raw[: len(raw) - 40])
    _bad(tmp_path / "cut.png", "")
    _bad(tmp_path / "missing.bmp", "file not found")
    (tmp_path / "folder.bmp").mkdir()
    _bad(tmp_path / "folder.bmp", "is a folder")


def test_symlinks(tmp_path):
    os.symlink("b.bmp", tmp_path / "a.bmp")
    os.symlink("a.bmp", tmp_path / "b.bmp")
    _bad(tmp_path / "a.bmp", "symlink loop")
    os.symlink("nowhere.bmp", tmp_path / "dangling.bmp")
    _bad(tmp_path / "dangling.bmp", "broken symlink")
    (tmp_path / "real.bmp").write_bytes(_bmp_bytes(_rgb()))
    os.symlink("real.bmp", tmp_path / "link.bmp")
    assert decode_image(tmp_path / "link.bmp").shape == (3, 6, 5)


_AS_NOBODY = """
import os, sys
from fastall.data.images import BadImageError, decode_image
os.setgroups([]); os.setgid(65534); os.setuid(65534)
assert decode_image(sys.argv[1] + "/open.bmp").shape == (3, 6, 5)
try:
    decode_image(sys.argv[1] + "/locked.bmp")
except BadImageError as err:
    print(err)
"""


def test_permission_denied(tmp_path):
    """A mode-000 file. Root reads it anyway (CI runs as root), so there the decode runs in a child process
    that drops to uid/gid 65534 after importing fastall, in a folder that uid can enter; a readable file
    beside it must still decode, so the refusal is the file's mode and not the folder's."""
    folder = tmp_path / "p"
    if os.geteuid() == 0:
        folder = Path(tempfile.mkdtemp(prefix="fastall-perm-"))
        folder.chmod(0o755)
    folder.mkdir(exist_ok=True)
    (folder / "open.bmp").write_bytes(_bmp_bytes(_rgb()))
    (folder / "open.bmp").chmod(0o644)
    path = folder / "locked.bmp"
    path.write_bytes(_bmp_bytes(_rgb()))
    path.chmod(0)
    try:
        if os.geteuid() != 0:
            _bad(path, "permission denied")
            return
        child = subprocess.run(
            [sys.executable, "-c", _AS_NOBODY, str(folder)], capture_output=True, text=True, timeout=120
        )
        assert child.returncode == 0, child.stderr
        message = child.stdout.strip()
        assert message == f"{path}: permission denied (cannot read the file)", child.stdout + child.stderr
    finally:
        path.chmod(0o644)
        if folder.parent != tmp_path:
            shutil.rmtree(folder)


def test_a_python_caller_keeps_the_cause_and_the_cli_still_prints_one_line(tmp_path):
    from click.testing import CliRunner

    from fastall.cli import cli

    Image.new("RGB", (40, 40)).save(tmp_path / "cut.png")
    data = (tmp_path / "cut.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImageError, match="truncated or corrupt") as err:
        decode_image(tmp_path / "cut.png")
    assert isinstance(err.value.__cause__, OSError | SyntaxError | EOFError)
    (tmp_path / "c.h5").write_bytes(b"not an HDF5 file at all")
    result = CliRunner().invoke(cli, ["train-head", str(tmp_path / "c.h5"), "--out", str(tmp_path / "r")])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1 and "not a readable HDF5 cache" in result.output
    from fastall.errors import CacheError
    from fastall.features.cache import read_cache

    with pytest.raises(CacheError) as err:
        read_cache(tmp_path / "c.h5")
    assert isinstance(err.value.__cause__, OSError)


def test_the_cli_limit_lasts_for_its_command_only(tmp_path):
    from click.testing import CliRunner

    from fastall.cli import cli

    seen = {}

    @cli.command("probe-limit-for-test", hidden=True)
    def _probe() -> None:
        seen["limit"], seen["env"] = images.get_max_pixels(), os.environ.get(images.MAX_PIXELS_ENV)

    try:
        result = CliRunner().invoke(cli, ["--max-pixels", "1234", "probe-limit-for-test"])
    finally:
        cli.commands.pop("probe-limit-for-test")
    assert result.exit_code == 0, result.output
    assert seen == {"limit": 1234, "env": "1234"}  # worker processes see it too
    assert images._max_pixels is None and images.MAX_PIXELS_ENV not in os.environ
