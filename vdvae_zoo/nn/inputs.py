"""Checking what users pass to the model's methods, with errors that name the argument and what to do:
uint8 NHWC images, temperatures, latents, layer counts."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..config import VDVAEConfig

__all__ = [
    "ImageBatch",
    "Temperature",
    "preprocess",
    "figure4_keeps",
    "check_images",
    "check_image_pair",
    "check_count",
    "check_keep",
    "check_latents",
    "layer_temperatures",
    "LinearTemperature",
    "temperature_record",
]

ImageBatch = torch.Tensor | np.ndarray


@dataclass(frozen=True)
class LinearTemperature:
    """PnP-HVAE's linear schedule: layer l of L takes top + (bottom - top) * l / (L - 1), from `top` (the first
    decoder layer) to `bottom` (the last). Written "TOP..BOTTOM" on the command line (-t 0.3..0.8)."""

    top: float
    bottom: float

    def per_layer(self, layers: int) -> list[float]:
        return [self.top + (self.bottom - self.top) * i / max(layers - 1, 1) for i in range(layers)]

    def __str__(self) -> str:
        return f"{self.top:g}..{self.bottom:g}"


Temperature = float | Sequence[float] | Mapping[int, float] | LinearTemperature


def temperature_record(temperature: Temperature) -> Any:
    """A temperature as JSON holds it: a linear schedule as its command-line text "TOP..BOTTOM"."""
    return str(temperature) if isinstance(temperature, LinearTemperature) else temperature


def _as_pixels(images: Any, channels: int, name: str) -> Any:
    """What people hold, as uint8 NHWC: a PIL image or a list of them (read in the model's channels, as the CLI
    reads files); a list of arrays or tensors (stacked); floating-point pixels in [0, 1] (the torchvision
    convention; x 255, rounded); an NCHW tensor or array (the channels first: transposed). uint8 NHWC passes as
    it is."""
    if _is_pil(images) or (isinstance(images, (list, tuple)) and images and all(_is_pil(i) for i in images)):
        from ..data.images import CHANNEL_MODES

        pictures = [images] if _is_pil(images) else list(images)
        images = np.stack([np.asarray(p.convert(CHANNEL_MODES[channels])) for p in pictures])
        return images[..., None] if images.ndim == 3 else images
    if isinstance(images, (list, tuple)) and images:
        items = [torch.as_tensor(np.asarray(i)) if not isinstance(i, torch.Tensor) else i for i in images]
        if len({tuple(i.shape) for i in items}) != 1:
            raise ValueError(f"{name}: the images of a list must all have one shape")
        images = torch.stack(items)
    if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 4:
        c_last, c_first = images.shape[3], images.shape[1]
        if c_last != channels and c_first == channels:  # NCHW (torchvision's layout)
            images = images.permute(0, 2, 3, 1) if isinstance(images, torch.Tensor) else images.transpose(0, 2, 3, 1)
    floating = images.is_floating_point() if isinstance(images, torch.Tensor) else (
        isinstance(images, np.ndarray) and np.issubdtype(images.dtype, np.floating)
    )  # fmt: skip
    if floating:
        values = torch.as_tensor(images, dtype=torch.float32)
        if values.numel() and not (bool(torch.isfinite(values).all()) and values.min() >= 0 and values.max() <= 1):
            raise ValueError(
                f"{name}: floating-point pixels must be finite and in [0, 1] (the torchvision convention); for "
                "0..255 values pass uint8 (.astype(np.uint8) / .to(torch.uint8))"
            )
        return (values * 255).round().to(torch.uint8)
    return images


def _is_pil(value: Any) -> bool:
    return type(value).__module__.startswith("PIL.") and hasattr(value, "convert")


def check_images(images: ImageBatch | Any, config: VDVAEConfig, name: str = "images") -> torch.Tensor:
    """uint8 (N, S, S, C) pixels for a model of image size S and C channels, as a CPU tensor. Also taken: a PIL
    image or a list of them, a list of arrays, floating-point pixels in [0, 1], NCHW (see `_as_pixels`)."""
    images = _as_pixels(images, config.image_channels, name)
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise ValueError(
                f"{name} must be uint8 pixels (0..255), got numpy dtype {images.dtype}; "
                "convert with .astype(np.uint8) if the values are already in 0..255"
            )
        images = torch.from_numpy(np.ascontiguousarray(images) if images.flags.writeable else images.copy())
    if not isinstance(images, torch.Tensor):
        s, c = config.image_size, config.image_channels
        raise ValueError(
            f"{name} must be uint8 pixels of shape (N, {s}, {s}, {c}) (a tensor or numpy array), a PIL image or a "
            f"list of them, or floats in [0, 1]; got {type(images).__name__}"
        )
    if images.dtype != torch.uint8:
        raise ValueError(f"{name} must be uint8 pixels (0..255), got {images.dtype}")
    s, c = config.image_size, config.image_channels
    if images.ndim != 4:
        raise ValueError(f"{name} must have shape (N, {s}, {s}, {c}) (uint8 NHWC), got {tuple(images.shape)}")
    if images.shape[3] != c:
        raise ValueError(f"{name} must have {c} channels in the last axis (NHWC), got shape {tuple(images.shape)}")
    if images.shape[1] != s or images.shape[2] != s:
        raise ValueError(
            f"{name} must be {s}x{s} for this model, got {images.shape[1]}x{images.shape[2]} "
            f"(shape {tuple(images.shape)})"
        )
    if images.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch")
    return images


def check_image_pair(a: ImageBatch, b: ImageBatch, config: VDVAEConfig) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Two single images (H, W, 3) or two batches of the same shape; returns them as batches and whether they
    were single images."""
    single = isinstance(a, (torch.Tensor, np.ndarray)) and a.ndim == 3
    if single:
        a, b = a[None], b[None] if isinstance(b, (torch.Tensor, np.ndarray)) and b.ndim == 3 else b
    a, b = check_images(a, config, "a"), check_images(b, config, "b")
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    return a, b, single


def check_count(value: int, name: str, minimum: int = 1, what: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}{f' ({what})' if what else ''}, got {value!r}")
    return value


def figure4_keeps(num_layers: int) -> list[int]:
    """The paper's Figure 4 columns that fit a model of `num_layers` layers: 1, 4 and 16 layers kept where fewer
    than all, then all of them (no column twice)."""
    return [k for k in (1, 4, 16) if k < num_layers] + [num_layers]


def check_keep(keep: int | None, num_layers: int) -> int:
    """A number of decoder layers to keep, 0..L; None means all."""
    keep = num_layers if keep is None else keep
    if isinstance(keep, bool) or not isinstance(keep, int) or not 0 <= keep <= num_layers:
        raise ValueError(f"keep must be an integer in 0..{num_layers} (number of layers to keep), got {keep!r}")
    return keep


def check_latents(
    latents: Sequence[torch.Tensor | None],
    n: int | None,
    config: VDVAEConfig,
) -> tuple[list[torch.Tensor | None], int]:
    """Latents for the first layers (None: sampled), each (N, zdim, r, r); returns them and the batch size N."""
    latents = list(latents)
    resolutions = [b.resolution for b in config.decoder_blocks]
    if len(latents) > len(resolutions):
        raise ValueError(f"got {len(latents)} latents; this model has {len(resolutions)} decoder layers")
    given = [z for z in latents if z is not None]
    if n is None:
        if not given:
            raise ValueError("decode needs n= (the batch size) when no latent is given")
        n = given[0].shape[0]
    for i, z in enumerate(latents):
        if z is not None:
            expected = (n, config.zdim, resolutions[i], resolutions[i])
            if tuple(z.shape) != expected:
                raise ValueError(f"latent {i} has shape {tuple(z.shape)}; expected {expected} for layer {i}")
    return latents, n


def layer_temperatures(temperature: Temperature, layer_resolutions: Sequence[int]) -> list[float]:
    """Expand a temperature to one float per decoder layer.

    `temperature` is a number (every layer), a sequence of L numbers (one per layer, top to bottom), a
    LinearTemperature(top, bottom), or a mapping {resolution: t} read as a schedule: a layer at resolution r takes
    the value of the largest key <= r (layers below every key use 1.0). 0 means the prior mean; negative values
    are refused.
    """
    L = len(layer_resolutions)
    if isinstance(temperature, LinearTemperature):
        values = temperature.per_layer(L)
    elif isinstance(temperature, Mapping):
        try:
            schedule = sorted((int(k), float(v)) for k, v in temperature.items())
        except (TypeError, ValueError):
            raise ValueError(f"a temperature mapping must map resolutions to numbers, got {temperature!r}") from None
        values = []
        for r in layer_resolutions:
            below = [t for k, t in schedule if k <= r]
            values.append(below[-1] if below else 1.0)
    elif isinstance(temperature, (int, float)) and not isinstance(temperature, bool):
        values = [float(temperature)] * L
    else:
        items = temperature.tolist() if isinstance(temperature, torch.Tensor) else temperature
        try:
            values = [float(t) for t in items]  # type: ignore[union-attr]  # anything else is refused below
        except (TypeError, ValueError):
            raise ValueError(
                f"temperature must be a number, a list of {L} numbers (one per decoder layer) "
                f"or a mapping {{resolution: number}}, got {temperature!r}"
            ) from None
        if len(values) != L:
            raise ValueError(
                f"temperature list has {len(values)} values; this model has {L} decoder layers, "
                "so give exactly that many (or one number)"
            )
    for i, t in enumerate(values):
        if not math.isfinite(t) or t < 0:
            raise ValueError(f"temperature must be finite and >= 0 (0 = prior mean), got {t} for layer {i}")
    return values


def preprocess(
    images: torch.Tensor,
    config: VDVAEConfig,
    device: torch.device,
    memory_format: torch.memory_format = torch.contiguous_format,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 NHWC pixels -> (encoder input: (x * pixel_scale + shift) * scale, float NCHW in `dtype`;
    likelihood target: (x' * pixel_scale + shift_loss) * scale_loss, float32 NHWC in [-1, 1], with x' the pixels
    reduced to 5 bits (floor(x / 8) * 8) when `config.low_bit`). See VDVAEConfig."""
    c = config
    x = images.to(device, non_blocking=True).float()
    encoder_input = (x * c.pixel_scale + c.shift) * c.scale if c.pixel_scale != 1 else (x + c.shift) * c.scale
    target = torch.floor(x / 8.0) * 8.0 if c.low_bit else x
    if c.pixel_scale != 1:
        target = target * c.pixel_scale
    target = (target + c.shift_loss) * c.scale_loss
    encoder_input = encoder_input.permute(0, 3, 1, 2).contiguous(memory_format=memory_format)
    return encoder_input.to(dtype), target
