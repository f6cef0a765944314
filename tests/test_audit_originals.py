"""The privacy audit's originals are the pixels the cipher saw, checked against the real job.

An EXIF-rotated JPEG is the case a look-alike loader gets wrong: the encryptor turns it upright
before the cipher, a plain `Image.open(...).convert` does not. Each audit path (`--images`,
`--builtin`, `--shards`) is compared with what the job really encrypted, recovered by undoing
the shuffle with the owner's key — not with another call of the same loader.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data

from audit.privacy import builtin_images, cases_from_release, load_images
from shards.modes import MODES
from encrypt.ciphers import unshuffle
from encrypt.geometry import resize_center_crop
from encrypt.main import encrypt_dataset
from encrypt.sources import list_imagefolder
from releases import job_settings, make_keystore, keys_of
from shards.reader import iter_samples

SIZE, PATCH = 64, 16
EXIF_ORIENTATION = 0x0112


def write_rotated_jpeg(path: Path) -> None:
    """chelsea (451×300) stored sideways-tagged: EXIF orientation 6 (display turned 90° clockwise)."""
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = 6
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(data.chelsea()).save(path, exif=exif, quality=90)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A real shuffle release (PNG, RGB, resize = size) of the rotated JPEG and a builtin photo."""
    keystore = make_keystore(tmp_path_factory)
    src = tmp_path_factory.mktemp("src")
    write_rotated_jpeg(src / "train" / "cat" / "chelsea-exif6.jpg")
    (src / "train" / "person").mkdir()
    Image.fromarray(data.astronaut()).save(src / "train" / "person" / "astronaut.png")
    out = tmp_path_factory.mktemp("rel") / "release"
    settings = job_settings(mode="shuffle", patch=PATCH, size=SIZE, resize=SIZE, channels=3, format="png")
    encrypt_dataset(list_imagefolder(src), out, keystore, "originals", settings, progress=False)
    key = keys_of(keystore, out)
    n = MODES["shuffle"].draws((SIZE, SIZE), PATCH)[0]
    seen = {}  # rel_path -> the exact picture the cipher encrypted
    by_key = {key.sample_id(rel): rel for rel in ("train/cat/chelsea-exif6.jpg", "train/person/astronaut.png")}
    for sample in iter_samples(out, "train"):
        seen[by_key[sample.key]] = unshuffle(sample.image, key.permutation(n, "train", sample.key), PATCH)
    return {"keystore": keystore, "src": src, "out": out, "seen": seen}


def test_images_original_of_an_exif_rotated_jpeg_is_what_the_cipher_saw(release, tmp_path):
    folder = tmp_path / "imgs"
    write_rotated_jpeg(folder / "chelsea-exif6.jpg")
    [(name, original)] = load_images(folder, SIZE, limit=1)
    cipher_saw = release["seen"]["train/cat/chelsea-exif6.jpg"]
    assert name == "chelsea-exif6.jpg" and original.shape == (SIZE, SIZE, 3)
    assert np.array_equal(original, cipher_saw)  # exact: the stored PNG loses nothing
    with Image.open(folder / "chelsea-exif6.jpg") as im:  # the old loader: no EXIF turn
        naive = resize_center_crop(np.asarray(im.convert("RGB")), SIZE, SIZE)
    assert not np.array_equal(original, naive)
    error = lambda a, b: np.abs(a.astype(int) - b.astype(int)).mean()  # noqa: E731
    assert error(original, np.rot90(naive, -1)) < 2 < error(original, naive)  # it is the picture turned upright


def test_release_originals_are_what_the_cipher_saw(release):
    cases, cipher = cases_from_release(release["out"], release["keystore"], release["src"], limit=8, resize=SIZE)
    assert cipher.mode == "shuffle" and len(cases) == 2
    key = keys_of(release["keystore"], release["out"])
    rel = {key.sample_id(r): r for r in release["seen"]}
    for case in cases:
        assert np.array_equal(case.original, release["seen"][rel[case.name]])
        assert np.array_equal(unshuffle(case.stored, case.perm, PATCH), case.original)


def test_builtin_originals_are_what_the_job_makes_of_the_photo(release):
    builtin = dict(builtin_images(SIZE))
    assert np.array_equal(builtin["astronaut"], release["seen"]["train/person/astronaut.png"])
