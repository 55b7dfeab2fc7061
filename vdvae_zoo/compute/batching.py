"""Micro-batches: how many images one pass may hold, and the random numbers each pass uses.

A batch larger than the memory budget is split. The split must not change seeded results, so the random
numbers of the whole batch are drawn first, in the original implementation's order (one standard normal per
decoder layer that samples, top to bottom, each (N, zdim, r, r); then, when pixels are sampled, the output
distribution's uniforms), and each micro-batch takes its slice. Only when those draws alone would exceed the
budget (thousands of images) does each micro-batch draw its own, as consecutive calls would.

With per-image `seeds` instead (what the CLI, `evaluate` and every score use), image i draws its numbers
(same shapes and order, batch size 1) from its own generator seeded by seeds[i], and every pass has the same
shape: `batch_size` images (default `seeded_pass_size`), the last pass padded with copies of its last image
whose results are dropped. A result then depends on the image, its seed and the pass size only: not on how many
images came with it, on chunking, on where a run was resumed, or on how images are shared out between processes
(the arithmetic of a convolution can depend on the batch shape, so the shape is what is kept fixed).
`image_seed(seed, index)` makes such seeds.

The budget is fixed per device (`CPU_BATCH_MEMORY` bytes; `CUDA_BATCH_MEMORY_FRACTION` of the GPU's total
memory), not the free memory, so a seeded call draws the same numbers every time on the same machine.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..config import VDVAEConfig
from ..nn.draws import uniform
from ..nn.head import OutputHead
from ..nn.runtime import DTypeLike, Runtime
from .memory import inference_bytes_per_image

__all__ = [
    "CPU_BATCH_MEMORY",
    "CUDA_BATCH_MEMORY_FRACTION",
    "SEEDED_PASS_IMAGES",
    "memory_budget",
    "auto_batch_size",
    "seeded_pass_size",
    "MicroBatch",
    "micro_batches",
    "check_batch_size",
    "image_seed",
    "seeded_draws",
    "trim_rows",
    "draw_normals",
    "split_when_out_of_memory",
    "PassSizeReduced",
    "in_batches",
]


def image_seed(seed: int, index: int) -> int:
    """A 63-bit seed for image `index` of a run seeded with `seed` (numpy's SeedSequence: stable across platforms)."""
    a, b = np.random.SeedSequence([int(seed), int(index)]).generate_state(2, np.uint32)
    return (int(a) << 31 | int(b) >> 1) & (2**63 - 1)


def pixel_shapes(config: VDVAEConfig, n: int) -> list:
    """The shapes of the uniforms the output distribution draws for n images (OutputHead.uniform_shapes)."""
    return OutputHead(config).uniform_shapes(n)


def seeded_draws(
    seeds: Sequence[int], config: VDVAEConfig, device: torch.device, sampling_layers: Sequence[bool], pixels: bool
) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
    """The draws of a batch whose image i draws from a generator seeded by seeds[i]: a standard normal per
    sampling layer (top to bottom, each (N, zdim, r, r)), then the pixel uniforms when `pixels`."""
    per_image_normals, per_image_uniforms = [], []
    for seed in seeds:
        g = torch.Generator(device=device).manual_seed(int(seed))
        per_image_normals.append(
            [
                torch.empty((1, config.zdim, r, r), device=device).normal_(generator=g)
                for r, sampling in zip(config.layer_resolutions, sampling_layers, strict=False)
                if sampling
            ]
        )
        if pixels:
            per_image_uniforms.append([uniform(shape, device, g) for shape in pixel_shapes(config, 1)])
    normals = [torch.cat(layer) for layer in zip(*per_image_normals, strict=False)]
    return normals, [torch.cat(u) for u in zip(*per_image_uniforms, strict=False)] if pixels else None


#: Memory budget of one automatic micro-batch on the CPU, in bytes.
CPU_BATCH_MEMORY = 2 * 2**30
#: The same on CUDA, as a fraction of the device's total memory.
CUDA_BATCH_MEMORY_FRACTION = 0.25
#: Images per pass of a seeded call when no batch size is given, by device type (fewer when the memory budget
#: says so): every seeded pass has this shape, padded, so a larger number wastes more on a few images.
SEEDED_PASS_IMAGES = {"cpu": 8, "cuda": 64}


def memory_budget(device: torch.device) -> float:
    """Bytes one micro-batch may use on `device`."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory * CUDA_BATCH_MEMORY_FRACTION
    return CPU_BATCH_MEMORY


def auto_batch_size(config: VDVAEConfig, device: torch.device) -> int:
    """Images per micro-batch that fit `memory_budget(device)`, by `memory.inference_bytes_per_image`."""
    return max(1, int(memory_budget(device) // inference_bytes_per_image(config)))


def seeded_pass_size(config: VDVAEConfig, device: torch.device) -> int:
    """Images per pass of a seeded call without a batch size: `SEEDED_PASS_IMAGES`, within the memory budget."""
    return max(1, min(auto_batch_size(config, device), SEEDED_PASS_IMAGES.get(device.type, SEEDED_PASS_IMAGES["cpu"])))


def check_batch_size(batch_size: int | None, config: VDVAEConfig, device: torch.device, seeded: bool = False) -> int:
    """`batch_size` (images per pass) checked, or the default when None: `seeded_pass_size` for seeded calls,
    else the automatic one."""
    if batch_size is None:
        return seeded_pass_size(config, device) if seeded else auto_batch_size(config, device)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"batch_size must be a positive integer (images per pass), got {batch_size!r}")
    return batch_size


@dataclass
class MicroBatch:
    """One pass: the images `part` of the batch, `pad` copies of its last image after them (seeded passes keep one
    shape), and the draws prepared for them (None: draw as you go). Every tensor of the pass has `size` rows."""

    part: slice
    pad: int = 0
    normals: list[torch.Tensor] | None = None  # one standard normal per sampling layer, top to bottom
    pixel_uniforms: list[torch.Tensor] | None = None  # the output distribution's uniforms
    seeds: list[int] | None = None  # per-image seeds, padding included
    per_pass: int = 0  # the pass size in effect (images per pass at most)

    @property
    def count(self) -> int:
        """Images of the batch in this pass (without the padding)."""
        return self.part.stop - self.part.start

    @property
    def size(self) -> int:
        """Rows of the pass: `count` + `pad`."""
        return self.count + self.pad

    def take(self, batch: torch.Tensor) -> torch.Tensor:
        """This pass's rows of `batch` (N, ...): its part, then `pad` copies of the part's last row."""
        rows = batch[self.part]
        return torch.cat([rows, rows[-1:].expand(self.pad, *rows.shape[1:])]) if self.pad else rows

    def noise(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The decoder's draw hook over the prepared normals (a fresh one per call, so that several passes of the
        decoder over these images use the same numbers), or None to draw as it goes."""
        if self.normals is None:
            return None
        upcoming = iter(self.normals)
        return lambda like: next(upcoming)


def trim_rows(value: Any, n: int) -> Any:
    """The first `n` rows of every tensor in `value` (a tensor, or lists / tuples / dicts / dataclasses of them)."""
    if isinstance(value, torch.Tensor):
        return value[:n]
    if isinstance(value, dict):
        return {k: trim_rows(v, n) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(
            value, **{f.name: trim_rows(getattr(value, f.name), n) for f in dataclasses.fields(value)}
        )
    if isinstance(value, (list, tuple)):
        return type(value)(trim_rows(v, n) for v in value)
    return value


def micro_batches(
    n: int,
    batch_size: int,
    *,
    config: VDVAEConfig,
    device: torch.device,
    generator: torch.Generator | None,
    sampling_layers: Sequence[bool],
    pixels: bool = False,
    seeds: Sequence[int] | None = None,
) -> Iterator[MicroBatch]:
    """Split n images into passes of at most `batch_size`. When there are several and the whole batch's draws
    fit the budget, they are drawn now, in the original's order: a standard normal for each decoder layer i with
    `sampling_layers[i]` true (false: its latent is given, or nothing is random), then the pixel uniforms when
    `pixels`. With per-image `seeds`, every pass has exactly `batch_size` rows (the last one padded) and draws
    its images' numbers from their own generators, as it comes."""
    parts = [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    if seeds is not None:
        for p in parts:
            pad = batch_size - (p.stop - p.start)
            padded = list(seeds[p]) + [seeds[p][-1]] * pad
            normals, uniforms = seeded_draws(padded, config, device, sampling_layers, pixels)
            yield MicroBatch(p, pad, normals or None, uniforms, padded, batch_size)
        return
    if len(parts) == 1:
        yield MicroBatch(parts[0], per_pass=batch_size)
        return
    normal_shapes = [
        (n, config.zdim, r, r)
        for r, sampling in zip(config.layer_resolutions, sampling_layers, strict=False)
        if sampling
    ]
    uniform_shapes = pixel_shapes(config, n) if pixels else []
    floats = sum(math.prod(shape) for shape in normal_shapes + uniform_shapes)
    if not floats or 4 * floats > memory_budget(device):
        yield from (MicroBatch(p, per_pass=batch_size) for p in parts)
        return
    normals = [torch.empty(shape, device=device).normal_(generator=generator) for shape in normal_shapes]
    uniforms = [uniform(shape, device, generator) for shape in uniform_shapes]
    for p in parts:
        yield MicroBatch(p, 0, [z[p] for z in normals] or None, [u[p] for u in uniforms] or None, per_pass=batch_size)


class PassSizeReduced(UserWarning):
    """A pass ran out of memory and was split: the warning names the pass size the call settled on."""


def _random_state(generator: torch.Generator | None, device: torch.device) -> tuple:
    """What a retried call restores so that it draws the same numbers: the generator's state, or the global ones."""
    if generator is not None:
        return (generator.get_state(),)
    return (torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None)


def _restore_random_state(state: tuple, generator: torch.Generator | None, device: torch.device) -> None:
    if generator is not None:
        generator.set_state(state[0])
        return
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def split_when_out_of_memory(
    run: Callable[[int], list], per_pass: int, device: torch.device, generator: torch.Generator | None
) -> tuple[list, int]:
    """`run(per_pass)`, and when a pass runs out of memory (torch.OutOfMemoryError, or MemoryError on the CPU) again
    with half the pass size, down to one image, from the random state it started with (so the draws are the same).
    Returns the results and the pass size that ran; one image that does not fit is a MemoryError in one sentence."""
    state = _random_state(generator, device)
    while True:
        try:
            return run(per_pass), per_pass
        except (torch.OutOfMemoryError, MemoryError):
            if per_pass == 1:
                raise MemoryError(
                    f"the {device} ran out of memory with even one image per pass: free memory "
                    "(other processes), use --dtype bfloat16, or a device with more memory"
                ) from None
            per_pass //= 2
            if device.type == "cuda":
                torch.cuda.empty_cache()
            _restore_random_state(state, generator, device)


def draw_normals(
    config: VDVAEConfig, n: int, device: torch.device, generator: torch.Generator | None
) -> list[torch.Tensor]:
    """A standard normal for every decoder layer, top to bottom, (n, zdim, r, r) each: the numbers a decoder pass
    drawing as it goes would take from `generator`, drawn ahead so that several passes can share them."""
    return [
        torch.empty((n, config.zdim, r, r), device=device).normal_(generator=generator)
        for r in config.layer_resolutions
    ]


def in_batches(
    n: int,
    step: Callable[[MicroBatch], Any],
    *,
    config: VDVAEConfig,
    device: torch.device,
    runtime: Runtime,
    weights_dtype: torch.dtype,
    batch_size: int | None,
    dtype: DTypeLike,
    generator: torch.Generator | None,
    sampling_layers: Sequence[bool],
    pixels: bool = False,
    seeds: Sequence[int] | None = None,
) -> list:
    """The one batch loop of a model's methods: `step` on each micro-batch (with its prepared draws), under the
    compute dtype; the rows of a seeded pass's padding are dropped from what `step` returns.

    A pass that runs out of memory (torch.OutOfMemoryError, or MemoryError on the CPU) is not fatal: the pass
    size is halved and the call starts again, down to one image, with the random state it started with, so the
    draws are the same (seeded calls: each image's own; otherwise the whole batch's, drawn in the original's
    order). The size it settled on is said in one warning and kept for the model's later calls
    (`runtime.pass_limit`). Results equal an unsplit run's up to float rounding."""
    requested = check_batch_size(batch_size, config, device, seeded=seeds is not None)
    if seeds is not None and len(seeds) != n:
        raise ValueError(f"seeds must have one seed per image ({n}), got {len(seeds)}")

    def run(per_pass: int) -> list:
        parts = micro_batches(
            n,
            per_pass,
            config=config,
            device=device,
            generator=generator,
            sampling_layers=sampling_layers,
            pixels=pixels,
            seeds=seeds,
        )
        with runtime.autocast(device, weights_dtype, dtype):
            return [trim_rows(step(mb), mb.count) if mb.pad else step(mb) for mb in parts]

    results, used = split_when_out_of_memory(run, min(requested, runtime.pass_limit or requested), device, generator)
    if used < requested and used != runtime.pass_limit:
        runtime.pass_limit = used
        warnings.warn(
            f"the {device} ran out of memory with {requested} images per pass; continuing with "
            f"{used} (pass --batch-size {used} to start there)",
            PassSizeReduced,
            stacklevel=2,
        )
    return results
