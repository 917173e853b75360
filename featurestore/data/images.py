"""Decoding of any image file (or array) found in the wild to one 3-channel RGB PIL image."""

from __future__ import annotations

import functools
import io
import os
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from featurestore.data.formats import DICOM_SUFFIXES, PILLOW_SUFFIXES, has_dicom_magic, printable
from featurestore.errors import XrayError

# What Pillow raises on bad bytes: OSError (truncated, broken data stream, unidentified),
# SyntaxError (some plugins on malformed headers), ValueError/EOFError on short headers.
_DECODE_FAILURES = (OSError, SyntaxError, ValueError, EOFError)
MAX_PIXELS_ENV = "XRAY_MAX_IMAGE_PIXELS"
"""Environment variable raising the decompression-bomb limit for trusted data (pixels)."""
INTENSITY_RULE = "minmax-v1"
"""The intensity rule of `to_rgb`, recorded in preprocessing so a store or run made under
another rule is rebuilt or refused rather than mixed."""


class ImageDecodeError(XrayError):
    """A file that is not a readable image (zero bytes, truncated, corrupt, too large)."""


def decode_image(
    source: Path | str | bytes,
    *,
    min_size: int | None = None,
    name: str | None = None,
    grey: bool = False,
) -> Image.Image:
    """Decode a file or its bytes to an RGB image (or L, with `grey`), at reduced JPEG scale when
    min_size allows.

    `min_size` is the smallest short side the caller needs: JPEGs are then decoded by libjpeg
    at 1/2, 1/4 or 1/8 scale (Pillow's draft mode) but never below it. `name` labels errors
    for bytes input. The whole image is always decoded, so truncated files are detected.
    `grey` keeps a greyscale source one channel (mode L, `to_8bit`): the pixels of the RGB
    image's three equal channels, a third of the work for every later step (the extraction
    path; `Preprocessing.pixels` makes the three channels at the end). DICOM is always RGB.
    """
    label = printable(name or (str(source) if not isinstance(source, bytes) else "<bytes>"))
    limit = max_image_pixels()
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
            # Pillow reads its limit from this module attribute at open time; every caller
            # sets the same value (the environment's), so threads cannot disagree.
            Image.MAX_IMAGE_PIXELS = limit
            with Image.open(stream) as im:
                if min_size is not None and im.format == "JPEG":
                    im.draft(im.mode, (min_size, min_size))
                im.load()  # full decode now: a truncated file fails here, not later
                oriented = ImageOps.exif_transpose(im)
                return to_8bit(oriented) if grey else to_rgb(oriented)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        first = str(exc).split(" could be")[0].split(" exceeds")[0]
        raise ImageDecodeError(
            f"{label}: refused as a possible decompression bomb ({first}, more than the limit "
            f"of {limit} pixels); if the file is a trusted image, raise the limit: "
            f"{MAX_PIXELS_ENV}=<pixels> xray ..."
        ) from None
    except UnidentifiedImageError:
        raise ImageDecodeError(f"{label}: not an image Pillow can read") from None
    except _DECODE_FAILURES as exc:
        raise ImageDecodeError(f"{label}: unreadable or truncated image ({exc})") from None


def max_image_pixels() -> int:
    """The decompression-bomb limit: $XRAY_MAX_IMAGE_PIXELS, else Pillow's default (~89.5 M).

    A genuine radiograph can exceed Pillow's default (9500 x 9500 = 90.25 M pixels); a bomb
    (a tiny file claiming 100000 x 100000) is still refused unless the limit is raised past it.
    Raises XrayError when the variable is not a positive integer.
    """
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip().replace("_", "")
    if not raw:
        return _PILLOW_DEFAULT_MAX_PIXELS
    if not raw.isdigit() or int(raw) < 1:
        raise XrayError(
            f"{MAX_PIXELS_ENV}={os.environ[MAX_PIXELS_ENV]!r} is not a positive number of pixels "
            f"(e.g. {MAX_PIXELS_ENV}=200000000)"
        )
    return int(raw)


_PILLOW_DEFAULT_MAX_PIXELS = int(Image.MAX_IMAGE_PIXELS or 89_478_485)


def is_dicom(source: Path | str | bytes) -> bool:
    """DICOM bytes or file: `DICM` at offset 128, or a .dcm/.dicom name.

    Files with a Pillow suffix are not sniffed; any other name (`IM0001`, `1.2.840.113619.2`)
    is DICOM when its content says so.
    """
    if isinstance(source, bytes):
        return source[128:132] == b"DICM"
    suffix = Path(source).suffix.lower()
    if suffix in DICOM_SUFFIXES:
        return True
    return suffix not in PILLOW_SUFFIXES and has_dicom_magic(Path(source))


def dicom_available() -> bool:
    """Whether pydicom (the `dicom` extra) is installed."""
    from importlib.util import find_spec

    return find_spec("pydicom") is not None


def decode_dicom(source: Path | str | bytes, *, label: str) -> Image.Image:
    """A DICOM radiograph to RGB: modality and VOI LUTs applied, MONOCHROME1 inverted."""
    if not dicom_available():
        raise ImageDecodeError(
            f"{label}: DICOM needs pydicom: pip install -e '.[dicom]' in the xray folder "
            "(or pip install pydicom)"
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
            if int(getattr(ds, "NumberOfFrames", 1) or 1) > 1:
                pixels = pixels[0]  # a radiograph is one frame; take the first of a series
            if pixels.ndim == 2:
                # Stored values -> Hounsfield/attenuation (modality) -> display window (VOI).
                pixels = apply_voi_lut(apply_modality_lut(pixels, ds), ds)
                if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
                    pixels = pixels.max() - pixels  # MONOCHROME1 shows low values white
    except FileNotFoundError:
        raise ImageDecodeError(f"{label}: file not found") from None
    except RuntimeError as exc:
        # pydicom: "Unable to decompress 'JPEG Lossless, ...' pixel data because all plugins
        # are missing dependencies" -- a valid file this installation cannot decode.
        text = str(exc)
        if "missing dependencies" in text or "Unable to decompress" in text:
            syntax = text.split("'")[1] if text.count("'") >= 2 else "compressed"
            raise ImageDecodeError(
                f"{label}: {syntax} DICOM needs a decoder that is not installed: "
                "pip install -e '.[dicom-codecs]' in the xray folder (pylibjpeg) or "
                "pip install python-gdcm"
            ) from None
        raise ImageDecodeError(
            f"{label}: unreadable DICOM pixel data ({_first_line(exc)})"
        ) from None
    except (
        InvalidDicomError,
        AttributeError,
        ValueError,
        OSError,
        EOFError,
        KeyError,
        IndexError,
        TypeError,
        NotImplementedError,
        struct.error,
    ) as exc:
        # Corrupt files reach pydicom's parser and pixel handlers in many ways; each is a file
        # to fix, not a bug of xray.
        raise ImageDecodeError(f"{label}: unreadable DICOM ({_first_line(exc)})") from None
    return image_from_array(np.asarray(pixels))


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode to 3-channel RGB: the one grayscale-to-3-channel step of the project,
    `to_8bit` and then three equal channels for a greyscale image."""
    return to_8bit(im).convert("RGB")


def to_8bit(im: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit L (a greyscale image) or RGB (a colour one).

    The intensity rule (`INTENSITY_RULE`), the same for every container and bit depth (8-bit,
    12-bit stored in 16, 16-bit, float, DICOM after its LUTs): the image's own minimum..maximum
    (over all channels) maps linearly to 0..255, rounded; a constant image becomes black. So the
    same picture gives the same pixels whether saved as 8-bit, as 16-bit (values x257) or as a
    float in [0, 1]; a fixed divisor per container (/255, /65535) would leave a 12-bit radiograph
    in a 16-bit file nearly black and would tell the containers apart. Alpha is composited on
    black (the background of a radiograph) first.
    """
    if im.mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = im.convert("RGBA")
        background = Image.new("RGB", rgba.size, (0, 0, 0))
        background.paste(rgba, mask=rgba.getchannel("A"))
        im = background
    if im.mode.startswith("I") or im.mode == "F":
        return _stretch_to_l(np.asarray(im))
    if im.mode not in ("L", "RGB"):
        im = im.convert("RGB")  # 1, CMYK, YCbCr, LAB, HSV: Pillow's conversions are right
    return _stretch_8bit(im)


def _stretch_8bit(im: Image.Image) -> Image.Image:
    """The min..max stretch of an L or RGB image as one lookup table (Pillow, in C)."""
    extrema = im.getextrema()  # (lo, hi) for L; ((lo, hi),) * 3 for RGB
    pairs = [extrema] if im.mode == "L" else list(extrema)
    lo = min(int(p[0]) for p in pairs)  # type: ignore[index]
    hi = max(int(p[1]) for p in pairs)  # type: ignore[index]
    if lo == 0 and hi == 255:
        return im  # already spans the range (most radiographs): nothing to do
    # The table is `_stretch` itself applied to each value, so 8-bit and wider containers of
    # the same picture round identically.
    table = _stretch_range(np.arange(256, dtype=np.float64), float(lo), float(hi)).tolist()
    return im.point(table * len(im.getbands()))


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
    finite = values[np.isfinite(values)]
    if not finite.size:
        return np.zeros(values.shape, dtype=np.uint8)
    return _stretch_range(values, float(finite.min()), float(finite.max()))


def _stretch_range(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """round((v - lo) / (hi - lo) * 255) as uint8; NaN to 0.

    Dividing first makes k*v over k*hi the same correctly rounded quotient as v over hi, so a
    picture and the same picture x257 (8-bit vs 16-bit) give identical bytes.
    """
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = np.round((values - lo) / (hi - lo) * 255.0)
    return np.nan_to_num(np.clip(scaled, 0, 255), nan=0.0).astype(np.uint8)


def _stretch_to_l(pixels: np.ndarray) -> Image.Image:
    return Image.fromarray(_stretch(pixels))


@functools.lru_cache(maxsize=6)
def npz_array(path: str, name: str, mtime_ns: int) -> np.ndarray:
    """One array of an npz, loaded once per process (mtime_ns invalidates the cache)."""
    with np.load(path, allow_pickle=False) as archive:
        return archive[name]
