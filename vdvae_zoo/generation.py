"""Generation: the methods of VDVAE that run the decoder to make images (sample, decode, decode_with,
reconstruct, interpolate), as a mixin, as transformers' GenerationMixin is. model.py builds the model and holds
its settings, training terms, likelihood and encoding; what these methods need of it is `ModelForGeneration`.

Random numbers: one standard normal per decoder layer, top to bottom, then the pixel uniforms of the output head,
from the global generator or `generator=` (or each image's own with `seeds=`), in the original's order.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from PIL import Image

from .compute.batching import MicroBatch
from .config import VDVAEConfig
from .nn.draws import standard_normal
from .nn.head import OutputHead
from .nn.inputs import ImageBatch, Temperature, check_count, check_image_pair, check_images, check_keep, check_latents
from .nn.network import Encoder, LayerOutput
from .nn.runtime import DTypeLike, Runtime, inference_method

__all__ = ["GenerationMixin", "mix_latents"]


class ModelForGeneration(Protocol):
    """What the generation methods use of the model they are mixed into (VDVAE)."""

    config: VDVAEConfig
    head: OutputHead
    encoder: Encoder | None
    runtime: Runtime
    training: bool

    @property
    def device(self) -> torch.device: ...
    @property
    def dtype(self) -> torch.dtype: ...
    @property
    def num_layers(self) -> int: ...
    def eval(self) -> Any: ...
    def train(self, mode: bool = True) -> Any: ...
    def layer_temperatures(self, temperature: Temperature) -> list[float]: ...
    def preprocess(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...
    def _require_encoder(self) -> Encoder: ...
    def _decoder(self, n: int, **kwargs: Any) -> tuple[torch.Tensor, list[Any]]: ...
    def _in_batches(
        self,
        n: int,
        batch_size: int | None,
        dtype: DTypeLike,
        generator: torch.Generator | None,
        step: Callable[[MicroBatch], Any],
        sampling_layers: Sequence[bool],
        pixels: bool = False,
        seeds: Sequence[int] | None = None,
    ) -> list: ...
    def encode(
        self,
        images: ImageBatch,
        *,
        mean: bool = False,
        stats: bool = False,
        generator: torch.Generator | None = None,
        batch_size: int | None = None,
        dtype: DTypeLike = None,
    ) -> Any: ...
    def decode(
        self,
        latents: Sequence[torch.Tensor | None],
        temperature: Temperature = 1.0,
        *,
        n: int | None = None,
        generator: torch.Generator | None = None,
        batch_size: int | None = None,
        dtype: DTypeLike = None,
    ) -> torch.Tensor: ...
    def _decode(
        self,
        n: int,
        latents: list[torch.Tensor | None],
        temperatures: list[float],
        generator: torch.Generator | None,
        batch_size: int | None,
        dtype: DTypeLike,
        seeds: Sequence[int] | None = None,
        exact: bool = False,
    ) -> torch.Tensor: ...


def mix_latents(a: torch.Tensor, b: torch.Tensor, ts: torch.Tensor, mode: str) -> torch.Tensor:
    """Points on the path from latent a to latent b (same shape) at fractions ts: (len(ts), *a.shape)."""
    shape = (-1,) + (1,) * a.ndim
    t = ts.to(a.dtype).view(shape)
    if mode == "slerp":
        cos = torch.dot(a.flatten(), b.flatten()) / (a.norm() * b.norm()).clamp_min(1e-12)
        omega = torch.arccos(cos.clamp(-1.0, 1.0))
        if omega > 1e-4:
            return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)
    return (1 - t) * a + t * b


class GenerationMixin:
    """sample / decode / decode_with / reconstruct / interpolate for VDVAE (see `ModelForGeneration`)."""

    @inference_method
    def sample(
        self: ModelForGeneration,
        n: int,
        temperature: Temperature = 1.0,
        *,
        generator: torch.Generator | None = None,
        batch_size: int | None = None,
        dtype: DTypeLike = None,
        seeds: Sequence[int] | None = None,
        exact: bool = False,
    ) -> torch.Tensor:
        """Draw `n` images from the prior at `temperature` (see `layer_temperatures`); uint8 (n, H, W, C) on the CPU.
        Only the decoder's prior path runs. `batch_size`: images per pass (None: `auto_batch_size()`). `seeds`: one
        per image; image i is then the same whatever else is drawn with it (dataset-scale sample sets). `exact`:
        pixels drawn from exactly the distribution the likelihood scores (nn/dmol.dmol_sample); the default is the
        original's draw, which golden parity needs."""
        check_count(n, "n", what="number of images")
        temperatures = self.layer_temperatures(temperature)
        return self._decode(n, [], temperatures, generator, batch_size, dtype, seeds, exact=exact)

    @inference_method
    def decode(
        self: ModelForGeneration,
        latents: Sequence[torch.Tensor | None],
        temperature: Temperature = 1.0,
        *,
        n: int | None = None,
        generator: torch.Generator | None = None,
        batch_size: int | None = None,
        dtype: DTypeLike = None,
    ) -> torch.Tensor:
        """Images from given latents: `latents[i]` fixes decoder layer i (None or a missing tail: sampled from the
        prior at `temperature`). Usually `model.encode(x)[:k]`. Returns uint8 (N, H, W, 3) on the CPU."""
        latents, n = check_latents(latents, n, self.config)
        return self._decode(n, latents, self.layer_temperatures(temperature), generator, batch_size, dtype)

    def _decode(
        self: ModelForGeneration,
        n: int,
        latents: list[torch.Tensor | None],
        temperatures: list[float],
        generator: torch.Generator | None,
        batch_size: int | None,
        dtype: DTypeLike,
        seeds: Sequence[int] | None = None,
        exact: bool = False,
    ) -> torch.Tensor:
        def step(mb: MicroBatch) -> torch.Tensor:
            chunk_latents = [None if z is None else mb.take(z).to(self.device, torch.float32) for z in latents]
            params, _ = self._decoder(
                mb.size,
                temperatures=temperatures,
                latents=chunk_latents,
                generator=generator,
                noise=mb.noise(),
                summarize=lambda o: None,
            )
            return self.head.sample(params, generator, uniforms=mb.pixel_uniforms, exact=exact).cpu()

        sampling = [i >= len(latents) or latents[i] is None for i in range(self.num_layers)]
        return torch.cat(
            self._in_batches(n, batch_size, dtype, generator, step, sampling_layers=sampling, pixels=True, seeds=seeds)
        )

    @inference_method
    def decode_with(
        self: ModelForGeneration,
        choose: Callable[[int, LayerOutput], torch.Tensor],
        images: ImageBatch | None = None,
        n: int = 1,
    ) -> torch.Tensor:
        """One pass of the decoder in which `choose(i, layer)` picks layer i's latent (N, zdim, r, r) after seeing
        its prior (`layer.p_mean`, `layer.p_logstd`) and, given uint8 NHWC `images`, its posterior (`q_mean`,
        `q_logstd`). Returns the output distribution's parameters, float32 (N, H, W, 10M). Bits-back coding
        (compress.py) is built on it; no random number is drawn."""
        activations = None
        if images is not None:
            encoder = self._require_encoder()
            x_in, _ = self.preprocess(check_images(images, self.config))
            activations, n = encoder(x_in), x_in.shape[0]
        latents = [functools.partial(choose, i) for i in range(self.num_layers)]
        return self._decoder(n, activations=activations, latents=latents, summarize=lambda o: None)[0]

    @inference_method
    def reconstruct(
        self: ModelForGeneration,
        images: ImageBatch,
        keep: int | list[int | None] | tuple[int | None, ...] | None = None,
        temperature: Temperature = 1.0,
        *,
        generator: torch.Generator | None = None,
        dtype: DTypeLike = None,
    ) -> torch.Tensor:
        """Encode uint8 NHWC images, keep the first `keep` layers' latents (all when None) and sample the rest
        from the prior at `temperature`. Returns uint8 (N, H, W, 3) on the CPU.

        With a list of keeps (the paper's Figure 4: `keep=[1, 4, 16, None]`) the images are encoded once and
        decoded once per entry: uint8 (N, len(keep), H, W, 3)."""
        several = isinstance(keep, (list, tuple))
        keeps = [check_keep(k, self.num_layers) for k in (list(keep) if isinstance(keep, (list, tuple)) else [keep])]
        images = check_images(images, self.config)
        latents = self.encode(images, generator=generator, dtype=dtype)
        out = [
            self.decode(latents[:k], temperature, n=images.shape[0], generator=generator, dtype=dtype) for k in keeps
        ]
        return torch.stack(out, dim=1) if several else out[0]

    @inference_method
    def interpolate(
        self: ModelForGeneration,
        a: ImageBatch,
        b: ImageBatch,
        steps: int = 8,
        *,
        keep: int | None = None,
        temperature: Temperature = 1.0,
        mode: str = "linear",
        generator: torch.Generator | None = None,
        dtype: DTypeLike = None,
    ) -> torch.Tensor:
        """`steps` images along the latent path from image a to image b (uint8 (H, W, 3), or batches (N, H, W, 3)).
        Both are encoded to posterior means; the first `keep` layers (all when None) are interpolated ('linear' or
        'slerp'), the rest drawn from the prior at `temperature` with the same noise at every step. Returns uint8
        (steps, H, W, 3), or (N, steps, H, W, 3) for batches, on the CPU; step 0 is a."""
        a, b, single = check_image_pair(a, b, self.config)
        check_count(steps, "steps", minimum=2, what="images on the path, ends included")
        if mode not in ("linear", "slerp"):
            raise ValueError(f"mode must be 'linear' or 'slerp', got {mode!r}")
        keep = check_keep(keep, self.num_layers)
        temperatures = self.layer_temperatures(temperature)
        za = self.encode(a, mean=True, dtype=dtype)[:keep]
        zb = self.encode(b, mean=True, dtype=dtype)[:keep]
        ts = torch.linspace(0.0, 1.0, steps)

        def same_noise_each_step(like: torch.Tensor) -> torch.Tensor:
            return standard_normal(like[:1], generator).expand_as(like)

        paths = []
        with self.runtime.autocast(self.device, self.dtype, dtype):
            for i in range(a.shape[0]):
                latents = [
                    mix_latents(za_l[i], zb_l[i], ts, mode).to(self.device) for za_l, zb_l in zip(za, zb, strict=False)
                ]
                params, _ = self._decoder(
                    steps,
                    temperatures=temperatures,
                    latents=latents,
                    noise=same_noise_each_step,
                    summarize=lambda o: None,
                )
                paths.append(self.head.sample(params, generator, same_noise=True).cpu())
        out = torch.stack(paths)
        return out[0] if single else out


def sample_grid(
    model: Any,
    num: int,
    temperature: Temperature,
    seed: int | None,
    *,
    batch_size: int | None = None,
    exact: bool = False,
) -> Image.Image:
    """What `vdvae-zoo sample -n NUM -t T --seed SEED -o grid.png` writes: `num` samples drawn after
    torch.manual_seed(seed) (no reseeding for None), tiled by data.images.make_grid at a viewable zoom."""
    from .data.images import make_grid

    model.layer_temperatures(temperature)  # checked before the work
    if seed is not None:
        torch.manual_seed(seed)
    return make_grid(model.sample(num, temperature=temperature, batch_size=batch_size, exact=exact).numpy(), zoom=None)
