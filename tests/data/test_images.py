"""Tests for featurestore.data.images: any mode to RGB, draft-mode JPEG, clear bad-file errors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from featurestore.data import ImageDecodeError, decode_image, image_from_array, to_rgb
from featurestore.errors import XrayError


def encode(im: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buffer = io.BytesIO()
    im.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


def gradient(width: int = 32, height: int = 24) -> np.ndarray:
    """(H, W) uint8 horizontal ramp 0..255."""
    return np.tile(np.linspace(0, 255, width).round().astype(np.uint8), (height, 1))


@pytest.mark.parametrize(
    ("mode", "fmt"),
    [
        ("L", "PNG"),
        ("L", "JPEG"),
        ("RGB", "PNG"),
        ("RGB", "JPEG"),
        ("RGBA", "PNG"),
        ("LA", "PNG"),
        ("P", "PNG"),
        ("1", "PNG"),
        ("CMYK", "JPEG"),
        ("I;16", "PNG"),
        ("I", "TIFF"),
    ],
)
def test_every_mode_decodes_to_rgb(mode: str, fmt: str) -> None:
    source = Image.fromarray(gradient()).convert(mode)
    image = decode_image(encode(source, fmt), name=f"x.{fmt.lower()}")
    assert image.mode == "RGB"
    assert image.size == (32, 24)


def test_grayscale_becomes_three_equal_channels() -> None:
    image = decode_image(encode(Image.fromarray(gradient()), "PNG"))
    pixels = np.asarray(image)  # (H, W, 3)
    assert pixels.shape == (24, 32, 3)
    assert np.array_equal(pixels[..., 0], gradient())
    assert np.array_equal(pixels[..., 0], pixels[..., 2])


def test_alpha_is_composited_on_black() -> None:
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., :3] = 200
    rgba[:, :4, 3] = 255  # left half opaque, right half transparent
    pixels = np.asarray(decode_image(encode(Image.fromarray(rgba), "PNG")))
    assert (pixels[:, :4] == 255).all()  # 200 is the image's maximum: the stretch maps it to 255
    assert (pixels[:, 4:] == 0).all()


def test_palette_with_transparency_is_composited() -> None:
    im = Image.new("P", (4, 4), 1)
    im.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
    im.info["transparency"] = 1
    assert np.asarray(to_rgb(im)).max() == 0


def test_sixteen_bit_is_stretched_by_its_own_range() -> None:
    # A 12-bit radiograph in a 16-bit container: 1000..4000 maps to 0..255, not to near-black.
    raw = np.linspace(1000, 4000, 16 * 16).reshape(16, 16).astype(np.uint16)
    pixels = np.asarray(decode_image(encode(Image.fromarray(raw), "PNG")))[..., 0]
    assert pixels.min() == 0
    assert pixels.max() == 255
    assert np.all(np.diff(pixels.reshape(-1).astype(int)) >= 0)  # order kept


def test_constant_sixteen_bit_image_is_black() -> None:
    raw = np.full((8, 8), 1234, dtype=np.uint16)
    assert np.asarray(decode_image(encode(Image.fromarray(raw), "PNG"))).max() == 0


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encode(Image.fromarray(gradient(40, 20)), "JPEG", exif=exif)
    assert decode_image(data).size == (20, 40)


@pytest.mark.parametrize(
    ("min_size", "expected"),
    [
        (None, (800, 600)),
        (100, (200, 150)),
        (150, (200, 150)),
        (151, (400, 300)),
        (700, (800, 600)),
    ],
)
def test_jpeg_draft_decodes_at_reduced_scale_never_below_min_size(
    min_size: int | None, expected: tuple[int, int]
) -> None:
    data = encode(Image.fromarray(gradient(800, 600)), "JPEG")
    image = decode_image(data, min_size=min_size)
    assert image.size == expected
    if min_size is not None:
        assert min(image.size) >= min(min_size, 600)


def test_draft_keeps_rgb_jpegs_in_colour() -> None:
    rgb = np.zeros((400, 400, 3), dtype=np.uint8)
    rgb[..., 0] = 220  # red
    pixels = np.asarray(decode_image(encode(Image.fromarray(rgb), "JPEG"), min_size=100))
    assert pixels.shape == (100, 100, 3)
    assert pixels[..., 0].mean() > 200 > 20 > pixels[..., 1].mean()


def test_png_ignores_min_size() -> None:
    data = encode(Image.fromarray(gradient(400, 300)), "PNG")
    assert decode_image(data, min_size=64).size == (400, 300)


@pytest.mark.parametrize(
    "limit", [1000, 3000]
)  # 4096 px: over 2x the limit (error), over 1x (warning)
def test_decompression_bomb_becomes_user_error(monkeypatch: pytest.MonkeyPatch, limit: int) -> None:
    data = encode(Image.fromarray(gradient(64, 64)), "PNG")
    monkeypatch.setenv("XRAY_MAX_IMAGE_PIXELS", str(limit))
    with pytest.raises(ImageDecodeError, match=r"big\.png.*decompression bomb.*XRAY_MAX_IMAGE"):
        decode_image(data, name="big.png")


def test_zero_byte_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.jpeg"
    path.write_bytes(b"")
    with pytest.raises(ImageDecodeError, match=r"empty\.jpeg.*0 bytes"):
        decode_image(path)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("keep", [0.5, 0.98])
def test_truncated_file_is_detected(tmp_path: Path, fmt: str, keep: float) -> None:
    rng = np.random.default_rng(0)
    data = encode(Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8)), fmt)
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ImageDecodeError, match=r"cut\.(jpeg|png).*truncated"):
        decode_image(path)


def test_non_image_and_missing_files(tmp_path: Path) -> None:
    text = tmp_path / "notes.png"
    text.write_text("this is not an image")
    with pytest.raises(ImageDecodeError, match=r"notes\.png.*not an image"):
        decode_image(text)
    with pytest.raises(XrayError, match=r"gone\.jpeg.*not found"):
        decode_image(tmp_path / "gone.jpeg")
    with pytest.raises(ImageDecodeError, match="0 bytes"):
        decode_image(b"")


@pytest.mark.parametrize(
    "pixels",
    [
        np.zeros((10, 12), dtype=np.uint8),
        np.zeros((10, 12, 1), dtype=np.uint8),
        np.zeros((10, 12, 3), dtype=np.uint8),
        np.arange(120, dtype=np.uint16).reshape(10, 12),
        np.arange(360, dtype=np.float32).reshape(10, 12, 3),
    ],
)
def test_image_from_array(pixels: np.ndarray) -> None:
    image = image_from_array(pixels)
    assert image.mode == "RGB"
    assert image.size == (12, 10)


def test_image_from_array_rejects_bad_shapes() -> None:
    with pytest.raises(ImageDecodeError, match="shape"):
        image_from_array(np.zeros((4, 4, 2), dtype=np.uint8))


def test_realsample_rgb_and_l_files(realsample: Path) -> None:
    rgb = realsample / "train" / "PNEUMONIA" / "person888_bacteria_2812.jpeg"
    gray = realsample / "test" / "NORMAL" / "IM-0308-0001.jpeg"
    with Image.open(rgb) as im:
        assert im.mode == "RGB"
    with Image.open(gray) as im:
        assert im.mode == "L"
        full = im.size  # (1654, 1368)
    for path in (rgb, realsample / "train" / "PNEUMONIA" / "person1716_bacteria_4533.jpeg"):
        assert np.asarray(decode_image(path, min_size=224)).shape[2] == 3
    small = decode_image(gray, min_size=224)
    assert small.mode == "RGB"
    assert min(small.size) >= 224
    assert small.size[0] < full[0]  # decoded at reduced scale


# --- DICOM (the `dicom` extra) -----------------------------------------------------------------


def _dicom_sample(tmp_path: Path, *, photometric: str | None = None) -> tuple[Path, np.ndarray]:
    """pydicom's own CT_small.dcm (int16 MONOCHROME2), optionally relabelled, and its pixels."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    if photometric:
        ds.PhotometricInterpretation = photometric
    path = tmp_path / "scan.dcm"
    ds.save_as(path)
    return path, ds.pixel_array


def test_dicom_decodes_to_rgb_with_the_image_size(tmp_path: Path) -> None:
    path, pixels = _dicom_sample(tmp_path)
    im = decode_image(path)
    assert im.mode == "RGB" and im.size == (pixels.shape[1], pixels.shape[0])
    gray = np.asarray(im)[:, :, 0].astype(float)
    # Brighter stored values stay brighter (MONOCHROME2): rank correlation close to 1.
    assert np.corrcoef(gray.ravel(), pixels.ravel())[0, 1] > 0.95
    assert decode_image(path.read_bytes(), name="scan").size == im.size  # magic-sniffed bytes


def test_dicom_monochrome1_is_inverted(tmp_path: Path) -> None:
    path, pixels = _dicom_sample(tmp_path, photometric="MONOCHROME1")
    gray = np.asarray(decode_image(path))[:, :, 0].astype(float)
    assert np.corrcoef(gray.ravel(), pixels.ravel())[0, 1] < -0.95


def test_corrupt_dicom_is_one_clear_error(tmp_path: Path) -> None:
    pytest.importorskip("pydicom")
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00garbage")
    with pytest.raises(ImageDecodeError, match=r"bad\.dcm: unreadable DICOM"):
        decode_image(bad)


def test_dicom_without_pydicom_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from featurestore.data import images

    monkeypatch.setattr(images, "dicom_available", lambda: False)
    (tmp_path / "x.dcm").write_bytes(b"\x00" * 200)
    with pytest.raises(ImageDecodeError, match=r"pip install -e '\.\[dicom\]'"):
        decode_image(tmp_path / "x.dcm")


def test_a_folder_of_dicom_files_is_a_dataset(tmp_path: Path) -> None:
    from featurestore.data import load_manifest

    path, _ = _dicom_sample(tmp_path)
    root = tmp_path / "dcm"
    for split in ("train", "test"):
        for cls in ("NORMAL", "PNEUMONIA"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for i in range(12 if split == "train" else 2):
                (folder / f"{cls[0]}{split}{i}.dcm").write_bytes(path.read_bytes())
    manifest = load_manifest(root, val_min=0)
    assert len(manifest.records) == 2 * 12 + 2 * 2
    assert manifest.open_image(manifest.records[0].key).mode == "RGB"


# --- One intensity rule for every container (#13 item 8) -------------------------------------


def _write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    bits_stored: int = 16,
    transfer_syntax: str | None = None,
    raw: bytes | None = None,
) -> Path:
    """A minimal single-frame MONOCHROME2 DICOM file (uint16 pixels, or `raw` PixelData)."""
    pydicom = pytest.importorskip("pydicom")
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.TransferSyntaxUID = transfer_syntax or ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
    )
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, bits_stored, bits_stored - 1
    ds.PixelRepresentation = 0
    ds.PixelData = raw if raw is not None else pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == meta.TransferSyntaxUID
    return path


def test_the_same_picture_gives_the_same_tensor_in_every_container(tmp_path: Path) -> None:
    """8-bit PNG/TIFF/BMP/WebP, 16-bit PNG (x257), 12-bit in 16 (x16), float TIFF, DICOM."""
    from featurestore.models import preprocessing_for

    rng = np.random.default_rng(0)
    picture = rng.integers(20, 230, size=(48, 40)).astype(np.uint8)  # not spanning 0..255
    files = {
        "8bit.png": Image.fromarray(picture),
        "8bit.tif": Image.fromarray(picture),
        "8bit.bmp": Image.fromarray(picture),
        "8bit-lossless.webp": Image.fromarray(picture),
        "rgb.png": Image.fromarray(np.stack([picture] * 3, axis=-1)),
        "16bit.png": Image.fromarray(picture.astype(np.uint16) * 257),
        "12bit-in-16.png": Image.fromarray(picture.astype(np.uint16) * 16),
        "float.tif": Image.fromarray(picture.astype(np.float32) / 255.0),
    }
    paths = []
    for name, im in files.items():
        path = tmp_path / name
        im.save(path, lossless=True) if name.endswith(".webp") else im.save(path)
        paths.append(path)
    paths.append(
        _write_dicom(tmp_path / "12bit.dcm", picture.astype(np.uint16) * 16, bits_stored=12)
    )
    pre = preprocessing_for("resnet18", "none", 32)
    reference = pre(decode_image(paths[0]))
    expected = (picture.astype(np.float64) - picture.min()) / (picture.max() - picture.min())
    assert np.array_equal(
        np.asarray(decode_image(paths[0]))[..., 0], np.round(expected * 255).astype(np.uint8)
    )
    for path in paths[1:]:
        tensor = pre(decode_image(path))
        # Integer containers are bit-identical; float TIFF may round one level differently.
        atol = 1.5 / 255 / min(pre.std) if path.name == "float.tif" else 0.0
        assert torch_allclose(tensor, reference, atol=atol), path.name


def torch_allclose(a: object, b: object, *, atol: float) -> bool:
    import torch

    assert isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)
    return bool(torch.allclose(a, b, atol=atol, rtol=0.0))


def test_intensity_rule_is_recorded_in_the_preprocessing() -> None:
    from featurestore.data import INTENSITY_RULE
    from featurestore.models import preprocessing_for

    assert preprocessing_for("resnet18", "none", 32).as_dict()["intensity"] == INTENSITY_RULE


# --- Large trusted images and bombs (#13 item 11) ---------------------------------------------


def test_a_trusted_large_image_passes_with_the_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = encode(Image.fromarray(gradient(64, 64)), "PNG")  # 4096 pixels
    monkeypatch.setenv("XRAY_MAX_IMAGE_PIXELS", "3000")
    with pytest.raises(ImageDecodeError, match="XRAY_MAX_IMAGE_PIXELS=<pixels>"):
        decode_image(data, name="big.png")
    monkeypatch.setenv("XRAY_MAX_IMAGE_PIXELS", "5000")
    assert decode_image(data, name="big.png").size == (64, 64)


def test_a_real_bomb_is_still_refused_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    import struct
    import zlib

    monkeypatch.delenv("XRAY_MAX_IMAGE_PIXELS", raising=False)

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")
    with pytest.raises(ImageDecodeError, match="decompression bomb"):
        decode_image(bomb, name="bomb.png")


@pytest.mark.parametrize("value", ["lots", "-5", "0"])
def test_a_bad_pixel_limit_is_one_line(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("XRAY_MAX_IMAGE_PIXELS", value)
    with pytest.raises(XrayError, match=r"XRAY_MAX_IMAGE_PIXELS.*positive number"):
        decode_image(encode(Image.fromarray(gradient()), "PNG"))


# --- DICOM that cannot be decoded (#13 item 7) and DICOM without a suffix (item 9) -------------


def test_compressed_dicom_without_a_decoder_says_which_extra_to_install(tmp_path: Path) -> None:
    pytest.importorskip("pydicom")
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLosslessSV1

    path = _write_dicom(
        tmp_path / "lossless.dcm",
        np.zeros((8, 8)),
        transfer_syntax=JPEGLosslessSV1,
        raw=encapsulate([b"\xff\xd8\xff\xc3not really a jpeg\xff\xd9"]),
    )
    with pytest.raises(ImageDecodeError) as info:
        decode_image(path)
    message = str(info.value)
    assert "lossless.dcm" in message and "\n" not in message
    # With no pylibjpeg/gdcm: which extra to install; with one: the decoder's complaint.
    assert ".[dicom-codecs]" in message or "unreadable DICOM" in message


def test_dicom_with_truncated_pixel_data_is_one_line(tmp_path: Path) -> None:
    path = _write_dicom(tmp_path / "short.dcm", np.zeros((8, 8)), raw=b"\x00\x01" * 10)
    with pytest.raises(ImageDecodeError, match=r"short\.dcm: unreadable DICOM"):
        decode_image(path)


def test_dicom_without_an_extension_is_recognised_by_its_magic(tmp_path: Path) -> None:
    from featurestore.data import is_dicom, is_image_file

    pixels = np.arange(64, dtype=np.uint16).reshape(8, 8) * 50
    path = _write_dicom(tmp_path / "IM000001", pixels, bits_stored=12)
    uid_named = tmp_path / "1.2.840.113619.2"
    uid_named.write_bytes(path.read_bytes())
    for p in (path, uid_named):
        assert is_dicom(p) and is_image_file(p)
        assert decode_image(p).size == (8, 8)
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    assert not is_image_file(text)
