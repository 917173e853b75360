"""Preprocessing: resize, center crop, channels and normalisation, as the weights expect."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import torch
    from PIL import Image


@dataclass(frozen=True)
class Preprocessing:
    """The resize / center-crop / normalize the weights were trained with, scaled to a size.

    Radiographs are decoded to RGB (grey in all three channels); `channels` = 1 takes the
    luminance back for models that read one channel (torchxrayvision), so the grayscale step
    lives here and only here. `squash` resizes to `resize` x `resize` ignoring the aspect ratio
    (SigLIP's processor does this) instead of resizing the shorter side.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: int
    """Shorter side after resizing (or both sides when `squash`), in pixels."""
    crop: int
    """Side of the square center crop fed to the network, in pixels."""
    interpolation: str
    """torchvision InterpolationMode value (`bilinear`, `bicubic`)."""
    channels: int = 3
    """Channels fed to the network: 3 (RGB) or 1 (grayscale)."""
    squash: bool = False
    """Resize both sides to `resize` (aspect ratio not kept) rather than the shorter side."""

    def __post_init__(self) -> None:
        if not 0 < self.crop <= self.resize:
            raise ValueError(f"need 0 < crop <= resize, got crop={self.crop} resize={self.resize}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean and std need {self.channels} values")

    def pixels(self, image: Image.Image) -> np.ndarray:
        """RGB or L (greyscale) PIL image -> resized, center-cropped uint8 pixels (crop, crop,
        channels).

        The half of preprocessing that runs per image (Pillow releases the GIL while it
        resizes, so decoding threads overlap the model); `normalize` does the rest per batch.
        An L image is resized and cropped as one channel, then repeated to three: Pillow
        resamples each channel alike, and the luma of three equal channels is that channel
        (19595 + 38470 + 7471 = 2^16 in Pillow's fixed point), so its pixels are exactly
        those of the same image given as RGB, for a third of the work.
        """
        import numpy as np
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        size = [self.resize, self.resize] if self.squash else self.resize
        image = F.resize(image, size, interpolation=InterpolationMode(self.interpolation))
        image = F.center_crop(image, self.crop)
        if self.channels == 1 and image.mode != "L":
            image = F.rgb_to_grayscale(image, num_output_channels=1)  # ITU-R 601-2 luma
        array = np.asarray(image, dtype=np.uint8)
        if array.ndim == 3:
            return array
        return array[..., None] if self.channels == 1 else np.repeat(array[..., None], 3, axis=2)

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (B, S, S, C) -> normalized float32 (B, C, S, S), channels_last in memory.

        The same element-wise steps as torchvision's ToTensor + Normalize (x / 255, then
        (x - mean) / std), so the result is bit-identical to preprocessing image by image.
        Runs on the tensor's device (a GPU receives 4x fewer bytes as uint8).
        """
        import torch

        x = pixels.permute(0, 3, 1, 2).to(torch.float32).div_(255)  # NHWC strides kept
        c = self.channels
        mean = torch.tensor(self.mean, dtype=torch.float32, device=x.device).view(1, c, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32, device=x.device).view(1, c, 1, 1)
        return x.sub_(mean).div_(std)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """RGB or L PIL image -> normalized float tensor (channels, crop, crop)."""
        import torch

        pixels = torch.from_numpy(self.pixels(image).copy())  # (S, S, C) uint8, writable
        return self.normalize(pixels[None])[0].contiguous()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready description (recorded in stores and runs).

        `channels` and `squash` appear only when they differ from the torchvision defaults, so
        stores written before they existed keep the same provenance. `intensity` names the
        decoder's intensity rule (`featurestore.data.INTENSITY_RULE`): a store made under
        another rule has other preprocessing, so `extract` rebuilds it.
        """
        from featurestore.data import INTENSITY_RULE

        doc: dict[str, Any] = {
            "mean": list(self.mean),
            "std": list(self.std),
            "resize": self.resize,
            "crop": self.crop,
            "interpolation": self.interpolation,
            "intensity": INTENSITY_RULE,
        }
        if self.channels != 3:
            doc["channels"] = self.channels
        if self.squash:
            doc["squash"] = True
        return doc

    @classmethod
    def from_dict(cls, doc: Any) -> Preprocessing:
        """Inverse of `as_dict` (KeyError, TypeError or ValueError on a malformed record)."""
        return cls(
            mean=tuple(float(v) for v in doc["mean"]),
            std=tuple(float(v) for v in doc["std"]),
            resize=int(doc["resize"]),
            crop=int(doc["crop"]),
            interpolation=str(doc["interpolation"]),
            channels=int(doc.get("channels", 3)),
            squash=bool(doc.get("squash", False)),
        )
