"""decode_image on the odd files real datasets hold: each normalised or refused with a reason."""
from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from encrypt.decode import DecodeError, decode_image


@pytest.fixture(scope="module")
def photo():
    from conftest import natural_photos

    return natural_photos(96)["astronaut"]


def save(path, img: Image.Image, fmt: str, **kw):
    img.save(path, fmt, **kw)
    return path


def test_rgb_jpeg_decodes_to_rgb(tmp_path, photo):
    p = save(tmp_path / "a.jpg", Image.fromarray(photo), "JPEG", quality=95)
    out = decode_image(p)
    assert out.shape == (96, 96, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - photo).mean() < 4


def test_grayscale_to_rgb_and_rgb_to_grayscale(tmp_path, photo):
    gray = Image.fromarray(photo).convert("L")
    p = save(tmp_path / "g.png", gray, "PNG")
    rgb = decode_image(p)
    assert rgb.shape == (96, 96, 3) and np.array_equal(rgb[..., 0], np.asarray(gray))
    assert decode_image(p, channels=1).shape == (96, 96, 1)


def test_alpha_is_composited_on_white(tmp_path, photo):
    rgba = np.dstack([photo, np.zeros((96, 96), np.uint8)])
    rgba[:48, :, 3] = 255
    p = save(tmp_path / "alpha.png", Image.fromarray(rgba, "RGBA"), "PNG")
    out = decode_image(p)
    assert out.shape == (96, 96, 3)
    assert np.array_equal(out[:48], photo[:48])
    assert (out[48:] == 255).all()


def test_palette_png(tmp_path, photo):
    pal = Image.fromarray(photo).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    p = save(tmp_path / "pal.png", pal, "PNG")
    assert np.array_equal(decode_image(p), np.asarray(pal.convert("RGB")))


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path, photo):
    gray16 = np.asarray(Image.fromarray(photo).convert("L")).astype(np.uint16) * 257
    p = save(tmp_path / "deep.png", Image.fromarray(gray16), "PNG")
    assert Image.open(p).mode.startswith("I")
    out = decode_image(p, channels=1)[..., 0]
    assert np.array_equal(out, (gray16 // 257).astype(np.uint8))


def test_cmyk_jpeg(tmp_path, photo):
    p = save(tmp_path / "cmyk.jpg", Image.fromarray(photo).convert("CMYK"), "JPEG", quality=95)
    out = decode_image(p)
    assert out.shape == (96, 96, 3)
    assert np.abs(out.astype(int) - photo).mean() < 12


def test_exif_rotation_is_applied(tmp_path):
    img = np.zeros((40, 80, 3), np.uint8)
    img[:, :40] = 255  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: viewers rotate 90° clockwise
    p = save(tmp_path / "rot.jpg", Image.fromarray(img), "JPEG", quality=95, exif=exif)
    out = decode_image(p)
    assert out.shape == (80, 40, 3)
    assert out[:30].mean() > 200 and out[50:].mean() < 50  # the white half is now on top
    assert np.array_equal(decode_image(p.read_bytes()), out)  # bytes decode the same (the audit's builtin photos)


def test_text_file_named_jpg(tmp_path):
    p = tmp_path / "text.jpg"
    p.write_text("hello, not a picture")
    with pytest.raises(DecodeError, match="not a recognised image"):
        decode_image(p)


def test_zero_byte_file(tmp_path):
    p = tmp_path / "zero.png"
    p.touch()
    with pytest.raises(DecodeError, match="not a recognised image"):
        decode_image(p)


def test_truncated_jpeg(tmp_path, photo):
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, "JPEG", quality=95)
    p = tmp_path / "cut.jpg"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(DecodeError, match="truncated"):
        decode_image(p)


def test_decompression_bomb_limit_is_an_error(tmp_path, monkeypatch):
    p = save(tmp_path / "big.png", Image.new("L", (150, 100)), "PNG")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # 15,000 px: over the limit (a warning in Pillow)
    with pytest.raises(DecodeError, match="decompression-bomb"):
        decode_image(p)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 5_000)  # over twice the limit (an error in Pillow)
    with pytest.raises(DecodeError, match="decompression-bomb"):
        decode_image(p)


def test_directory_broken_link_and_link_loop(tmp_path):
    (tmp_path / "dir.jpg").mkdir()
    with pytest.raises(DecodeError, match="directory"):
        decode_image(tmp_path / "dir.jpg")
    os.symlink(tmp_path / "nowhere.jpg", tmp_path / "dangling.jpg")
    with pytest.raises(DecodeError, match="missing or a broken symlink"):
        decode_image(tmp_path / "dangling.jpg")
    os.symlink(tmp_path / "loop_b.jpg", tmp_path / "loop_a.jpg")
    os.symlink(tmp_path / "loop_a.jpg", tmp_path / "loop_b.jpg")
    with pytest.raises(DecodeError, match="cannot decode"):
        decode_image(tmp_path / "loop_a.jpg")
