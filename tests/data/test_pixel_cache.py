"""The pixel cache: decoded, resized images shared by extractions and fine-tune epochs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featurestore.data import (
    PIXELS_FOLDER,
    PixelCache,
    load_manifest,
    open_pixel_cache,
    resize_rule,
    resized_image,
)
from featurestore.errors import XrayError
from featurestore.models import preprocessing_for
from featurestore.store import extract_features, open_store


def _extract(manifest, cache: Path, *, model: str = "resnet18", gb: float = 10.0):
    return extract_features(
        manifest, model=model, weights="none", cache_dir=cache, image_size=32, workers=0,
        device="cpu", precision="fp32", pixel_cache_gb=gb,
    )  # fmt: skip


def test_second_backbone_reads_the_pixels_and_features_match_decoding(
    tiny_data: Path, tmp_path: Path
) -> None:
    manifest = load_manifest(tiny_data)
    n = len(manifest.records)
    first = _extract(manifest, tmp_path / "a")
    assert first.pixel_cache_hits == 0 and first.pixel_cache_bytes and first.pixel_cache_bytes > 0
    entries = list((tmp_path / "a" / PIXELS_FOLDER).rglob("*.npy"))
    assert len(entries) == n  # one entry per image; grey ones stored as (H, W)
    assert np.load(entries[0]).ndim == 2
    # densenet121 resizes as resnet18 does (256 px at 224): every image comes from the cache.
    second = _extract(manifest, tmp_path / "a", model="densenet121")
    assert second.pixel_cache_hits == n
    assert second.pixel_cache_bytes == first.pixel_cache_bytes  # nothing added
    # Bit for bit what decoding gives: the same backbone with the cache off, elsewhere.
    plain = _extract(manifest, tmp_path / "b", model="densenet121", gb=0)
    assert plain.pixel_cache_bytes is None and not (tmp_path / "b" / PIXELS_FOLDER).exists()
    cached, decoded = open_store(second.path), open_store(plain.path)
    for split in ("train", "val", "test"):
        assert np.array_equal(cached.split(split).features, decoded.split(split).features)


def test_entries_are_keyed_by_content_so_a_changed_file_is_decoded_again(
    tiny_data: Path, tmp_path: Path
) -> None:
    manifest = load_manifest(tiny_data)
    pre = preprocessing_for("resnet18", "none", 32)
    cache = open_pixel_cache(tmp_path, pre, 1.0)
    assert cache is not None
    key = manifest.records[0].key
    fresh, hit = resized_image(manifest, key, pre, cache)
    again, hit2 = resized_image(manifest, key, pre, cache)
    assert (hit, hit2) == (False, True)
    assert np.array_equal(np.asarray(fresh), np.asarray(again))
    assert min(fresh.size) == pre.resize  # the resize step only, no crop
    Image.fromarray(np.full((40, 40), 200, np.uint8), mode="L").save(tiny_data / key, quality=95)
    changed, hit3 = resized_image(manifest, key, pre, cache)
    assert not hit3 and not np.array_equal(np.asarray(changed), np.asarray(fresh))
    # Another resize rule is another folder: never served this rule's pixels.
    other = preprocessing_for("resnet18", "none", 64)
    assert resize_rule(other) != resize_rule(pre)
    assert resized_image(manifest, key, other, open_pixel_cache(tmp_path, other, 1.0))[1] is False


def test_limit_stops_writing_and_shares_divide_what_is_left(tmp_path: Path) -> None:
    rule = {"resize": 8}
    image = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
    small = PixelCache(tmp_path, rule, limit_bytes=300)  # room for one 8x8 grey entry
    assert small.put("aa11", image) and not small.put("bb22", image)
    assert small.get("aa11") is not None and small.get("bb22") is None
    assert 0 < small.size_bytes() <= 300
    full = PixelCache(tmp_path, rule, limit_bytes=300)  # the folder counts toward the limit
    assert not full.put("cc33", image)
    parts = PixelCache(tmp_path / "x", rule, limit_bytes=1000).share(4)
    assert parts.budget == 250
    with pytest.raises(XrayError, match="pixel-cache-gb"):
        open_pixel_cache(tmp_path, preprocessing_for("resnet18", "none", 32), -1)
    assert open_pixel_cache(tmp_path, preprocessing_for("resnet18", "none", 32), 0) is None


def test_unreadable_entry_is_a_miss(tmp_path: Path) -> None:
    cache = PixelCache(tmp_path, {"resize": 8}, limit_bytes=10**6)
    cache.put("dd44", Image.fromarray(np.zeros((8, 8, 3), np.uint8)))
    (entry,) = (tmp_path / PIXELS_FOLDER).rglob("dd44.npy")
    entry.write_bytes(b"torn")
    assert cache.get("dd44") is None


def test_finetune_source_reads_extractions_pixels_with_the_same_batches(
    tiny_data: Path, tmp_path: Path
) -> None:
    from featurestore.train import ImageSource

    manifest = load_manifest(tiny_data)
    pre = preprocessing_for("resnet18", "none", 32)
    _extract(manifest, tmp_path)  # fills cache/.pixels for this resize rule

    def first_epoch(pixel_cache: PixelCache | None):
        source = ImageSource(manifest, pre, batch_size=4, seed=3, pixel_cache=pixel_cache)
        return [x for x, _ in source.batches("train", shuffle=True, epoch=0)]

    cache = open_pixel_cache(tmp_path, pre, 1.0)
    with_cache = first_epoch(cache)
    assert cache is not None and cache.hits == len(manifest.split("train"))
    for a, b in zip(with_cache, first_epoch(None), strict=True):
        assert a.equal(b)
