"""Preprocessing: resize, center crop, channels and normalisation, as the weights expect."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

    @cached_property
    def _transform(self) -> Callable[[Image.Image], torch.Tensor]:
        from torchvision import transforms as T

        mode = T.InterpolationMode(self.interpolation)
        size = (self.resize, self.resize) if self.squash else self.resize
        steps: list[Any] = [T.Resize(size, interpolation=mode), T.CenterCrop(self.crop)]
        if self.channels == 1:
            steps.append(T.Grayscale(num_output_channels=1))  # ITU-R 601-2 luma
        return T.Compose([*steps, T.ToTensor(), T.Normalize(self.mean, self.std)])

    def __call__(self, image: Image.Image) -> torch.Tensor:
        """RGB PIL image -> normalized float tensor (channels, crop, crop)."""
        return self._transform(image)

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
