"""Latents as flat vectors, for downstream work (regression from other signals, per-layer conditioning).

`VDVAE.encode` gives one tensor per decoder layer, (N, zdim, r, r), top (lowest resolution) first. Many uses want
one row of numbers per image instead: `flatten_latents` concatenates the layers' values (each flattened in
C, H, W order), and `unflatten_latents` turns such rows back into the list that `VDVAE.decode` takes, with the
layers they cover filled and the rest left to the prior. `latent_layout(config)` says where each layer sits.

Example (docs/latents.md): the first 31 layers of the imagenet64 architecture are 91,168 numbers per image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import VDVAEConfig

__all__ = ["LatentSlot", "latent_layout", "flatten_latents", "unflatten_latents", "encode_dataset"]


@dataclass(frozen=True)
class LatentSlot:
    """Decoder layer `index` at `resolution`: its latent has `shape` (zdim, r, r) and occupies numbers
    offset .. offset + size - 1 of a flat row."""

    index: int
    resolution: int
    shape: tuple[int, int, int]
    offset: int
    size: int


def latent_layout(config: VDVAEConfig) -> list[LatentSlot]:
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
        raise ValueError(
            f"each latent must be a tensor (N, zdim, r, r) or encode(stats=True)'s LayerLatents, "
            f"got {type(layer).__name__}" + (f" of shape {tuple(z.shape)}" if isinstance(z, torch.Tensor) else "")
        )
    return z


def flatten_latents(latents: Sequence[torch.Tensor | object]) -> torch.Tensor:
    """(N, D) rows from the first layers' latents (e.g. `model.encode(x)[:31]`): each layer flattened in
    (zdim, r, r) order, concatenated top to bottom. D is the sum of the layers' zdim * r * r."""
    layers = [_tensor(z) for z in latents]
    if not layers:
        raise ValueError("no latents to flatten")
    n = layers[0].shape[0]
    if any(z.shape[0] != n for z in layers):
        raise ValueError(f"the latents hold different numbers of images: {[z.shape[0] for z in layers]}")
    return torch.cat([z.reshape(n, -1) for z in layers], dim=1)


def unflatten_latents(flat: torch.Tensor, model_or_config) -> list[torch.Tensor]:
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
        raise ValueError(
            f"D = {d} numbers per row does not end on a layer boundary of this model; the first "
            f"layers end at {near or boundaries[:6]}"
        )
    count = boundaries.index(d) + 1
    return [flat[:, s.offset : s.offset + s.size].reshape(-1, *s.shape).float() for s in layout[:count]]


# ----------------------------------------------------------------------------------------- data-set scale
#: What `encode_dataset` (and `vdvae-zoo encode`) writes, the one rule (docs/latents.md, "From the command line"):
ENCODE_OUTPUT_RULE = (
    "without --flat: .safetensors with z.i of every decoder layer (--stats adds mean.i and std.i); with --flat N: the "
    "first N layers as rows, (images, D), instead of the per-layer tensors: 'flat' (--stats adds 'flat_mean' and "
    "'flat_std') in a .safetensors, or 'flat' alone as an .npy (one array per file, so no --stats) with "
    "OUTPUT.json beside it; every output also records the images, the seed and the model"
)


def encode_outputs(output, flat: int | None = None, stats: bool = False) -> list[Path]:
    """The files `encode_dataset(output, flat=, stats=)` writes, after checking that the combination is one
    `ENCODE_OUTPUT_RULE` allows (ValueError naming `output` otherwise): check them before any work starts."""
    output = Path(output)
    suffix = output.suffix.lower()
    if suffix not in (".safetensors", ".npy"):
        raise ValueError(f"{output}: latents are written as .safetensors or .npy ({ENCODE_OUTPUT_RULE})")
    if suffix == ".npy" and flat is None:
        raise ValueError(
            f"{output}: an .npy holds one array, the flat rows of the first layers: give --flat N "
            "(flat=N), or write a .safetensors for every layer"
        )
    if suffix == ".npy" and stats:
        raise ValueError(
            f"{output}: an .npy holds one array (the flat rows), so --stats (stats=True) has nowhere to "
            "go: write a .safetensors to get 'flat_mean' and 'flat_std' with the rows"
        )
    return [output, output.with_name(output.name + ".json")] if suffix == ".npy" else [output]


def encode_dataset(
    model,
    dataset,
    output,
    *,
    flat: int | None = None,
    stats: bool = False,
    mean: bool = False,
    seed: int = 0,
    batch_size: int | None = None,
    chunk: int = 256,
    resize: str | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Encode every image of `dataset` (datasets.py) in chunks, image i with `image_seed(seed, i)` as every
    score is computed, and write them to `output` by `ENCODE_OUTPUT_RULE`:

    - `.safetensors` without `flat`: `z.i` per decoder layer (N, zdim, r, r), with `stats` also `mean.i` and `std.i`;
    - `.safetensors` with `flat`: `flat`, the first `flat` layers as (N, D) rows (`flatten_latents`), with `stats`
      also `flat_mean` and `flat_std` in the same layout; the per-layer tensors are not written;
    - `.npy` (needs `flat`, refuses `stats`): `flat` as one float32 (N, D) array, written chunk by chunk (memory
      does not grow with the data set), and `OUTPUT.json` beside it.
    The image paths (or positions), seed and model's provenance go into the metadata (or OUTPUT.json). Every
    file is refused before any work when it exists and `overwrite` is false.

    `mean`: posterior means instead of samples. Unreadable images are skipped (listed). Returns a summary."""
    import contextlib
    import json

    from .compute.batching import image_seed
    from .data.files import atomic_write, refuse_existing, staged_file, write_npy

    files = encode_outputs(output, flat, stats)
    output = files[0]
    if flat is not None and not 1 <= flat <= model.num_layers:
        raise ValueError(f"flat must be a number of layers in 1..{model.num_layers}, got {flat}")
    for path in files:
        refuse_existing(path, overwrite)
    layout = latent_layout(model.config)
    width = layout[flat - 1].offset + layout[flat - 1].size if flat else 0
    fields = ("z", "mean", "std") if stats else ("z",)
    size = model.config.image_size
    names: list[str] = []
    skipped: list = []
    pieces: dict = {}
    from .data.progress import progress_bar

    with contextlib.ExitStack() as stack:
        rows_file = stack.enter_context(staged_file(output, overwrite=overwrite)) if flat and files[1:] else None
        memmap: np.memmap | None = None
        with progress_bar(total=len(dataset), unit="img", desc="encoding", enabled=progress) as bar:
            for start in range(0, len(dataset), chunk):
                idx = list(range(start, min(start + chunk, len(dataset))))
                images, kept, bad = dataset.read_checked(idx, size, resize, model.config.image_channels)
                skipped += bad
                bar.update(len(idx))
                if not kept:
                    continue
                layers = model.encode(
                    images, stats=True, mean=mean, batch_size=batch_size, seeds=[image_seed(seed, i) for i in kept]
                )
                names += [str(dataset.files[i]) if dataset.files is not None else str(i) for i in kept]
                if rows_file is not None:
                    if memmap is None:  # the staged file was created exclusively: nothing else is opened here
                        memmap = np.lib.format.open_memmap(
                            rows_file, mode="w+", dtype=np.float32, shape=(len(dataset), width)
                        )
                    memmap[len(names) - len(kept) : len(names)] = flatten_latents(layers[:flat]).numpy()
                    continue
                for f in fields:
                    if flat:
                        rows = flatten_latents([getattr(layer, f) for layer in layers[:flat]])
                        pieces.setdefault("flat" if f == "z" else f"flat_{f}", []).append(rows)
                    else:
                        for i, layer in enumerate(layers):
                            pieces.setdefault(f"{f}.{i}", []).append(getattr(layer, f))
        if not names:
            raise ValueError(f"none of the {len(dataset)} images of {dataset.name} could be read at {size}x{size}")
        meta = {
            "images": names,
            "skipped": [[str(dataset.files[i]) if dataset.files is not None else i, why] for i, why in skipped],
            "model": model.provenance.to_dict(),
            "seed": seed,
            "mean": mean,
            "seeds": "image i of the data set: vdvae_zoo.compute.batching.image_seed(seed, i)",
            "layout": [vars(s) for s in layout[: flat or len(layout)]],
        }
        if rows_file is not None and memmap is not None:
            memmap.flush()
            del memmap
            if len(names) < len(dataset):  # skipped images: keep only the rows written
                write_npy(output, np.load(rows_file, mmap_mode="r")[: len(names)], overwrite=overwrite)
                rows_file.unlink()  # the full-size staged file: removed, so it is not placed
            atomic_write(files[1], json.dumps(meta, indent=1) + "\n", overwrite=overwrite)
    if rows_file is None:
        from safetensors.torch import save_file

        tensors = {k: torch.cat(v).contiguous() for k, v in pieces.items()}
        metadata = {
            "vdvae_zoo": json.dumps({k: v for k, v in meta.items() if k != "layout"}),
            "paths": json.dumps(names),
        }
        atomic_write(output, lambda tmp: save_file(tensors, str(tmp), metadata=metadata), overwrite=overwrite)
    return {
        "output": str(output),
        "images": len(names),
        "skipped": len(skipped),
        "flat_width": width or None,
        "layers": flat or model.num_layers,
    }
