"""The Very Deep VAE model: its settings, training terms, likelihood in bits per dim and encoding, on top of the
network of nn/network.py; sampling, decoding, reconstruction and interpolation come from generation.py's
GenerationMixin, and `vdvae_zoo.load` (factory.py) makes one from a name, a folder, a file or a Hub id.

Shapes and units used throughout:
- images in and out: uint8 pixels, NHWC, (N, H, W, 3);
- latents z of a layer at resolution r: (N, zdim, r, r);
- distortion, rate, neg_elbo: nats per dim (divided by H * W * 3); bpd: bits per dim; KL per layer: nats.

Random numbers are drawn from the global torch generator (or `generator=`) in the order of the
original implementation, so `torch.manual_seed(s)` before a call reproduces its outputs on the CPU:
one standard normal per decoder layer, top to bottom, shaped like that layer's latent; then, when
sampling pixels, two uniform tensors in the output distribution (see dmol.py).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from .compute.batching import MicroBatch, PassSizeReduced, auto_batch_size, draw_normals, in_batches
from .config import VDVAEConfig
from .generation import GenerationMixin
from .latents import LatentSlot, latent_layout
from .nn import network
from .nn.head import OutputHead
from .nn.inputs import (
    ImageBatch,
    Temperature,
    check_count,
    check_images,
    check_keep,
    layer_temperatures,
    preprocess,
)
from .nn.network import Block, Decoder, Encoder, LayerOutput
from .nn.runtime import DTypeLike, Runtime, compute_dtype, inference_method
from .scoring.bounds import LayerLatents, LikelihoodResult, importance_weighted, joined_result, log_prior_over_posterior
from .weights import registry
from .weights.pretrained import PretrainedMixin

__all__ = [
    "VDVAE",
    "LikelihoodResult",
    "LayerLatents",
    "Temperature",
    "EncoderMismatchError",
    "PassSizeReduced",
]


# ----------------------------------------------------------------------------------------------------------------
# The model and its public API
# ----------------------------------------------------------------------------------------------------------------


class EncoderMismatchError(RuntimeError):
    """The model was loaded without its encoder: only the decoder (sample, decode) can be used."""


NO_ENCODER = (
    "this model was loaded without its encoder (the file's encoder tensors do not match its config), so "
    "likelihood, encode and reconstruct are unavailable; sample() and decode() work. Load again with a "
    "config whose enc_blocks matches the file (`vdvae-zoo inspect FILE` shows the file's structure)."
)


@registry.register
class VDVAE(GenerationMixin, PretrainedMixin, nn.Module):
    """A Very Deep VAE. Build one with random weights from a config, or get a trained one with
    `vdvae_zoo.load(...)` (= `VDVAE.from_pretrained`).

    >>> model = VDVAE(VDVAEConfig.from_preset("cifar10"))
    >>> images = model.sample(4, temperature=0.8)   # uint8 (4, 32, 32, 3)
    >>> model.likelihood(images).bpd                 # bits per dim, (4,)
    """

    # The loaders' hooks (pretrained.py): what is VDVAE's own about its files.
    model_type = VDVAEConfig.model_type
    optional_part, optional_part_off = network.ENCODER_PREFIX, {"with_encoder": False}
    optional_part_note = (
        "The decoder was loaded: sample() and decode() work; likelihood(), encode() and "
        "reconstruct() raise until the model is loaded with the encoder's real enc_blocks (see "
        "`vdvae-zoo inspect FILE`)."
    )
    signature = staticmethod(network.state_signature)
    config_signature = staticmethod(network.config_signature)

    @staticmethod
    def card_lines(config: VDVAEConfig) -> list[str]:
        return [
            "A Very Deep VAE (Child, *Very Deep VAEs Generalize Autoregressive Models and Can Outperform Them "
            "on Images*, ICLR 2021), packaged for [vdvae-zoo](https://github.com/vdvae-zoo/vdvae-zoo): "
            f"{config.image_size}x{config.image_size} images, {config.num_layers} stochastic layers."
        ]

    def __init__(self, config: VDVAEConfig | dict[str, Any], with_encoder: bool = True):
        super().__init__()
        self.config = VDVAEConfig.from_dict(config) if isinstance(config, dict) else config
        self.encoder: Encoder | None = Encoder(self.config) if with_encoder else None
        self.decoder = Decoder(self.config)
        self.head = OutputHead(self.config)  # p(x | z) from the decoder's output (nn/head.py)
        self.runtime = Runtime()

    @property
    def num_layers(self) -> int:
        """Number of stochastic (decoder) layers, L."""
        return len(self.decoder.dec_blocks)

    @property
    def layer_resolutions(self) -> list[int]:
        """Resolution of each decoder layer, top to bottom."""
        return self.config.layer_resolutions

    @property
    def device(self) -> torch.device:
        return self.decoder.gain.device

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the weights (float32 unless cast); the compute precision is `compute_dtype`."""
        return self.decoder.gain.dtype

    @property
    def compute_dtype(self) -> torch.dtype:
        return self.runtime.dtype

    @property
    def compiled(self) -> bool:
        """True when optimize(compile=True) is in effect and compilation has not fallen back to eager."""
        return self.runtime.compiled

    def optimize(
        self, *, dtype: DTypeLike = None, channels_last: bool | None = None, compile: bool | None = None
    ) -> VDVAE:
        """Choose how inference runs; returns self (None leaves a setting). `dtype`: precision of the convolutions,
        'float32' (exact) or 'bfloat16'/'float16' (autocast; the latent distributions and the likelihood stay
        float32); `channels_last`: NHWC convolutions; `compile`: torch.compile each block, falling back to eager
        with one warning. See runtime.py and README, "Performance"."""
        chosen = compute_dtype(dtype)
        if chosen is not None:
            self.runtime.dtype = chosen
        if channels_last is not None:
            self.runtime.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if compile is not None:
            self.runtime.set_compile((m for m in self.modules() if isinstance(m, Block)), compile)
        return self

    def set_grad_checkpointing(self, enable: bool = True) -> VDVAE:
        """Gradient checkpointing for training (timm's name): the encoder keeps only each block's input and the
        decoder each stochastic layer's input state and outputs; the rest is recomputed in the backward pass
        (non-reentrant torch.utils.checkpoint). Same loss, same gradients, same random draws; much less memory
        for a recomputed forward pass (measured on the CPU: 0.91-1.03x the step time; benchmarks/README.md,
        "Training memory"). Returns self."""
        for part in (self.encoder, self.decoder):
            if part is not None:
                part.grad_checkpoint = bool(enable)
        return self

    @property
    def grad_checkpointing(self) -> bool:
        return self.decoder.grad_checkpoint

    def auto_batch_size(self) -> int:
        """Images per micro-batch when a method's `batch_size` is None (see batching.py)."""
        return auto_batch_size(self.config, self.device)

    def preprocess(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 NHWC -> (encoder input, float NCHW; likelihood target, float NHWC in [-1, 1]) (docs/config.md:
        shift, scale, low_bit)."""
        return preprocess(images, self.config, self.device, self.runtime.memory_format, self.dtype)

    def layer_temperatures(self, temperature: Temperature) -> list[float]:
        """One temperature per decoder layer from a number, a list of L, or a {resolution: t} schedule."""
        return layer_temperatures(temperature, self.layer_resolutions)

    def _require_encoder(self) -> Encoder:
        """The encoder, or EncoderMismatchError when the model was loaded without it."""
        if self.encoder is None:
            raise EncoderMismatchError(NO_ENCODER)
        return self.encoder

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
    ) -> list:
        """The one batch loop (`batching.in_batches`) with this model's config, device and runtime."""
        return in_batches(
            n,
            step,
            config=self.config,
            device=self.device,
            runtime=self.runtime,
            weights_dtype=self.dtype,
            batch_size=batch_size,
            dtype=dtype,
            generator=generator,
            sampling_layers=sampling_layers,
            pixels=pixels,
            seeds=seeds,
        )

    def _decoder(self, n: int, **kwargs: Any) -> tuple[torch.Tensor, list[Any]]:
        """The decoder with this model's runtime settings (see `Decoder.forward` for the arguments)."""
        return self.decoder(n, memory_format=self.runtime.memory_format, **kwargs)

    # ------------------------------------------------------------------------------------------- training
    def forward(
        self,
        images: ImageBatch,
        generator: torch.Generator | None = None,
        noise: Callable[[torch.Tensor], torch.Tensor] | None = None,
        free_nats: float | None = None,
    ) -> dict[str, torch.Tensor]:
        """The loss terms with autograd, per image (N,): `neg_elbo`, `distortion`, `rate` in nats per dim, and `kl`
        (N, L) in nats. The training loss is `neg_elbo.mean()`. `noise(like)` may supply the posterior draws
        (the trainer uses it to make them independent of how a batch is split across processes).

        `free_nats` = lambda adds `kl_free` (N, L): free bits per layer, max(KL_layer, lambda) for each image
        (Kingma et al. 2016, "free bits", with the layers as the groups; they take the max of the minibatch's mean
        KL, we take it per image so that a result does not depend on the batch). A layer whose KL is below lambda
        nats gets no gradient from the KL term at all. (hvae-oodd's FreeNats clamps each element instead, at
        lambda / channels: another definition.)"""
        encoder = self._require_encoder()
        x_in, target = self.preprocess(check_images(images, self.config))
        return self._terms(encoder(x_in), target, x_in.shape[0], generator, noise, free_nats=free_nats)

    def _terms(
        self,
        activations: dict[int, torch.Tensor],
        target: torch.Tensor,
        n: int,
        generator: torch.Generator | None = None,
        noise: Callable | None = None,
        log_weight: bool = False,
        keep: int | None = None,
        prior_temperature: float = 0.0,
        free_nats: float | None = None,
    ) -> dict[str, torch.Tensor]:
        """Run the decoder on the posterior (layers from `keep` on: on their conditional prior at
        `prior_temperature`) and score `target`. With `log_weight`, also the importance weight
        log p(x, z) - log q(z | x) of the draw, in nats per image, float64 (N,)."""

        def summarize(o: LayerOutput):  # per image: the layer's KL (0 from the prior), log p(z) - log q(z | x), free
            kl = o.kl.sum(dim=(1, 2, 3)) if o.kl is not None else torch.zeros(n, device=target.device)
            free = None
            if free_nats is not None and o.kl is not None:
                free = torch.clamp(kl, min=free_nats)  # max(KL_layer, lambda): no gradient below the floor
            return kl, log_prior_over_posterior(o) if log_weight else None, free

        temperatures = None if keep is None else [prior_temperature] * self.num_layers
        params, per_layer = self._decoder(
            n,
            activations=activations,
            generator=generator,
            noise=noise,
            summarize=summarize,
            keep=keep,
            temperatures=temperatures,
        )
        distortion = self.head.nll(params, target)
        kl = torch.stack([layer_kl for layer_kl, _, _ in per_layer], dim=1)
        rate = kl.sum(dim=1) / self.config.dims_per_image
        terms = {"neg_elbo": distortion + rate, "distortion": distortion, "rate": rate, "kl": kl}
        if free_nats is not None:
            terms["kl_free"] = torch.stack([free for _, _, free in per_layer], dim=1)
        if log_weight:
            log_ratio = torch.stack([ratio for _, ratio, _ in per_layer]).sum(dim=0)
            terms["log_weight"] = log_ratio - distortion.double() * self.config.dims_per_image
        return terms

    # ------------------------------------------------------------------------------------------ inference
    @inference_method
    def likelihood(
        self,
        images: ImageBatch,
        *,
        n_samples: int = 1,
        generator: torch.Generator | None = None,
        batch_size: int | None = None,
        dtype: DTypeLike = None,
        seeds: Sequence[int] | None = None,
        keep: int | list[int | None] | tuple[int | None, ...] | None = None,
        prior_temperature: float = 0.0,
    ) -> LikelihoodResult | list[LikelihoodResult]:
        """Negative ELBO of uint8 NHWC images and its parts, a LikelihoodResult: `bpd` (bits per dim), `neg_elbo`,
        `distortion`, `rate` (nats per dim), `kl` (N, L, nats); with `n_samples` = K > 1 also `bpd_iw`, the
        importance-weighted bound -log (1/K) sum_k p(x, z_k) / q(z_k | x) (Burda et al.), in bits per dim.

        `keep` = n gives a looser bound instead: decoder layers 0..n-1 take z from the posterior, as
        `reconstruct(keep=n)` keeps them, and layers n..L-1 (the lowest, nearest the pixels) from their conditional
        prior at `prior_temperature` (0: the prior mean, as Havtorn et al. do for L^{>k}, k = L - n; 1: a prior
        sample); only the kept layers' KL counts. keep=L (or None) is the ELBO. A list of keeps returns a list of
        results: the images are encoded once and every bound uses the same draws for the layers it keeps.

        `batch_size`: images x draws per pass (None: automatic; splitting changes no random number, batching.py).
        `seeds`: one per image, each image then draws from its own generator (`batching.image_seed`), in passes
        of one fixed shape: the result depends only on the image, its seed and `batch_size`. Without `seeds`, the
        importance-weighted bound (`n_samples` > 1) takes one seed per image from the generator first, so that how
        the draws are split into passes (`batch_size`, or a pass that ran out of memory) changes none of them."""
        encoder = self._require_encoder()
        images = check_images(images, self.config)
        check_count(n_samples, "n_samples", what="posterior draws per image")
        iw_seeds = None  # the importance samples' seeds when none are given: one per image, from the generator first
        if n_samples > 1 and seeds is None:
            iw_seeds = torch.randint(0, 2**62, (images.shape[0],), generator=generator).tolist()
        several = isinstance(keep, (list, tuple))
        keeps = [check_keep(k, self.num_layers) for k in (list(keep) if isinstance(keep, (list, tuple)) else [keep])]
        if not keeps:
            raise ValueError("keep is an empty list; give None, a number of layers, or a list of them")
        if n_samples > 1 and any(k != self.num_layers for k in keeps):
            raise ValueError(
                "n_samples > 1 (the importance-weighted bound) is computed for the ELBO only: use keep=None"
            )
        if (
            isinstance(prior_temperature, bool)
            or not isinstance(prior_temperature, (int, float))
            or not 0 <= prior_temperature < math.inf
        ):
            raise ValueError(f"prior_temperature must be a number >= 0, got {prior_temperature!r}")
        bounds = [None if k == self.num_layers else k for k in keeps]

        def step(mb: MicroBatch) -> list[dict[str, torch.Tensor]]:
            x_in, target = self.preprocess(mb.take(images))
            activations = encoder(x_in)
            if n_samples > 1:
                return [
                    importance_weighted(
                        self,
                        activations,
                        target,
                        n_samples,
                        max(1, mb.per_pass // mb.size),
                        generator,
                        mb.seeds if iw_seeds is None else iw_seeds[mb.part],
                    )
                ]
            if mb.normals is None and len(bounds) > 1:  # several passes share one draw per layer
                mb = dataclasses.replace(mb, normals=draw_normals(self.config, mb.size, self.device, generator))
            return [
                self._terms(
                    activations,
                    target,
                    mb.size,
                    generator,
                    mb.noise(),
                    keep=k,
                    prior_temperature=float(prior_temperature),
                )
                for k in bounds
            ]

        parts = self._in_batches(
            images.shape[0],
            batch_size,
            dtype,
            generator,
            step,
            sampling_layers=[n_samples == 1] * self.num_layers,
            seeds=seeds,
        )
        results = [joined_result([p[j] for p in parts], keep=b) for j, b in enumerate(bounds)]
        return results if several else results[0]

    @inference_method
    def encode(
        self,
        images: ImageBatch,
        *,
        mean: bool = False,
        stats: bool = False,
        generator: torch.Generator | None = None,
        batch_size: int | None = None,
        dtype: DTypeLike = None,
        seeds: Sequence[int] | None = None,
    ) -> list[torch.Tensor] | list[LayerLatents]:
        """Latents of every decoder layer for uint8 NHWC images: a list of L CPU float tensors, layer i of shape
        (N, zdim, r_i, r_i), top (lowest resolution) first. Posterior samples, or with `mean=True` the posterior
        means (each layer's mean given the means above it; no random numbers are drawn). With `stats=True`, a list
        of LayerLatents instead: each layer's sample `z` (the mean when `mean`), posterior `mean` and `std`.
        `seeds`: one per image, as in `likelihood`. `vdvae_zoo.flatten_latents` makes (N, D) rows of them."""
        encoder = self._require_encoder()
        images = check_images(images, self.config)

        def keep(o: LayerOutput):
            if not stats:
                return o.z.float().cpu()
            assert o.q_mean is not None and o.q_logstd is not None  # encode runs with the encoder's activations
            return LayerLatents(o.z.float().cpu(), o.q_mean.float().cpu(), torch.exp(o.q_logstd.float()).cpu())

        def step(mb: MicroBatch) -> list:
            x_in, _ = self.preprocess(mb.take(images))
            noise = (lambda like: torch.zeros_like(like)) if mean else mb.noise()
            return self._decoder(mb.size, activations=encoder(x_in), generator=generator, noise=noise, summarize=keep)[
                1
            ]

        pieces = self._in_batches(
            images.shape[0],
            batch_size,
            dtype,
            generator,
            step,
            sampling_layers=[not mean] * self.num_layers,
            seeds=seeds,
        )
        if stats:
            return [
                LayerLatents(*(torch.cat([getattr(o, f) for o in layer]) for f in ("z", "mean", "std")))
                for layer in zip(*pieces, strict=False)
            ]
        return [torch.cat(layer) for layer in zip(*pieces, strict=False)]

    @property
    def latent_layout(self) -> list[LatentSlot]:
        """Where each decoder layer's latent sits in a flat vector of `flatten_latents`: index, resolution, shape
        (zdim, r, r), offset and size, top (lowest resolution) first."""
        return latent_layout(self.config)

    def extra_repr(self) -> str:
        c = self.config
        encoder = len(self.encoder.enc_blocks) if self.encoder is not None else "none (decoder only)"
        return (
            f"image_size={c.image_size}, width={c.width}, zdim={c.zdim}, layers={self.num_layers}, "
            f"encoder_blocks={encoder}"
        )
