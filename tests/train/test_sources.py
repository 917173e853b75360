"""FeatureSource (in-memory, train-only standardisation, seeded shuffles) and ImageSource."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from featurestore.errors import XrayError
from featurestore.train import FeatureSource, FeatureSplit, ImageSource, radiograph_augmentation

torch.set_num_threads(1)


def arrays(n: dict[str, int], dim: int = 4, seed: int = 0) -> tuple[dict, dict]:
    rng = np.random.default_rng(seed)
    feats = {s: rng.normal(3.0, 2.0, (k, dim)).astype(np.float32) for s, k in n.items()}
    labels = {s: (np.arange(k) % 2).astype(np.int64) for s, k in n.items()}
    return feats, labels


def test_standardisation_is_fitted_on_train_only() -> None:
    feats, labels = arrays({"train": 50, "val": 10, "test": 10})
    src = FeatureSource.from_arrays(feats, labels)
    x_train, _ = src.arrays("train")
    assert torch.allclose(x_train.mean(0), torch.zeros(4), atol=1e-5)
    assert torch.allclose(x_train.std(0, unbiased=False), torch.ones(4), atol=1e-4)
    expected_val = (feats["val"] - feats["train"].mean(0)) / feats["train"].std(0)
    assert np.allclose(src.arrays("val")[0].numpy(), expected_val, atol=1e-4)
    # Shifting test features must not move the statistics.
    shifted = dict(feats, test=feats["test"] + 100)
    other = FeatureSource.from_arrays(shifted, labels)
    assert torch.equal(other.mean, src.mean) and torch.equal(other.std, src.std)


def test_constant_feature_does_not_divide_by_zero() -> None:
    feats, labels = arrays({"train": 20, "val": 4, "test": 4})
    for s in feats:
        feats[s][:, 0] = 7.0
    src = FeatureSource.from_arrays(feats, labels)
    assert torch.isfinite(src.arrays("test")[0]).all()


def test_shuffle_is_seeded_by_seed_and_epoch() -> None:
    feats, labels = arrays({"train": 40, "val": 4, "test": 4})
    src = FeatureSource.from_arrays(feats, labels, batch_size=8, seed=3)

    def order(source: FeatureSource, epoch: int) -> list[float]:
        return [v for x, _ in source.batches("train", shuffle=True, epoch=epoch) for v in x[:, 0]]

    assert order(src, 1) == order(src, 1)
    assert order(src, 1) != order(src, 2)
    again = FeatureSource.from_arrays(feats, labels, batch_size=8, seed=3)
    other_seed = FeatureSource.from_arrays(feats, labels, batch_size=8, seed=4)
    assert order(again, 1) == order(src, 1)
    assert order(other_seed, 1) != order(src, 1)
    # A permutation: every row exactly once.
    assert sorted(order(src, 5)) == sorted(src.arrays("train")[0][:, 0].tolist())


def test_lonely_last_training_batch_is_dropped_for_batchnorm() -> None:
    feats, labels = arrays({"train": 17, "val": 3, "test": 3})
    src = FeatureSource.from_arrays(feats, labels, batch_size=8)
    sizes = [len(y) for _, y in src.batches("train", shuffle=True, epoch=1)]
    assert sizes == [8, 8]
    # Evaluation never drops anything.
    assert sum(len(y) for _, y in src.batches("train", shuffle=False)) == 17


def test_records_follow_unshuffled_batch_order() -> None:
    feats, labels = arrays({"train": 10, "val": 6, "test": 5})
    labels["test"] = np.array([1, 0, 0, 1, 1])
    src = FeatureSource.from_arrays(feats, labels)
    keys, groups, y = src.records("test")
    batched = torch.cat([b for _, b in src.batches("test", shuffle=False)]).numpy()
    assert np.array_equal(y, batched)
    assert keys == [f"test/{i:06d}" for i in range(5)] and len(groups) == 5


def test_from_store_reads_every_split() -> None:
    from featurestore.store import SplitArrays

    feats, labels = arrays({"train": 12, "val": 4, "test": 4}, dim=3)

    def split(name: str) -> SplitArrays:
        k = len(labels[name])
        return SplitArrays(feats[name], labels[name], [f"k{i}" for i in range(k)], ["g"] * k)

    store = SimpleNamespace(split=split, class_names=("A", "B"), positive_index=0)
    src = FeatureSource.from_store(store, batch_size=4)  # type: ignore[arg-type]
    assert src.class_names == ("A", "B") and src.positive_index == 0
    assert src.feature_dim == 3
    assert src.records("val")[0] == ["k0", "k1", "k2", "k3"]


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda f, y: f.pop("test"), "lacks split"),
        (lambda f, y: f.__setitem__("val", np.zeros((4, 5), np.float32)), "shape"),
        (lambda f, y: y.__setitem__("train", y["train"] + 5), "labels fall outside"),
        (lambda f, y: f.__setitem__("val", np.zeros((0, 4), np.float32)), "must not be empty"),
    ],
)
def test_bad_arrays_are_refused(change, message: str) -> None:  # type: ignore[no-untyped-def]
    feats, labels = arrays({"train": 10, "val": 4, "test": 4})
    change(feats, labels)
    if message == "must not be empty":
        labels["val"] = np.zeros(0, np.int64)
    with pytest.raises(XrayError, match=message):
        FeatureSource.from_arrays(feats, labels)


def test_feature_split_lengths_must_agree() -> None:
    ok = FeatureSplit(np.zeros((2, 3), np.float32), np.array([0, 1]), ["a", "b"], ["a", "b"])
    bad = FeatureSplit(np.zeros((2, 3), np.float32), np.array([0, 1]), ["a"], ["a", "b"])
    with pytest.raises(XrayError, match="differ in length"):
        FeatureSource(
            {"train": ok, "val": ok, "test": bad}, class_names=("A", "B"), positive_index=1
        )


def test_augmentation_has_no_horizontal_flip_by_default() -> None:
    from torchvision import transforms as T

    names = [type(t) for t in radiograph_augmentation().transforms]
    assert T.RandomHorizontalFlip not in names
    assert T.RandomAffine in names and T.ColorJitter in names
    affine = radiograph_augmentation().transforms[0]
    assert affine.degrees == [-7.0, 7.0]
    assert T.RandomHorizontalFlip in [
        type(t) for t in radiograph_augmentation(hflip=True).transforms
    ]


@pytest.fixture
def image_source(tiny_data_ro: Path) -> ImageSource:
    from featurestore.data import load_manifest
    from featurestore.models import preprocessing_for

    manifest = load_manifest(tiny_data_ro)
    pre = preprocessing_for("resnet18", "none", 32)
    return ImageSource(manifest, pre, batch_size=4, workers=0, seed=0)


def test_image_source_batches_and_records(image_source: ImageSource) -> None:
    xs, ys = zip(*image_source.batches("test", shuffle=False), strict=True)
    assert xs[0].shape[1:] == (3, 32, 32) and xs[0].dtype == torch.float32
    keys, groups, labels = image_source.records("test")
    assert np.array_equal(torch.cat(ys).numpy(), labels)
    assert len(keys) == len(groups) == 8
    # Evaluation is not augmented: the same tensors as plain preprocessing.
    first = image_source.preprocessing(
        image_source.manifest.open_image(keys[0], min_size=image_source.preprocessing.resize)
    )
    assert torch.allclose(xs[0][0], first, atol=1e-6)


def test_image_source_train_augmentation_repeats_per_epoch(tiny_data_ro: Path) -> None:
    from featurestore.data import load_manifest
    from featurestore.models import preprocessing_for

    manifest = load_manifest(tiny_data_ro)
    pre = preprocessing_for("resnet18", "none", 32)
    # One worker: augmentation draws from the worker's seed, derived from (seed, epoch).
    src = ImageSource(manifest, pre, batch_size=32, workers=1, seed=0)
    a = next(iter(src.batches("train", shuffle=True, epoch=1)))
    b = next(iter(src.batches("train", shuffle=True, epoch=1)))
    c = next(iter(src.batches("train", shuffle=True, epoch=2)))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_image_source_refuses_bad_options(image_source: ImageSource) -> None:
    with pytest.raises(XrayError, match="--workers"):
        ImageSource(image_source.manifest, image_source.preprocessing, workers=-1)
    with pytest.raises(XrayError, match="--batch-size"):
        ImageSource(image_source.manifest, image_source.preprocessing, batch_size=0)


def _source(data: Path, **options: object) -> ImageSource:
    from featurestore.data import load_manifest
    from featurestore.models import preprocessing_for

    manifest = load_manifest(data)
    pre = preprocessing_for("resnet18", "none", 32)
    settings: dict = {"batch_size": 4, "workers": 0, "seed": 0, **options}
    return ImageSource(manifest, pre, **settings)


def _epochs(src: ImageSource, split: str, epochs: tuple[int, ...]) -> list[torch.Tensor]:
    shuffle = split == "train"
    return [
        torch.cat([x for x, _ in src.batches(split, shuffle=shuffle, epoch=e)])  # type: ignore[arg-type]
        for e in epochs
    ]


def test_cache_decodes_each_image_once(tiny_data_ro: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from featurestore.data import Manifest

    decoded: list[str] = []
    real_open = Manifest.open_image

    def counting(self: Manifest, key: str, **kw: object) -> object:
        decoded.append(key)
        return real_open(self, key, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Manifest, "open_image", counting)
    src = _source(tiny_data_ro)
    n_train, n_val = (len(src.records(s)[0]) for s in ("train", "val"))
    _epochs(src, "train", (1,))
    assert sorted(decoded) == sorted(src.records("train")[0])  # each image once
    _epochs(src, "val", (1,))
    assert len(decoded) == n_train + n_val
    decoded.clear()
    _epochs(src, "train", (2, 3))
    _epochs(src, "val", (2,))
    assert decoded == []  # later epochs and evaluation passes decode nothing
    assert src.cache is not None
    # Grayscale JPEGs are kept as (H, W) uint8 at the preprocessing's short side (37 for 32).
    pixels = src.cache.get(src.records("train")[0][0])
    assert pixels is not None and pixels.dtype == np.uint8 and pixels.ndim == 2
    assert min(pixels.shape) == src.preprocessing.resize


def test_cached_batches_equal_uncached_without_augmentation(tiny_data_ro: Path) -> None:
    cached = _source(tiny_data_ro, augment=False)
    plain = _source(tiny_data_ro, augment=False, cache_mb=0)
    assert plain.cache is None
    for split in ("train", "test"):
        a, b = _epochs(cached, split, (1, 2)), _epochs(plain, split, (1, 2))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    n = len(cached.records("train")[0]) + len(cached.records("test")[0])
    assert cached.cache is not None and len(cached.cache.entries) == n


def test_cache_shared_with_workers_keeps_augmented_batches(
    tiny_data_ro: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A loader worker (another process) reads the cache: epoch 2 decodes nothing. Augmented
    batches are the same tensors without the cache and with no workers: augmentation is
    seeded per (seed, epoch, image), not by the worker that happens to load it."""
    from featurestore.data import Manifest

    log = tmp_path / "decoded.txt"
    real_open = Manifest.open_image

    def logging_open(self: Manifest, key: str, **kw: object) -> object:
        with log.open("a") as f:  # workers are other processes: count through a file
            f.write(key + "\n")
        return real_open(self, key, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(Manifest, "open_image", logging_open)
    cached = _source(tiny_data_ro, workers=1, cached_in_main=False)
    first = _epochs(cached, "train", (1,))[0]
    assert sorted(log.read_text().splitlines()) == sorted(cached.records("train")[0])
    log.unlink()
    second = _epochs(cached, "train", (2,))[0]
    assert not log.exists()  # no decode at all in epoch 2
    plain = _source(tiny_data_ro, workers=0, cache_mb=0)
    again = _epochs(plain, "train", (1, 2))
    assert torch.equal(first, again[0]) and torch.equal(second, again[1])


def test_cache_over_budget_or_unwritable_falls_back_to_decoding(
    tiny_data_ro: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    plain = _epochs(_source(tiny_data_ro, augment=False, cache_mb=0), "train", (1, 2))
    # Room for three 37x37 grayscale images: the rest is decoded every epoch, same tensors.
    small = _source(tiny_data_ro, augment=False, cache_mb=3.5 * 37 * 37 / 2**20)
    assert all(
        torch.equal(a, b) for a, b in zip(_epochs(small, "train", (1, 2)), plain, strict=True)
    )
    assert small.cache is not None and len(small.cache.entries) == 3

    def full_disk(*args: object, **kw: object) -> str:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("featurestore.train.image_cache.tempfile.mkdtemp", full_disk)
    broken = _source(tiny_data_ro, augment=False)
    assert all(
        torch.equal(a, b) for a, b in zip(_epochs(broken, "train", (1, 2)), plain, strict=True)
    )
    assert broken.cache is not None and broken.cache.entries == {}


def test_cache_file_leaves_nothing_behind(tiny_data_ro: Path) -> None:
    """On Linux the file is unnamed once open (a SIGKILL leaves nothing in the temp dir);
    elsewhere its folder is removed with the source."""
    import gc
    import tempfile

    before = set(Path(tempfile.gettempdir()).glob("xray-imagecache-*"))
    src = _source(tiny_data_ro, augment=False)
    _epochs(src, "val", (1,))
    assert src.cache is not None and src.cache.path is not None
    handle = src.cache._file
    if src.cache.path.startswith("/proc/"):
        assert set(Path(tempfile.gettempdir()).glob("xray-imagecache-*")) == before
    folder = Path(src.cache.path).parent
    del src
    gc.collect()
    assert handle.closed
    assert str(folder).startswith("/proc/") or not folder.exists()


def test_cache_budget_must_not_be_negative(tiny_data_ro: Path) -> None:
    with pytest.raises(XrayError, match="cache budget"):
        _source(tiny_data_ro, cache_mb=-1)


@pytest.mark.parametrize("cache_mb", [0.0, 64.0])
def test_decoding_threads_give_the_same_augmented_batches(
    tiny_data_ro: Path, cache_mb: float
) -> None:
    """Threads decode and augment concurrently, yet every batch equals the one-process
    batches bit for bit: same shuffle, augmentation seeded per image under one RNG lock."""
    threaded = _source(tiny_data_ro, threads=3, cache_mb=cache_mb, cached_in_main=False)
    plain = _source(tiny_data_ro, cache_mb=0)
    for split in ("test", "train"):
        a, b = _epochs(threaded, split, (1, 2, 3)), _epochs(plain, split, (1, 2, 3))
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True)), split
    assert not torch.equal(a[0], a[1])  # train epochs differ (shuffle and augmentation)
    if cache_mb:
        assert threaded.cache is not None and threaded.cache.entries  # threads fed the cache
    with pytest.raises(XrayError, match="--workers"):
        _source(tiny_data_ro, threads=-1)
