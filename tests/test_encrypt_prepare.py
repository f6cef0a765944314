"""prepare_pixels' fast path against Pillow's reference path, on real photos.

The reference is what prepare_pixels did before issue 15, written out here in plain Pillow:
decode the whole file, turn it upright (ImageOps.exif_transpose), convert, resize the whole
picture bicubic (reducing_gap 3) so the shorter side is `resize`, centre crop. The fast path
(decode-time DCT scaling of large JPEGs, resampling only the cropped region, turning only the
output) must give the same picture within the tolerances stated here:
- without DCT scaling: every value within 1 (2 for a 90° EXIF turn, where Pillow's two
  resampling passes run in the other order); rounding only;
- with DCT scaling (a JPEG at least 2·DRAFT_GAP × resize on its shorter side): PSNR >= 40 dB and
  mean absolute difference under 1.5 levels (measured: 45–56 dB, 0.2–0.85).
"""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from encrypt.decode import TRANSPOSES, DecodeError
from encrypt.geometry import resize_center_crop
from encrypt.prepare import DRAFT_GAP, draft_scale, prepare_pixels

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field")
GEOMETRIES = ((256, 224), (128, 112), (64, 56), (36, 32))  # (resize, size)
INVERSE = {2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}  # orientation -> the one that undoes it


def reference(data: bytes, resize: int, size: int, channels: int = 3) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        im = ImageOps.exif_transpose(im).convert("RGB" if channels == 3 else "L")
    w, h = im.size
    scale = resize / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=3.0)
    left, top = (nw - size) // 2, (nh - size) // 2
    out = np.asarray(im.crop((left, top, left + size, top + size)))
    return out[..., None] if out.ndim == 2 else out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = ((a.astype(float) - b.astype(float)) ** 2).mean()
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def jpeg(img: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def real_photos() -> dict[str, np.ndarray]:
    from skimage import data

    return {name: getattr(data, name)()[..., :3] for name in PHOTOS}


def drafted(data: bytes, resize: int) -> int:
    with Image.open(io.BytesIO(data)) as im:
        return draft_scale(im, resize)


@pytest.mark.parametrize("resize,size", GEOMETRIES)
def test_fast_path_matches_pillow_reference_on_real_photos(real_photos, resize, size):
    scaled = 0
    for name, img in real_photos.items():
        data = jpeg(img)
        ref, out = reference(data, resize, size), prepare_pixels(data, size=size, resize=resize, channels=3)
        assert out.shape == ref.shape == (size, size, 3) and out.dtype == np.uint8
        diff = np.abs(ref.astype(int) - out.astype(int))
        if drafted(data, resize) == 1:
            assert diff.max() <= 1, name
        else:
            scaled += 1
            assert psnr(ref, out) >= 40 and diff.mean() < 1.5, name
    if resize <= 64:
        assert scaled == len(real_photos)  # the DCT-scaled path was exercised on every photo


def test_png_and_small_images_match_the_reference(real_photos, fmnist_small):
    for name in ("coffee", "chelsea"):
        buf = io.BytesIO()
        Image.fromarray(real_photos[name]).save(buf, "PNG")
        for resize, size in GEOMETRIES:
            ref = reference(buf.getvalue(), resize, size)
            out = prepare_pixels(buf.getvalue(), size=size, resize=resize, channels=3)
            assert np.abs(ref.astype(int) - out.astype(int)).max() <= 1
    for item in fmnist_small[0][:50]:  # real Fashion-MNIST: 28 px up to 32, as the tests' releases do
        buf = io.BytesIO()
        Image.fromarray(item).save(buf, "PNG")
        out = prepare_pixels(buf.getvalue(), size=32, resize=32, channels=1)
        assert np.array_equal(out, reference(buf.getvalue(), 32, 32, channels=1))
        assert np.array_equal(out, resize_center_crop(item[..., None], 32, 32))
        same = prepare_pixels(buf.getvalue(), size=28, resize=28, channels=1)
        assert np.array_equal(same[..., 0], item)  # nothing to resample: the pixels, untouched


def test_grayscale_cmyk_and_channel_conversions(real_photos):
    photo = real_photos["astronaut"]
    gray = jpeg(np.asarray(Image.fromarray(photo).convert("L")))
    cmyk_buf = io.BytesIO()
    Image.fromarray(photo).convert("CMYK").save(cmyk_buf, "JPEG", quality=95)
    for data in (gray, cmyk_buf.getvalue()):
        for channels in (1, 3):
            for resize, size in ((256, 224), (64, 56)):  # full-size and DCT-scaled decode
                ref = reference(data, resize, size, channels)
                out = prepare_pixels(data, size=size, resize=resize, channels=channels)
                assert out.shape == (size, size, channels)
                assert psnr(ref, out) >= 40


@pytest.mark.parametrize("turn", range(1, 9))
@pytest.mark.parametrize("resize,size", [(160, 128), (64, 56)])  # 64: DCT-scaled on a 427×640 photo
def test_exif_turned_jpegs_come_out_upright(real_photos, turn, resize, size):
    upright = real_photos["rocket"]  # 427×640, not square: a turn that is missed changes the shape
    stored = np.asarray(Image.fromarray(upright).transpose(TRANSPOSES[INVERSE[turn]])) if turn > 1 else upright
    exif = Image.Exif()
    exif[0x0112] = turn
    data = jpeg(np.ascontiguousarray(stored), exif=exif)
    out = prepare_pixels(data, size=size, resize=resize, channels=3)
    truth = reference(jpeg(upright), resize, size)  # the upright photo, never turned
    assert psnr(truth, out) >= 35  # the same picture, through one more JPEG round trip
    wrong = [psnr(truth, np.asarray(Image.fromarray(out).transpose(t))) for t in TRANSPOSES.values()]
    assert psnr(truth, out) > max(wrong) + 10  # and no other turn of it fits
    ref = reference(data, resize, size)  # Pillow's own EXIF turn of the same file
    tolerance = 1 if drafted(data, resize) == 1 and turn < 5 else 2
    if drafted(data, resize) == 1:
        assert np.abs(ref.astype(int) - out.astype(int)).max() <= tolerance
    else:
        assert psnr(ref, out) >= 40


@pytest.mark.parametrize("shorter,resize", [(375, 256), (511, 128), (512, 128), (1023, 128), (1024, 128),
                                            (4095, 256), (300, 32), (299, 32), (2047, 64), (2048, 64), (100, 7)])
def test_draft_never_undersamples(shorter, resize):
    img = np.zeros((shorter, shorter + 37, 3), np.uint8)
    img[::7] = 255
    data = jpeg(img)
    with Image.open(io.BytesIO(data)) as im:
        k = draft_scale(im, resize)
        im.load()
        assert min(im.size) >= DRAFT_GAP * resize or k == 1  # never under the gap after scaling
        assert min(im.size) >= resize or shorter < resize
        assert min(im.size) == -(-shorter // k)  # libjpeg's 1/k size, rounded up
    expected = next((k for k in (8, 4, 2) if shorter // k >= DRAFT_GAP * resize), 1)
    assert k == expected  # and the largest such scale is taken


def test_errors_and_limits_are_those_of_decode(tmp_path, real_photos, monkeypatch):
    data = jpeg(real_photos["astronaut"])
    with pytest.raises(DecodeError, match="truncated"):
        prepare_pixels(data[: len(data) // 2], size=56, resize=64, channels=3)
    with pytest.raises(DecodeError, match="too small"):
        prepare_pixels(data, size=56, resize=64, channels=3, min_side=600)
    with pytest.raises(DecodeError, match="not a recognised image"):
        prepare_pixels(b"not a picture", size=56, resize=64, channels=3)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100_000)  # 512×512 = 262,144 px: over twice the limit
    with pytest.raises(DecodeError, match="decompression-bomb"):
        prepare_pixels(data, size=56, resize=64, channels=3)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 200_000)  # over the limit: Pillow's warning
    with pytest.raises(DecodeError, match="decompression-bomb"):
        prepare_pixels(data, size=56, resize=64, channels=3)


def test_bad_geometry_is_a_usage_error_not_a_bad_file(real_photos):
    with pytest.raises(ValueError, match="smaller than the crop"):
        prepare_pixels(jpeg(real_photos["coffee"]), size=64, resize=56, channels=3)


def test_same_input_same_pixels(real_photos):
    data = jpeg(real_photos["hubble_deep_field"])
    runs = [prepare_pixels(data, size=56, resize=64, channels=3) for _ in range(3)]
    assert all(np.array_equal(runs[0], r) for r in runs)
