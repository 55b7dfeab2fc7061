"""Micro-batches: how many images one pass may hold, and the random numbers each pass uses.

A batch larger than the memory budget is split. The split must not change seeded results, so the random
numbers of the whole batch are drawn first, in the original implementation's order (one standard normal per
decoder layer that samples, top to bottom, each (N, zdim, r, r); then, when pixels are sampled, the output
distribution's uniforms), and each micro-batch takes its slice. Only when those draws alone would exceed the
budget (thousands of images) does each micro-batch draw its own, as consecutive calls would.

With per-image `seeds` instead, image i draws its numbers (same shapes and order, batch size 1) from its own
generator seeded by seeds[i]: results then depend on nothing but the seeds, not on batch sizes, on where a run
was resumed, or on how images are shared out between processes. `image_seed(seed, index)` makes such seeds.

The budget is fixed per device (`CPU_BATCH_MEMORY` bytes; `CUDA_BATCH_MEMORY_FRACTION` of the GPU's total
memory), not the free memory, so a seeded call draws the same numbers every time on the same machine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .config import VDVAEConfig
from .dmol import pixel_uniform_shapes, uniform

__all__ = ["CPU_BATCH_MEMORY", "CUDA_BATCH_MEMORY_FRACTION", "memory_budget", "auto_batch_size", "MicroBatch",
           "micro_batches", "standard_normal", "check_batch_size", "image_seed", "seeded_draws"]


def image_seed(seed: int, index: int) -> int:
    """A 63-bit seed for image `index` of a run seeded with `seed` (numpy's SeedSequence: stable across platforms)."""
    a, b = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, np.uint32)
    return (int(a) << 31 | int(b) >> 1) & (2 ** 63 - 1)


def seeded_draws(seeds: Sequence[int], config: VDVAEConfig, device: torch.device, sampling_layers: Sequence[bool],
                 pixels: bool) -> Tuple[Optional[Callable[[torch.Tensor], torch.Tensor]], Optional[List[torch.Tensor]]]:
    """The decoder's noise hook and the pixel uniforms for a batch whose image i draws from a generator seeded
    by seeds[i]: per image, a standard normal per sampling layer (top to bottom), then the pixel uniforms."""
    resolutions = [b.resolution for b in config.decoder_blocks]
    per_image_normals, per_image_uniforms = [], []
    for seed in seeds:
        g = torch.Generator(device=device).manual_seed(int(seed))
        per_image_normals.append([torch.empty((1, config.zdim, r, r), device=device).normal_(generator=g)
                                  for r, sampling in zip(resolutions, sampling_layers) if sampling])
        if pixels:
            per_image_uniforms.append([uniform(shape, device, g) for shape in
                                       pixel_uniform_shapes(1, config.image_size, config.image_size, config.num_mixtures)])
    normals = [torch.cat(layer) for layer in zip(*per_image_normals)]
    upcoming = iter(normals)
    noise = (lambda like: next(upcoming)) if normals else None
    return noise, [torch.cat(u) for u in zip(*per_image_uniforms)] if pixels else None

#: Memory budget of one automatic micro-batch on the CPU, in bytes.
CPU_BATCH_MEMORY = 2 * 2 ** 30
#: The same on CUDA, as a fraction of the device's total memory.
CUDA_BATCH_MEMORY_FRACTION = 0.25


def memory_budget(device: torch.device) -> float:
    """Bytes one micro-batch may use on `device`."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory * CUDA_BATCH_MEMORY_FRACTION
    return CPU_BATCH_MEMORY


def auto_batch_size(config: VDVAEConfig, device: torch.device) -> int:
    """Images per micro-batch that fit `memory_budget(device)`, by an estimate of the activations alive at once
    (checked against measured peak RSS on the cifar10 and imagenet64 presets: benchmarks/README.md)."""
    layer_resolutions = [b.resolution for b in config.decoder_blocks]
    per_resolution = [config.width_at(r) * r * r for r in sorted(set(layer_resolutions))]
    states = 2 * sum(per_resolution)                  # encoder activations and decoder states, one per resolution
    working = 8 * max(per_resolution)                 # one layer's intermediates at the top resolution
    latents = 6 * config.zdim * sum(r * r for r in layer_resolutions)  # z, prior, posterior, KL of every layer
    output = 40 * config.num_mixtures * config.image_size ** 2         # the mixture of logistics, intermediates
    bytes_per_image = 4 * (states + working + latents + output) * 1.25  # + allocator slack
    return max(1, int(memory_budget(device) // bytes_per_image))


def check_batch_size(batch_size: Optional[int], config: VDVAEConfig, device: torch.device) -> int:
    """`batch_size` checked, or the automatic one when None."""
    if batch_size is None:
        return auto_batch_size(config, device)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer (images per pass), got {batch_size!r}")
    return batch_size


def standard_normal(like: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    """Standard normals shaped like `like`, always made in contiguous NCHW whatever the memory format of
    `like`: the same generator state then gives the same numbers at the same positions as the original."""
    return torch.empty(like.shape, dtype=like.dtype, device=like.device).normal_(generator=generator)


@dataclass
class MicroBatch:
    """One pass: the images `part` of the batch, and the draws prepared for them (None: draw as you go)."""

    part: slice
    noise: Optional[Callable[[torch.Tensor], torch.Tensor]] = None  # the decoder's per-layer draw hook
    pixel_uniforms: Optional[List[torch.Tensor]] = None            # the output distribution's uniforms

    @property
    def size(self) -> int:
        return self.part.stop - self.part.start


def micro_batches(n: int, batch_size: int, *, config: VDVAEConfig, device: torch.device,
                  generator: Optional[torch.Generator], sampling_layers: Sequence[bool],
                  pixels: bool = False, seeds: Optional[Sequence[int]] = None) -> Iterator[MicroBatch]:
    """Split n images into passes of at most `batch_size`. When there are several and the whole batch's draws
    fit the budget, they are drawn now, in the original's order: a standard normal for each decoder layer i with
    `sampling_layers[i]` true (false: its latent is given, or nothing is random), then the pixel uniforms when
    `pixels`. With per-image `seeds`, each pass draws its images' numbers from their own generators, as it comes."""
    parts = [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    if seeds is not None:
        for p in parts:
            yield MicroBatch(p, *seeded_draws(seeds[p], config, device, sampling_layers, pixels))
        return
    if len(parts) == 1:
        yield MicroBatch(parts[0])
        return
    resolutions = [b.resolution for b in config.decoder_blocks]
    normal_shapes = [(n, config.zdim, r, r) for r, sampling in zip(resolutions, sampling_layers) if sampling]
    uniform_shapes = pixel_uniform_shapes(n, config.image_size, config.image_size, config.num_mixtures) if pixels else []
    floats = sum(math.prod(shape) for shape in normal_shapes + uniform_shapes)
    if not floats or 4 * floats > memory_budget(device):
        yield from (MicroBatch(p) for p in parts)
        return
    normals = [torch.empty(shape, device=device).normal_(generator=generator) for shape in normal_shapes]
    uniforms = [uniform(shape, device, generator) for shape in uniform_shapes]

    def noise_for(part: slice) -> Callable[[torch.Tensor], torch.Tensor]:
        upcoming = iter([z[part] for z in normals])
        return lambda like: next(upcoming)

    for p in parts:
        yield MicroBatch(p, noise_for(p) if normals else None, [u[p] for u in uniforms] if uniforms else None)
