"""Latents as flat vectors, for downstream work (regression from other signals, per-layer conditioning).

`VDVAE.encode` gives one tensor per decoder layer, (N, zdim, r, r), top (lowest resolution) first. Many uses want
one row of numbers per image instead: `flatten_latents` concatenates the layers' values (each flattened in
C, H, W order), and `unflatten_latents` turns such rows back into the list that `VDVAE.decode` takes, with the
layers they cover filled and the rest left to the prior. `latent_layout(config)` says where each layer sits.

Example (docs/latents.md): the first 31 layers of the imagenet64 architecture are 91,168 numbers per image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple, Union

import torch

from .config import VDVAEConfig

__all__ = ["LatentSlot", "latent_layout", "flatten_latents", "unflatten_latents"]


@dataclass(frozen=True)
class LatentSlot:
    """Decoder layer `index` at `resolution`: its latent has `shape` (zdim, r, r) and occupies numbers
    offset .. offset + size - 1 of a flat row."""

    index: int
    resolution: int
    shape: Tuple[int, int, int]
    offset: int
    size: int


def latent_layout(config: VDVAEConfig) -> List[LatentSlot]:
    """Every decoder layer's place in a flat row, top (lowest resolution) first."""
    slots, offset = [], 0
    for i, r in enumerate(config.layer_resolutions):
        size = config.zdim * r * r
        slots.append(LatentSlot(i, r, (config.zdim, r, r), offset, size))
        offset += size
    return slots


def _tensor(layer) -> torch.Tensor:
    z = getattr(layer, "z", layer)  # a LayerLatents (encode(stats=True)) or a tensor
    if not isinstance(z, torch.Tensor) or z.ndim != 4:
        raise ValueError(f"each latent must be a tensor (N, zdim, r, r) or encode(stats=True)'s LayerLatents, "
                         f"got {type(layer).__name__}" + (f" of shape {tuple(z.shape)}" if isinstance(z, torch.Tensor) else ""))
    return z


def flatten_latents(latents: Sequence[Union[torch.Tensor, object]]) -> torch.Tensor:
    """(N, D) rows from the first layers' latents (e.g. `model.encode(x)[:31]`): each layer flattened in
    (zdim, r, r) order, concatenated top to bottom. D is the sum of the layers' zdim * r * r."""
    layers = [_tensor(z) for z in latents]
    if not layers:
        raise ValueError("no latents to flatten")
    n = layers[0].shape[0]
    if any(z.shape[0] != n for z in layers):
        raise ValueError(f"the latents hold different numbers of images: {[z.shape[0] for z in layers]}")
    return torch.cat([z.reshape(n, -1) for z in layers], dim=1)


def unflatten_latents(flat: torch.Tensor, model_or_config) -> List[torch.Tensor]:
    """The inverse of `flatten_latents`: (N, D) rows -> the list of the first layers' latents that D covers,
    which `model.decode(latents, temperature=...)` takes (the layers after them are drawn from the prior). D must
    end on a layer boundary of `latent_layout`."""
    config = getattr(model_or_config, "config", model_or_config)
    if not isinstance(flat, torch.Tensor):
        flat = torch.as_tensor(flat)
    if flat.ndim != 2:
        raise ValueError(f"flat latents must be (N, D), got shape {tuple(flat.shape)}")
    d = flat.shape[1]
    layout = latent_layout(config)
    boundaries = [s.offset + s.size for s in layout]
    if d not in boundaries:
        near = ", ".join(f"{b} ({i + 1} layers)" for i, b in enumerate(boundaries) if abs(b - d) <= max(d, 1))
        raise ValueError(f"D = {d} numbers per row does not end on a layer boundary of this model; the first "
                         f"layers end at {near or boundaries[:6]}")
    count = boundaries.index(d) + 1
    return [flat[:, s.offset:s.offset + s.size].reshape(-1, *s.shape).float() for s in layout[:count]]
