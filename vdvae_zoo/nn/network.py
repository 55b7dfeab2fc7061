"""The network of a Very Deep VAE (Child, 2021), readable top to bottom like the paper: the bottleneck block, the
bottom-up encoder, and the top-down decoder of stochastic layers with their prior, posterior and KL.

Parameter names and shapes match the authors' released checkpoints:
``encoder.in_conv``, ``encoder.enc_blocks.{i}.c{1..4}``, ``decoder.dec_blocks.{i}.{enc,prior,resnet}.c{1..4}``,
``decoder.dec_blocks.{i}.z_proj``, ``decoder.bias_xs.{j}``, ``decoder.gain``, ``decoder.bias``,
``decoder.out_net.out_conv``. Activations are float NCHW; latents of a layer at resolution r: (N, zdim, r, r);
KL in nats. The public model around it (sampling, likelihood, ...) is model.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from ..blocks import kernel_size
from ..config import VDVAEConfig
from .draws import standard_normal
from .head import output_channels
from .runtime import conv_dtype

__all__ = [
    "Block",
    "Encoder",
    "DecoderLayer",
    "Decoder",
    "LayerOutput",
    "gaussian_kl",
    "ENCODER_PREFIX",
    "DECODER_PREFIX",
    "ENCODER_BLOCKS",
    "DECODER_LAYERS",
    "BIAS_XS",
    "GAIN",
    "OUT_CONV",
    "state_signature",
    "config_signature",
]


# ----------------------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------------------


def _conv(in_channels: int, out_channels: int, kernel_size: int, zero_weights: bool = False) -> nn.Conv2d:
    """A conv with zero bias (as all of VDVAE's), and optionally zero weights."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
    with torch.no_grad():
        if conv.bias is not None:
            conv.bias.zero_()
        if zero_weights:
            conv.weight.zero_()
    return conv


class Block(nn.Module):
    """Bottleneck block: four convs (1x1, k x k, k x k, 1x1; k = `kernel_size(resolution)`), each
    preceded by an exact GELU. Optionally residual, optionally average-pooled by `down_rate` at its end."""

    def __init__(
        self,
        in_width: int,
        middle_width: int,
        out_width: int,
        *,
        kernel: int,
        residual: bool,
        down_rate: int | None = None,
        zero_last: bool = False,
    ):
        super().__init__()
        self.c1 = _conv(in_width, middle_width, 1)
        self.c2 = _conv(middle_width, middle_width, kernel)
        self.c3 = _conv(middle_width, middle_width, kernel)
        self.c4 = _conv(middle_width, out_width, 1, zero_weights=zero_last)
        self.residual = residual
        self.down_rate = down_rate

    def forward(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """`inplace=True` adds the residual into x itself (see `_residual_add`); the caller must own x."""
        # Under autocast the residual stream x is float32; the branch starts in the compute dtype, so the first
        # GELU reads half the bytes (its output would be rounded for c1 anyway): benchmarks/README.md.
        branch = x.to(conv_dtype(x))
        h = self.c1(F.gelu(branch))
        h = self.c2(F.gelu(h))
        h = self.c3(F.gelu(h))
        h = self.c4(F.gelu(h))
        out = _residual_add(x, h, inplace) if self.residual else h
        if self.down_rate is not None:
            out = F.avg_pool2d(out, kernel_size=self.down_rate, stride=self.down_rate)
        return out


def _residual_add(x: torch.Tensor, update: torch.Tensor, inplace: bool) -> torch.Tensor:
    """x + update. Under reduced precision (a bf16 update to the float32 stream) and torch.inference_mode (as the
    public methods run) the sum is written into x when `inplace`; otherwise autograd may need the unmodified x.
    Same numbers either way; faster only for mixed dtypes (benchmarks/README.md, "in-place residual adds")."""
    if inplace and update.dtype != x.dtype and torch.is_inference_mode_enabled():
        return x.add_(update)
    return x + update


def gaussian_kl(q_mean, q_logstd, p_mean, p_logstd) -> torch.Tensor:
    """KL(q || p) of diagonal Gaussians, per element, in nats."""
    return -0.5 + p_logstd - q_logstd + 0.5 * (q_logstd.exp() ** 2 + (q_mean - p_mean) ** 2) / (p_logstd.exp() ** 2)


# ----------------------------------------------------------------------------------------------------------------
# Encoder (bottom-up)
# ----------------------------------------------------------------------------------------------------------------


def _checkpointing(module: nn.Module) -> bool:
    """Gradient checkpointing is on for `module` (`VDVAE.set_grad_checkpointing`) and autograd is recording."""
    return bool(getattr(module, "grad_checkpoint", False)) and torch.is_grad_enabled()


class Encoder(nn.Module):
    #: Gradient checkpointing (VDVAE.set_grad_checkpointing): each block's activations are recomputed in the backward
    #: pass instead of kept; only its input is stored (non-reentrant torch.utils.checkpoint).
    grad_checkpoint = False

    def __init__(self, config: VDVAEConfig):
        super().__init__()
        self.config = config
        self.in_conv = _conv(config.image_channels, config.width, 3)
        specs = config.encoder_blocks
        blocks = []
        for spec in specs:
            w = config.width_at(spec.resolution)
            blocks.append(
                Block(
                    w,
                    int(w * config.bottleneck_multiple),
                    w,
                    kernel=kernel_size(spec.resolution),
                    residual=True,
                    down_rate=spec.down_rate,
                )
            )
        with torch.no_grad():
            for block in blocks:  # residual scaling: the sum of N branches keeps its variance
                block.c4.weight.mul_(math.sqrt(1.0 / len(specs)))
        self.enc_blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """x: preprocessed float NCHW image. Returns {resolution: last activation at that resolution}."""
        x = self.in_conv(x)
        if torch.is_autocast_enabled(x.device.type):
            x = x.float()  # the residual stream stays float32 under autocast; only the convs run in bf16
        activations = {x.shape[2]: x}
        for block in self.enc_blocks:
            # x is this loop's own tensor, except that a down-sampling block's input stays in `activations`.
            if _checkpointing(self):
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x, inplace=block.down_rate is None)
            res = x.shape[2]
            width = self.config.width_at(res)
            if x.shape[1] < width:  # widths grow as resolution falls: append zero channels
                x = F.pad(x, (0, 0, 0, 0, 0, width - x.shape[1]))
            activations[res] = x
        return activations


# ----------------------------------------------------------------------------------------------------------------
# Decoder (top-down): one stochastic layer per block
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class LayerOutput:
    """What one decoder layer computed: its latent and, with an image, the posterior and the KL (nats)."""

    z: torch.Tensor
    p_mean: torch.Tensor
    p_logstd: torch.Tensor
    q_mean: torch.Tensor | None = None
    q_logstd: torch.Tensor | None = None
    kl: torch.Tensor | None = None


class DecoderLayer(nn.Module):
    """A stochastic layer at resolution `resolution` (the original's DecBlock). The attribute names are the
    checkpoints' (`decoder.dec_blocks.{i}.enc...`), so they stay; `posterior_net` and `prior_net` are the
    readable names of `enc` (which is not the encoder: it is this layer's posterior network) and `prior`.

    enc:    posterior q(z | x_state, encoder activation): 2W -> 2 * zdim
    prior:  prior p(z | x_state) and a residual for the state:  W -> 2 * zdim + W (last conv zero at init)
    z_proj: zdim -> W, projects the latent into the state
    resnet: residual block on the state
    """

    def __init__(self, config: VDVAEConfig, resolution: int, mixin: int | None, num_layers: int):
        super().__init__()
        self.resolution, self.mixin, self.zdim = resolution, mixin, config.zdim
        self.width = w = config.width_at(resolution)
        middle, kernel = int(w * config.bottleneck_multiple), kernel_size(resolution)
        self.enc = Block(2 * w, middle, 2 * config.zdim, kernel=kernel, residual=False)
        self.prior = Block(w, middle, 2 * config.zdim + w, kernel=kernel, residual=False, zero_last=True)
        self.z_proj = _conv(config.zdim, w, 1)
        self.resnet = Block(w, middle, w, kernel=kernel, residual=True)
        with torch.no_grad():
            self.z_proj.weight.mul_(math.sqrt(1.0 / num_layers))
            self.resnet.c4.weight.mul_(math.sqrt(1.0 / num_layers))

    @property
    def posterior_net(self) -> Block:
        """The block that computes q(z | x): the checkpoints call it `enc`."""
        return self.enc

    @property
    def prior_net(self) -> Block:
        return self.prior

    def forward(
        self,
        x: torch.Tensor,
        activation: torch.Tensor | None = None,
        temperature: float = 1.0,
        latent: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        noise: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, LayerOutput]:
        """x: the state at this resolution (mixin already added). With `activation` (the encoder's at this
        resolution) z comes from the posterior and the KL is computed; without, z comes from the prior at
        `temperature`. A given `latent` replaces the draw (no random numbers are drawn then); a callable `latent`
        is given this layer's LayerOutput without z (its prior, and posterior with `activation`) and returns z."""
        # The distributions and the draws are computed in float32 even under bf16 autocast: they are small
        # (zdim channels), the KL needs the precision, and the random stream stays that of float32.
        if activation is not None:
            # The posterior sees the state before the prior's residual is added. Under autocast both halves are
            # rounded before the concatenation, which then moves half the bytes (same numbers as after it).
            dtype = conv_dtype(x)
            posterior_input = torch.cat([x.to(dtype), activation.to(dtype)], dim=1)
            q_mean, q_logstd = self.enc(posterior_input).float().chunk(2, dim=1)
        features = self.prior(x)
        # Copies, not views: a view would keep the whole (2 zdim + W)-channel tensor alive in LayerOutput.
        p_mean = features[:, : self.zdim].to(torch.float32, copy=True)
        p_logstd = features[:, self.zdim : 2 * self.zdim].to(torch.float32, copy=True)
        x = x + features[:, 2 * self.zdim :]  # a new tensor: from here on this layer may update x in place
        if callable(latent):  # the caller picks z after seeing the distributions (bits-back coding does)
            latent = latent(
                LayerOutput(None, p_mean, p_logstd, *((q_mean, q_logstd) if activation is not None else ()))
            )

        if activation is not None:
            if latent is not None:
                z = latent
            else:
                eps = noise(q_mean) if noise is not None else standard_normal(q_mean, generator)
                z = torch.exp(q_logstd) * eps + q_mean
            out = LayerOutput(z, p_mean, p_logstd, q_mean, q_logstd, gaussian_kl(q_mean, q_logstd, p_mean, p_logstd))
        else:
            if latent is not None:
                z = latent
            else:
                eps = noise(p_mean) if noise is not None else standard_normal(p_mean, generator)
                if temperature == 0:  # the prior mean; the draw above keeps the random stream aligned
                    z = p_mean
                else:
                    z = torch.exp(p_logstd + math.log(temperature)) * eps + p_mean
            out = LayerOutput(z, p_mean, p_logstd)
        x = _residual_add(x, self.z_proj(z.to(x.dtype)), inplace=True)
        x = self.resnet(x, inplace=True)
        return x, out


class OutputHead(nn.Module):
    """1x1 conv to the parameters of the output distribution (the mixture of logistics, or Bernoulli logits),
    returned NHWC."""

    def __init__(self, config: VDVAEConfig):
        super().__init__()
        self.out_conv = _conv(config.width, output_channels(config), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_conv(x).permute(0, 2, 3, 1).float()


class Decoder(nn.Module):
    """The top-down decoder: `dec_blocks` (the checkpoints' name; `layers` reads better) holds one DecoderLayer per
    stochastic layer, top (lowest resolution) first."""

    #: Gradient checkpointing (VDVAE.set_grad_checkpointing): each stochastic layer keeps only its input state and
    #: its outputs, and recomputes the rest in the backward pass. Its standard normal is drawn before the layer runs
    #: (the same number, in the same order, as the layer would draw), so the recomputation sees the same draw.
    grad_checkpoint = False

    def __init__(self, config: VDVAEConfig):
        super().__init__()
        self.config = config
        specs = config.decoder_blocks
        self.dec_blocks = nn.ModuleList(DecoderLayer(config, s.resolution, s.mixin, len(specs)) for s in specs)
        self.bias_resolutions = config.bias_resolutions
        self.bias_xs = nn.ParameterList(
            nn.Parameter(torch.zeros(1, config.width_at(r), r, r)) for r in self.bias_resolutions
        )
        self.out_net = OutputHead(config)
        self.gain = nn.Parameter(torch.ones(1, config.width, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, config.width, 1, 1))

    @property
    def layers(self) -> nn.ModuleList:
        """The stochastic layers (the checkpoints call them `dec_blocks`)."""
        return self.dec_blocks

    def forward(
        self,
        n: int,
        activations: dict[int, torch.Tensor] | None = None,
        temperatures: Sequence[float] | None = None,
        latents: Sequence[torch.Tensor | None] = (),
        generator: torch.Generator | None = None,
        noise: Callable | None = None,
        summarize: Callable[[LayerOutput], Any] | None = None,
        keep: int | None = None,
        memory_format: torch.memory_format = torch.contiguous_format,
    ) -> tuple[torch.Tensor, list[Any]]:
        """Run the layers top to bottom for a batch of `n`. Returns the output-distribution parameters
        (N, H, W, 10M) and each layer's LayerOutput, or `summarize(output)` of it: keeping only what the caller
        needs frees the layer's latent tensors at once. `latents[i]`, when given and not None, fixes layer i.
        `noise(like)`, when given, supplies each layer's standard-normal draw instead of the generator.
        With `activations` (the encoder's), layers 0..keep-1 (all when `keep` is None) take z from the posterior
        and the others from their conditional prior at `temperatures[i]`. `memory_format`: of the states."""
        ref = self.gain
        states: dict[int, torch.Tensor] = {
            r: b.contiguous(memory_format=memory_format)
            for r, b in zip(self.bias_resolutions, self.bias_xs, strict=False)
        }
        outputs: list[LayerOutput] = []
        layers = cast("list[DecoderLayer]", self.dec_blocks)  # a ModuleList of DecoderLayer
        for i, layer in enumerate(layers):
            r = layer.resolution
            x = states.get(r)
            if x is None:
                x = torch.zeros(n, layer.width, r, r, dtype=ref.dtype, device=ref.device).contiguous(
                    memory_format=memory_format
                )
            elif x.shape[0] != n:
                x = x.expand(n, -1, -1, -1)
            if layer.mixin is not None:
                up = states[layer.mixin][:, : layer.width]
                x = x + F.interpolate(up, scale_factor=r // layer.mixin, mode="nearest")
            latent = latents[i] if i < len(latents) else None
            posterior = activations is not None and (keep is None or i < keep)
            activation = activations[r] if activations is not None and posterior else None
            t = 1.0 if temperatures is None else temperatures[i]
            if _checkpointing(self):
                layer_noise = noise
                if latent is None:  # draw now: the recomputation in the backward pass must see the same numbers
                    like = torch.empty(n, layer.zdim, r, r, device=ref.device)
                    eps = noise(like) if noise is not None else standard_normal(like, generator)
                    layer_noise = lambda _like, eps=eps: eps  # noqa: E731
                x, out = checkpoint(layer, x, activation, t, latent, None, layer_noise, use_reentrant=False)
            else:
                x, out = layer(x, activation, t, latent, generator, noise)
            states[r] = x
            outputs.append(out if summarize is None else summarize(out))
        x = states[self.config.image_size] * self.gain + self.bias
        return self.out_net(x), outputs


# ----------------------------------------------------------------------------------------------------------------
# Checkpoint keys: what the generic loaders learn of this network's tensor names (through VDVAE's hooks)
# ----------------------------------------------------------------------------------------------------------------

ENCODER_PREFIX, DECODER_PREFIX = "encoder.", "decoder."
#: Where the blocks' tensors are: ENCODER_BLOCKS + "{i}.c1.weight", DECODER_LAYERS + "{i}.resnet.c1.weight", ...
ENCODER_BLOCKS, DECODER_LAYERS = ENCODER_PREFIX + "enc_blocks.", DECODER_PREFIX + "dec_blocks."
BIAS_XS, GAIN, OUT_CONV = (
    DECODER_PREFIX + "bias_xs.",
    DECODER_PREFIX + "gain",
    DECODER_PREFIX + "out_net.out_conv.weight",
)


def state_signature(shapes: Mapping[str, tuple]) -> tuple | None:
    """(encoder blocks, decoder layers, width) as a checkpoint's names and shapes give them; None when it holds no
    encoder blocks (then nothing can be ruled out cheaply)."""

    def count(prefix: str, suffix: str) -> int:
        return len({k[len(prefix) :].split(".")[0] for k in shapes if k.startswith(prefix) and k.endswith(suffix)})

    encoder = count(ENCODER_BLOCKS, ".c1.weight")
    gain = shapes.get(GAIN)
    width = int(gain[1]) if gain is not None and len(gain) == 4 else None
    return (encoder, count(DECODER_LAYERS, ".resnet.c1.weight"), width) if encoder else None


def config_signature(config: VDVAEConfig) -> tuple:
    """What `state_signature` gives for a model of `config`, without building it."""
    return len(config.encoder_blocks), len(config.decoder_blocks), config.width
