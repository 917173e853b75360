"""A greyscale file decoded as one channel (`decode_image(grey=True)`, the extraction path) gives
exactly the pixels of the same file decoded as RGB, through `Preprocessing.pixels` and the
pixel cache, for every preprocessing (shorter side or squashed, 3 or 1 channels)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featurestore.data import PixelCache, decode_image, resized_image
from featurestore.models import Preprocessing

REALSAMPLE = Path(__file__).resolve().parents[3] / "shared" / "realsample"
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
PREPROCESSINGS = [
    Preprocessing(resize=73, crop=64, interpolation="bilinear", **IMAGENET),
    Preprocessing(resize=64, crop=64, interpolation="bicubic", squash=True, **IMAGENET),
    Preprocessing(
        resize=40, crop=32, interpolation="bilinear", channels=1, mean=(0.5,), std=(0.25,)
    ),
]


def _files(tmp_path: Path) -> list[Path]:
    """Every container a radiograph comes in: 8-bit grey JPEG and PNG, 16-bit PNG, grey with
    alpha, a palette image, a colour JPEG, and an 8-bit grey image not spanning 0..255."""
    rng = np.random.default_rng(0)
    grey = (rng.random((90, 70)) * 255).astype(np.uint8)
    out = {
        "grey.jpeg": Image.fromarray(grey),
        "grey.png": Image.fromarray(grey),
        "narrow.png": Image.fromarray((grey // 3 + 40).astype(np.uint8)),
        "wide.png": Image.fromarray(grey.astype(np.uint16) * 200),
        "alpha.png": Image.fromarray(np.dstack([grey, grey[::-1]]), "LA"),
        "palette.png": Image.fromarray(grey).convert("P"),
        "colour.jpeg": Image.fromarray((rng.random((60, 80, 3)) * 255).astype(np.uint8)),
    }
    paths = []
    for name, image in out.items():
        path = tmp_path / name
        image.save(path)
        paths.append(path)
    if REALSAMPLE.is_dir():
        paths += sorted(REALSAMPLE.rglob("*.jpeg"))[:20]
    return paths


@pytest.mark.parametrize("pre", PREPROCESSINGS, ids=["shorter-side", "squash", "one-channel"])
def test_a_grey_decode_gives_the_rgb_decodes_pixels(tmp_path: Path, pre: Preprocessing) -> None:
    files = _files(tmp_path)
    modes = set()
    for path in files:
        rgb = pre.pixels(decode_image(path, min_size=pre.resize))
        image = decode_image(path, min_size=pre.resize, grey=True)
        modes.add(image.mode)
        got = pre.pixels(image)
        assert got.shape == rgb.shape == (pre.crop, pre.crop, pre.channels), path.name
        np.testing.assert_array_equal(got, rgb, err_msg=path.name)
    assert modes == {"L", "RGB"}  # both kinds were tested


def test_the_pixel_cache_keeps_grey_images_one_channel_and_their_pixels(tmp_path: Path) -> None:
    from conftest import write_tiny_dataset

    from featurestore.data import load_manifest

    data = write_tiny_dataset(tmp_path / "chest_xray")
    manifest = load_manifest(data)
    pre = PREPROCESSINGS[0]
    cache = PixelCache(tmp_path / "cache", pre.as_dict(), limit_bytes=10**8)
    for record in manifest.records[:6]:
        expected = pre.pixels(manifest.open_image(record.key, min_size=pre.resize))
        for hit in (False, True):
            image, cached = resized_image(manifest, record.key, pre, cache)
            assert cached is hit
            np.testing.assert_array_equal(pre.pixels(image), expected)
        stored = cache.get(hashlib.blake2b((data / record.key).read_bytes()).hexdigest())
        assert stored is not None and stored.ndim == 2  # a grey image: one channel on disk
        no_cache, _ = resized_image(manifest, record.key, pre, None)
        np.testing.assert_array_equal(pre.pixels(no_cache), expected)
