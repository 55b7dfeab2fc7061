"""The random numbers a VDVAE draws, made the way the original implementation makes them.

- `standard_normal`: one per decoder layer that samples, shaped like that layer's latent (N, zdim, r, r);
- `uniform`: the two uniform tensors of the output distribution when pixels are sampled (dmol.py).

They live here, below both the network (which draws as it goes) and the batch scheduler (which draws ahead of
time, batching.py), so that the math does not depend on the scheduler.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["standard_normal", "uniform"]


def standard_normal(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normals shaped like `like`, always made in contiguous NCHW whatever the memory format of
    `like`: the same generator state then gives the same numbers at the same positions as the original."""
    return torch.empty(like.shape, dtype=like.dtype, device=like.device).normal_(generator=generator)


def uniform(shape: Sequence[int], device, generator: torch.Generator | None) -> torch.Tensor:
    """Uniforms in [1e-5, 1 - 1e-5], float32. `uniform_` on a float32 tensor: the same floats as the original
    (rand * a + b is not)."""
    return torch.empty(tuple(shape), dtype=torch.float32, device=device).uniform_(1e-5, 1.0 - 1e-5, generator=generator)
