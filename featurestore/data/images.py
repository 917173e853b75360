"""Decoding of any image file (or array) found in the wild to one 3-channel RGB PIL image."""

from __future__ import annotations

import functools
import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from featurestore.errors import XrayError

# What Pillow raises on bad bytes: OSError (truncated, broken data stream, unidentified),
# SyntaxError (some plugins on malformed headers), ValueError/EOFError on short headers.
_DECODE_FAILURES = (OSError, SyntaxError, ValueError, EOFError)


class ImageDecodeError(XrayError):
    """A file that is not a readable image (zero bytes, truncated, corrupt, too large)."""


def decode_image(
    source: Path | str | bytes, *, min_size: int | None = None, name: str | None = None
) -> Image.Image:
    """Decode a file or its bytes to an RGB image, at reduced JPEG scale when min_size allows.

    `min_size` is the smallest short side the caller needs: JPEGs are then decoded by libjpeg
    at 1/2, 1/4 or 1/8 scale (Pillow's draft mode) but never below it. `name` labels errors
    for bytes input. The whole image is always decoded, so truncated files are detected.
    """
    label = name or (str(source) if not isinstance(source, bytes) else "<bytes>")
    if is_dicom(source):
        return decode_dicom(source, label=label)
    if isinstance(source, bytes):
        if not source:
            raise ImageDecodeError(f"{label}: empty file (0 bytes)")
        stream: io.BytesIO | Path = io.BytesIO(source)
    else:
        stream = Path(source)
        try:
            if stream.stat().st_size == 0:
                raise ImageDecodeError(f"{label}: empty file (0 bytes)")
        except FileNotFoundError:
            raise ImageDecodeError(f"{label}: file not found") from None
    try:
        with warnings.catch_warnings():
            # Pillow only warns between MAX_IMAGE_PIXELS and twice that: refuse both.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(stream) as im:
                if min_size is not None and im.format == "JPEG":
                    im.draft(im.mode, (min_size, min_size))
                im.load()  # full decode now: a truncated file fails here, not later
                oriented = ImageOps.exif_transpose(im)
                return to_rgb(oriented)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageDecodeError(
            f"{label}: refused as a possible decompression bomb ({exc}); if the file is "
            "trusted, raise PIL.Image.MAX_IMAGE_PIXELS"
        ) from None
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{label}: not an image Pillow can read") from None
    except _DECODE_FAILURES as exc:
        raise ImageDecodeError(f"{label}: unreadable or truncated image ({exc})") from None


DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})


def is_dicom(source: Path | str | bytes) -> bool:
    """A .dcm/.dicom path, or bytes with the DICOM preamble's `DICM` magic at offset 128."""
    if isinstance(source, bytes):
        return source[128:132] == b"DICM"
    return Path(source).suffix.lower() in DICOM_SUFFIXES


def dicom_available() -> bool:
    """Whether pydicom (the `dicom` extra) is installed."""
    from importlib.util import find_spec

    return find_spec("pydicom") is not None


def decode_dicom(source: Path | str | bytes, *, label: str) -> Image.Image:
    """A DICOM radiograph to RGB: modality and VOI LUTs applied, MONOCHROME1 inverted."""
    if not dicom_available():
        raise ImageDecodeError(
            f"{label}: DICOM needs pydicom: pip install 'xray[dicom]' (or pip install pydicom)"
        )
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    stream = io.BytesIO(source) if isinstance(source, bytes) else Path(source)
    try:
        with warnings.catch_warnings():  # pydicom warns on every odd tag of a broken file
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(stream)
            pixels = ds.pixel_array
    except FileNotFoundError:
        raise ImageDecodeError(f"{label}: file not found") from None
    except (InvalidDicomError, AttributeError, ValueError, OSError, EOFError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageDecodeError(f"{label}: unreadable DICOM ({first})") from None
    if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
        pixels = pixels[0]  # a radiograph is one frame; take the first of a series
    if pixels.ndim == 2:
        # Stored values -> Hounsfield/attenuation (modality) -> display window (VOI).
        pixels = apply_voi_lut(apply_modality_lut(pixels, ds), ds)
        if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
            pixels = pixels.max() - pixels  # MONOCHROME1 shows low values white
    return image_from_array(np.asarray(pixels))


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to 3-channel RGB: the one grayscale-to-3-channel step of the project.

    Alpha is composited on black (the background of a radiograph). 16/32-bit and float images
    are stretched from their own min..max to 0..255: scanners store 10-16 bit data in 16-bit
    containers, so dividing by 65535 would leave a 12-bit radiograph nearly black.
    """
    if im.mode == "RGB":
        return im
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        background = Image.new("RGB", rgba.size, (0, 0, 0))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if im.mode.startswith("I") or im.mode == "F":
        return _stretch_to_l(np.asarray(im)).convert("RGB")
    # L, 1, CMYK, YCbCr, LAB, HSV, RGB: Pillow's own conversions are right for these.
    return im.convert("RGB")


def image_from_array(pixels: np.ndarray) -> Image.Image:
    """An array (H, W), (H, W, 1) or (H, W, 3) as an RGB image (npz datasets)."""
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[:, :, 0]
    if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] != 3):
        raise ImageDecodeError(f"image array of shape {pixels.shape} is not (H, W) or (H, W, 3)")
    if pixels.dtype == np.uint8:
        return to_rgb(Image.fromarray(np.ascontiguousarray(pixels)))
    if pixels.ndim == 2:
        return _stretch_to_l(pixels).convert("RGB")
    # (H, W, 3) of a wider type: one stretch over all channels keeps their balance.
    return Image.fromarray(_stretch(pixels))


def _stretch(pixels: np.ndarray) -> np.ndarray:
    """Linearly map the array's own min..max to uint8 0..255 (constant arrays to 0)."""
    values = pixels.astype(np.float64)
    lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round((values - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _stretch_to_l(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(_stretch(pixels))


@functools.lru_cache(maxsize=6)
def npz_array(path: str, name: str, mtime_ns: int) -> np.ndarray:
    """One array of an npz, loaded once per process (mtime_ns invalidates the cache)."""
    with np.load(path, allow_pickle=False) as archive:
        return archive[name]
