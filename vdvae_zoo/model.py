"""The Very Deep VAE (Child, 2021), readable top to bottom.

Parameter names and shapes match the authors' released checkpoints:
``encoder.in_conv``, ``encoder.enc_blocks.{i}.c{1..4}``, ``decoder.dec_blocks.{i}.{enc,prior,resnet}.c{1..4}``,
``decoder.dec_blocks.{i}.z_proj``, ``decoder.bias_xs.{j}``, ``decoder.gain``, ``decoder.bias``,
``decoder.out_net.out_conv``.

Shapes and units used throughout:
- images in and out: uint8 pixels, NHWC, (N, H, W, 3);
- activations: float NCHW; latents z of a layer at resolution r: (N, zdim, r, r);
- distortion, rate, elbo: nats per dim (divided by H * W * 3); bpd: bits per dim; KL per layer: nats.

Random numbers are drawn from the global torch generator (or `generator=`) in the order of the
original implementation, so `torch.manual_seed(s)` before a call reproduces its outputs on the CPU:
one standard normal per decoder layer, top to bottom, shaped like that layer's latent; then, when
sampling pixels, two uniform tensors in the output distribution (see dmol.py).
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .config import VDVAEConfig
from .dmol import _uniform, dmol_nll, dmol_sample, pixel_uniform_shapes

__all__ = ["VDVAE", "LikelihoodResult", "Temperature", "EncoderMismatchError"]

Temperature = Union[float, Sequence[float], Mapping[int, float]]
ImageBatch = Union[torch.Tensor, np.ndarray]


class EncoderMismatchError(RuntimeError):
    """The encoder weights do not match the config: only the decoder (sample, decode) can be used."""


# ----------------------------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------------------------

def _conv(in_channels: int, out_channels: int, kernel_size: int, zero_weights: bool = False) -> nn.Conv2d:
    """A conv with zero bias (as all of VDVAE's), and optionally zero weights."""
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
    with torch.no_grad():
        conv.bias.zero_()
        if zero_weights:
            conv.weight.zero_()
    return conv


class Block(nn.Module):
    """Bottleneck block: four convs (1x1, 3x3, 3x3, 1x1; the middle ones 1x1 at resolutions <= 2), each
    preceded by an exact GELU. Optionally residual, optionally average-pooled by `down_rate` at its end."""

    def __init__(self, in_width: int, middle_width: int, out_width: int, *, use_3x3: bool,
                 residual: bool, down_rate: Optional[int] = None, zero_last: bool = False):
        super().__init__()
        k = 3 if use_3x3 else 1
        self.c1 = _conv(in_width, middle_width, 1)
        self.c2 = _conv(middle_width, middle_width, k)
        self.c3 = _conv(middle_width, middle_width, k)
        self.c4 = _conv(middle_width, out_width, 1, zero_weights=zero_last)
        self.residual = residual
        self.down_rate = down_rate

    def forward(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        """`inplace=True` adds the residual into x itself (see `_residual_add`); the caller must own x."""
        # Under autocast the residual stream x is float32; the branch starts in the compute dtype, so the first
        # GELU reads half the bytes (its output would be rounded for c1 anyway). Measured: 5% on bf16 CPU runs.
        branch = x.to(_compute_dtype_for(x))
        h = self.c1(F.gelu(branch))
        h = self.c2(F.gelu(h))
        h = self.c3(F.gelu(h))
        h = self.c4(F.gelu(h))
        out = _residual_add(x, h, inplace) if self.residual else h
        if self.down_rate is not None:
            out = F.avg_pool2d(out, kernel_size=self.down_rate, stride=self.down_rate)
        return out


def _compute_dtype_for(x: torch.Tensor) -> torch.dtype:
    """The dtype the convolutions run in: autocast's when it is on for x's device, else x's own."""
    return torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype


def _residual_add(x: torch.Tensor, update: torch.Tensor, inplace: bool) -> torch.Tensor:
    """x + update. Under reduced precision (a bf16 update to the float32 stream) and torch.inference_mode (as the
    public methods run) the sum is written into x when `inplace`; otherwise autograd may need the unmodified x.
    Same numbers either way. Measured on the cifar10 preset, 2 CPU threads, batch 8, medians of 8 alternating
    calls: in place makes bf16 sampling 6% and bf16 likelihood 10% faster, but float32 sampling 7% slower (the
    allocator reuses a freed activation faster than it updates one in place), hence only for mixed dtypes."""
    if inplace and update.dtype != x.dtype and torch.is_inference_mode_enabled():
        return x.add_(update)
    return x + update


def gaussian_kl(q_mean, q_logstd, p_mean, p_logstd) -> torch.Tensor:
    """KL(q || p) of diagonal Gaussians, per element, in nats."""
    return -0.5 + p_logstd - q_logstd + 0.5 * (q_logstd.exp() ** 2 + (q_mean - p_mean) ** 2) / (p_logstd.exp() ** 2)


def _standard_normal(like: torch.Tensor, generator: Optional[torch.Generator]) -> torch.Tensor:
    # Always contiguous NCHW, whatever the memory format of `like`: the same generator state then gives
    # the same numbers at the same positions as the original.
    return torch.empty(like.shape, dtype=like.dtype, device=like.device).normal_(generator=generator)


# ----------------------------------------------------------------------------------------------------------------
# Encoder (bottom-up)
# ----------------------------------------------------------------------------------------------------------------

class Encoder(nn.Module):
    def __init__(self, config: VDVAEConfig):
        super().__init__()
        self.config = config
        self.in_conv = _conv(config.image_channels, config.width, 3)
        specs = config.encoder_blocks
        blocks = []
        for spec in specs:
            w = config.width_at(spec.resolution)
            blocks.append(Block(w, int(w * config.bottleneck_multiple), w, use_3x3=spec.resolution > 2,
                                residual=True, down_rate=spec.down_rate))
        with torch.no_grad():
            for block in blocks:  # residual scaling: the sum of N branches keeps its variance
                block.c4.weight.mul_(math.sqrt(1.0 / len(specs)))
        self.enc_blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> Dict[int, torch.Tensor]:
        """x: preprocessed float NCHW image. Returns {resolution: last activation at that resolution}."""
        x = self.in_conv(x)
        if torch.is_autocast_enabled(x.device.type):
            x = x.float()  # the residual stream stays float32 under autocast; only the convs run in bf16
        activations = {x.shape[2]: x}
        for block in self.enc_blocks:
            # x is this loop's own tensor, except that a down-sampling block's input stays in `activations`.
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
    q_mean: Optional[torch.Tensor] = None
    q_logstd: Optional[torch.Tensor] = None
    kl: Optional[torch.Tensor] = None


class DecoderLayer(nn.Module):
    """A stochastic layer at resolution `resolution` (the original's DecBlock).

    enc:    posterior q(z | x_state, encoder activation): 2W -> 2 * zdim
    prior:  prior p(z | x_state) and a residual for the state:  W -> 2 * zdim + W (last conv zero at init)
    z_proj: zdim -> W, projects the latent into the state
    resnet: residual block on the state
    """

    def __init__(self, config: VDVAEConfig, resolution: int, mixin: Optional[int], num_layers: int):
        super().__init__()
        self.resolution, self.mixin, self.zdim = resolution, mixin, config.zdim
        self.width = w = config.width_at(resolution)
        middle, use_3x3 = int(w * config.bottleneck_multiple), resolution > 2
        self.enc = Block(2 * w, middle, 2 * config.zdim, use_3x3=use_3x3, residual=False)
        self.prior = Block(w, middle, 2 * config.zdim + w, use_3x3=use_3x3, residual=False, zero_last=True)
        self.z_proj = _conv(config.zdim, w, 1)
        self.resnet = Block(w, middle, w, use_3x3=use_3x3, residual=True)
        with torch.no_grad():
            self.z_proj.weight.mul_(math.sqrt(1.0 / num_layers))
            self.resnet.c4.weight.mul_(math.sqrt(1.0 / num_layers))

    def forward(self, x: torch.Tensor, activation: Optional[torch.Tensor] = None, temperature: float = 1.0,
                latent: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
                noise: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> tuple[torch.Tensor, LayerOutput]:
        """x: the state at this resolution (mixin already added). With `activation` (the encoder's at this
        resolution) z comes from the posterior and the KL is computed; without, z comes from the prior at
        `temperature`. A given `latent` replaces the draw (no random numbers are drawn then)."""
        # The distributions and the draws are computed in float32 even under bf16 autocast: they are small
        # (zdim channels), the KL needs the precision, and the random stream stays that of float32.
        if activation is not None:
            # The posterior sees the state before the prior's residual is added. Under autocast both halves are
            # rounded before the concatenation, which then moves half the bytes (same numbers as after it).
            dtype = _compute_dtype_for(x)
            posterior_input = torch.cat([x.to(dtype), activation.to(dtype)], dim=1)
            q_mean, q_logstd = self.enc(posterior_input).float().chunk(2, dim=1)
        features = self.prior(x)
        # Copies, not views: a view would keep the whole (2 zdim + W)-channel tensor alive in LayerOutput.
        p_mean = features[:, :self.zdim].to(torch.float32, copy=True)
        p_logstd = features[:, self.zdim:2 * self.zdim].to(torch.float32, copy=True)
        x = x + features[:, 2 * self.zdim:]  # a new tensor: from here on this layer may update x in place

        if activation is not None:
            if latent is not None:
                z = latent
            else:
                eps = noise(q_mean) if noise is not None else _standard_normal(q_mean, generator)
                z = torch.exp(q_logstd) * eps + q_mean
            out = LayerOutput(z, p_mean, p_logstd, q_mean, q_logstd, gaussian_kl(q_mean, q_logstd, p_mean, p_logstd))
        else:
            if latent is not None:
                z = latent
            else:
                eps = noise(p_mean) if noise is not None else _standard_normal(p_mean, generator)
                if temperature == 0:  # the prior mean; the draw above keeps the random stream aligned
                    z = p_mean
                else:
                    z = torch.exp(p_logstd + math.log(temperature)) * eps + p_mean
            out = LayerOutput(z, p_mean, p_logstd)
        x = _residual_add(x, self.z_proj(z.to(x.dtype)), inplace=True)
        x = self.resnet(x, inplace=True)
        return x, out


class OutputHead(nn.Module):
    """1x1 conv to the parameters of the discretized mixture of logistics, returned NHWC."""

    def __init__(self, config: VDVAEConfig):
        super().__init__()
        self.out_conv = _conv(config.width, config.num_mixtures * 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_conv(x).permute(0, 2, 3, 1).float()


class Decoder(nn.Module):
    def __init__(self, config: VDVAEConfig):
        super().__init__()
        self.config = config
        specs = config.decoder_blocks
        self.dec_blocks = nn.ModuleList(DecoderLayer(config, s.resolution, s.mixin, len(specs)) for s in specs)
        self.bias_resolutions = config.bias_resolutions
        self.bias_xs = nn.ParameterList(
            nn.Parameter(torch.zeros(1, config.width_at(r), r, r)) for r in self.bias_resolutions)
        self.out_net = OutputHead(config)
        self.memory_format = torch.contiguous_format  # runtime setting (VDVAE.optimize), not a weight
        self.gain = nn.Parameter(torch.ones(1, config.width, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, config.width, 1, 1))

    def forward(self, n: int, activations: Optional[Dict[int, torch.Tensor]] = None,
                temperatures: Optional[Sequence[float]] = None, latents: Sequence[Optional[torch.Tensor]] = (),
                generator: Optional[torch.Generator] = None, noise: Optional[Callable] = None,
                summarize: Optional[Callable[[LayerOutput], Any]] = None) -> tuple[torch.Tensor, List[Any]]:
        """Run the layers top to bottom for a batch of `n`. Returns the output-distribution parameters
        (N, H, W, 10M) and each layer's LayerOutput, or `summarize(output)` of it: keeping only what the caller
        needs frees the layer's latent tensors at once. `latents[i]`, when given and not None, fixes layer i.
        `noise(like)`, when given, supplies each layer's standard-normal draw instead of the generator."""
        ref = self.gain
        fmt = self.memory_format
        states: Dict[int, torch.Tensor] = {r: b.contiguous(memory_format=fmt)
                                           for r, b in zip(self.bias_resolutions, self.bias_xs)}
        outputs: List[LayerOutput] = []
        for i, layer in enumerate(self.dec_blocks):
            r = layer.resolution
            x = states.get(r)
            if x is None:
                x = torch.zeros(n, layer.width, r, r, dtype=ref.dtype, device=ref.device).contiguous(memory_format=fmt)
            elif x.shape[0] != n:
                x = x.expand(n, -1, -1, -1)
            if layer.mixin is not None:
                up = states[layer.mixin][:, :layer.width]
                x = x + F.interpolate(up, scale_factor=r // layer.mixin, mode="nearest")
            latent = latents[i] if i < len(latents) else None
            activation = activations[r] if activations is not None else None
            t = 1.0 if temperatures is None else temperatures[i]
            x, out = layer(x, activation, t, latent, generator, noise)
            states[r] = x
            outputs.append(out if summarize is None else summarize(out))
        x = states[self.config.image_size] * self.gain + self.bias
        return self.out_net(x), outputs


# ----------------------------------------------------------------------------------------------------------------
# The model and its public API
# ----------------------------------------------------------------------------------------------------------------

@dataclass
class LikelihoodResult:
    """Per-image likelihood terms (CPU float32 tensors). Units: nats per dim (divided by H * W * 3) unless
    the name says bits; `kl` is in nats, summed over each layer's latent, shape (N, L)."""

    elbo: torch.Tensor         # (N,) negative ELBO = distortion + rate, nats per dim
    distortion: torch.Tensor   # (N,) -log p(x | z), nats per dim
    rate: torch.Tensor         # (N,) sum of the layers' KL, nats per dim
    kl: torch.Tensor           # (N, L) KL of each decoder layer, nats
    bpd_iw: Optional[torch.Tensor] = None  # (N,) importance-weighted bound, bits per dim (n_samples > 1)

    @property
    def bpd(self) -> torch.Tensor:
        """Negative ELBO in bits per dim, (N,)."""
        return self.elbo / math.log(2)

    @property
    def distortion_bpd(self) -> torch.Tensor:
        return self.distortion / math.log(2)

    @property
    def rate_bpd(self) -> torch.Tensor:
        return self.rate / math.log(2)


def _inference(method: Callable) -> Callable:
    """Run a public method in eval mode under torch.inference_mode, restoring the train/eval mode after."""

    @functools.wraps(method)
    def wrapper(self: "VDVAE", *args, **kwargs):
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                return method(self, *args, **kwargs)
        finally:
            self.train(was_training)

    return wrapper


_DTYPE_NAMES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
                "float16": torch.float16, "fp16": torch.float16}


def compute_dtype(value: Union[None, str, torch.dtype], name: str = "dtype") -> Optional[torch.dtype]:
    """Read a compute precision: None, a torch dtype, or one of 'float32', 'bfloat16', 'float16' (or fp32/bf16/fp16)."""
    if value is None or isinstance(value, torch.dtype) and value in _DTYPE_NAMES.values():
        return value
    if isinstance(value, str) and value.lower() in _DTYPE_NAMES:
        return _DTYPE_NAMES[value.lower()]
    raise ValueError(f"{name} must be one of float32, bfloat16, float16 (or fp32, bf16, fp16), got {value!r}")


def _log_prior_over_posterior(out: LayerOutput) -> torch.Tensor:
    """log p(z) - log q(z | x) of one layer's posterior draw, summed per image in float64, (N,)."""
    z = out.z.float()
    log_p = -0.5 * ((z - out.p_mean) * torch.exp(-out.p_logstd)) ** 2 - out.p_logstd
    log_q = -0.5 * ((z - out.q_mean) * torch.exp(-out.q_logstd)) ** 2 - out.q_logstd
    return (log_p - log_q).double().sum(dim=(1, 2, 3))


def _mix(a: torch.Tensor, b: torch.Tensor, ts: torch.Tensor, mode: str) -> torch.Tensor:
    """Points on the path from latent a to latent b (same shape) at fractions ts: (len(ts), *a.shape)."""
    shape = (-1,) + (1,) * a.ndim
    t = ts.to(a.dtype).view(shape)
    if mode == "slerp":
        cos = torch.dot(a.flatten(), b.flatten()) / (a.norm() * b.norm()).clamp_min(1e-12)
        omega = torch.arccos(cos.clamp(-1.0, 1.0))
        if omega > 1e-4:
            return (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)
    return (1 - t) * a + t * b


class _BatchDraws:
    """The random numbers of a whole batch, drawn up front in the original's order (one standard normal per
    decoder layer that samples, top to bottom, then the pixel uniforms) and handed out per micro-batch, so that
    splitting a batch changes no number: seeded calls give what one big batch gives."""

    def __init__(self, normal_shapes: Sequence[Optional[tuple]], uniform_shapes: Sequence[tuple],
                 device: torch.device, generator: Optional[torch.Generator]):
        self.normals = [torch.empty(shape, device=device).normal_(generator=generator)
                        for shape in normal_shapes if shape is not None]
        self.uniforms = [_uniform(shape, device, generator) for shape in uniform_shapes]

    def noise(self, s: slice) -> Callable[[torch.Tensor], torch.Tensor]:
        """The decoder's `noise` hook for the images in `s`: each call returns the next layer's draws."""
        upcoming = iter([z[s] for z in self.normals])
        return lambda like: next(upcoming)

    def pixel_uniforms(self, s: slice) -> List[torch.Tensor]:
        return [u[s] for u in self.uniforms]


class _CompiledForward:
    """A module's forward run through torch.compile, falling back to eager (with one warning for the whole
    model) when compilation fails, e.g. where no C++ compiler or Triton is available."""

    def __init__(self, eager: Callable, state: dict):
        self.eager, self.state = eager, state
        self.compiled = torch.compile(eager, dynamic=False)

    def __call__(self, x: torch.Tensor, inplace: bool = False) -> torch.Tensor:
        if not self.state["failed"]:
            try:
                return self.compiled(x, inplace)
            except Exception as e:  # noqa: BLE001 - any compiler failure means: run eagerly
                self.state["failed"] = True
                warnings.warn(f"torch.compile failed, running eagerly instead ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})", RuntimeWarning, stacklevel=3)
        return self.eager(x, inplace)


class VDVAE(nn.Module):
    """A Very Deep VAE. Build one with random weights from a config, or get a trained one with
    `vdvae_zoo.load(...)`.

    >>> model = VDVAE(VDVAEConfig.from_preset("cifar10"))
    >>> images = model.sample(4, temperature=0.8)   # uint8 (4, 32, 32, 3)
    >>> model.likelihood(images).bpd                 # bits per dim, (4,)
    """

    #: Memory budget of one automatic micro-batch (see `auto_batch_size`), in bytes, on the CPU.
    cpu_batch_memory = 2 * 2 ** 30
    #: The same on CUDA, as a fraction of the device's total memory.
    cuda_batch_memory_fraction = 0.25

    def __init__(self, config: VDVAEConfig):
        super().__init__()
        if isinstance(config, dict):
            config = VDVAEConfig.from_dict(config)
        self.config = config
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)
        self.encoder_mismatch: Optional[str] = None  # set by loading code when the encoder weights are unusable
        self.compute_dtype: torch.dtype = torch.float32  # runtime settings: see optimize()
        self._compile_state: Optional[dict] = None

    # ----------------------------------------------------------------------------------------- properties
    @property
    def num_layers(self) -> int:
        """Number of stochastic (decoder) layers, L."""
        return len(self.decoder.dec_blocks)

    @property
    def layer_resolutions(self) -> List[int]:
        """Resolution of each decoder layer, top to bottom."""
        return [layer.resolution for layer in self.decoder.dec_blocks]

    @property
    def device(self) -> torch.device:
        return self.decoder.gain.device

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the weights (float32 unless cast); the compute precision is `compute_dtype`."""
        return self.decoder.gain.dtype

    # ------------------------------------------------------------------------------------- fast paths
    def optimize(self, *, dtype: Union[None, str, torch.dtype] = None, channels_last: Optional[bool] = None,
                 compile: Optional[bool] = None) -> "VDVAE":
        """Choose how inference runs (weights and results' units are unchanged); returns self. None leaves a setting.

        - `dtype`: compute precision of the convolutions, 'float32' (default, exact) or 'bfloat16' / 'float16'
          (autocast; weights stay float32; the residual streams, the latent distributions, the KL and the
          mixture-of-logistics likelihood stay float32). Methods also take `dtype=` for one call.
        - `channels_last`: run the convolutions in NHWC memory layout (random draws are unaffected).
        - `compile`: torch.compile each residual block; where that cannot compile (no C++ compiler or Triton)
          it falls back to eager with one warning. The first calls are slow while it compiles.
        """
        if dtype is not None:
            self.compute_dtype = compute_dtype(dtype)
        if channels_last is not None:
            self.decoder.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if compile is not None:
            blocks = [m for m in self.modules() if isinstance(m, Block)]
            if compile and self._compile_state is None:
                import torch._dynamo as dynamo
                limit = "recompile_limit" if hasattr(dynamo.config, "recompile_limit") else "cache_size_limit"
                # One compiled graph per distinct block shape (resolution x width x batch): allow enough of them.
                setattr(dynamo.config, limit, max(getattr(dynamo.config, limit), 128))
                self._compile_state = {"failed": False}
                for block in blocks:
                    block.forward = _CompiledForward(block.forward, self._compile_state)
            elif not compile and self._compile_state is not None:
                for block in blocks:
                    block.__dict__.pop("forward", None)
                self._compile_state = None
        return self

    @property
    def compiled(self) -> bool:
        """True when optimize(compile=True) is in effect and compilation has not fallen back to eager."""
        return self._compile_state is not None and not self._compile_state["failed"]

    def _autocast(self, dtype: Union[None, str, torch.dtype]):
        dtype = self.compute_dtype if dtype is None else compute_dtype(dtype)
        if dtype == torch.float32 or dtype == self.dtype:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def auto_batch_size(self) -> int:
        """Images per micro-batch when a method's `batch_size` is None: as many as fit a fixed budget
        (`cpu_batch_memory` bytes on the CPU, `cuda_batch_memory_fraction` of the GPU's total memory) by an
        estimate of the activations alive at once. The budget is fixed per device, not the free memory, so a
        seeded call draws the same numbers every time on the same machine."""
        c = self.config
        per_resolution = [c.width_at(r) * r * r for r in sorted(set(self.layer_resolutions))]
        states = 2 * sum(per_resolution)                 # encoder activations and decoder states, one per resolution
        working = 8 * max(per_resolution)                # one layer's intermediates at the top resolution
        latents = 6 * c.zdim * sum(r * r for r in self.layer_resolutions)  # z, prior, posterior, KL of every layer
        output = 40 * c.num_mixtures * c.image_size ** 2  # the mixture of logistics and its intermediates
        bytes_per_image = 4 * (states + working + latents + output) * 1.25  # + allocator slack (measured)
        return max(1, int(self._memory_budget() // bytes_per_image))

    # ------------------------------------------------------------------------------------- input handling
    def _check_images(self, images: ImageBatch, name: str = "images") -> torch.Tensor:
        if isinstance(images, np.ndarray):
            if images.dtype != np.uint8:
                raise ValueError(f"{name} must be uint8 pixels (0..255), got numpy dtype {images.dtype}; "
                                 "convert with .astype(np.uint8) if the values are already in 0..255")
            images = torch.from_numpy(np.ascontiguousarray(images))
        if not isinstance(images, torch.Tensor):
            raise ValueError(f"{name} must be a uint8 tensor or numpy array of shape (N, H, W, 3), "
                             f"got {type(images).__name__}")
        if images.dtype != torch.uint8:
            raise ValueError(f"{name} must be uint8 pixels (0..255), got {images.dtype}")
        s, c = self.config.image_size, self.config.image_channels
        if images.ndim != 4:
            raise ValueError(f"{name} must have shape (N, {s}, {s}, {c}) (uint8 NHWC), got {tuple(images.shape)}")
        if images.shape[3] != c:
            raise ValueError(f"{name} must have {c} channels in the last axis (NHWC), got shape {tuple(images.shape)}")
        if images.shape[1] != s or images.shape[2] != s:
            raise ValueError(f"{name} must be {s}x{s} for this model, got {images.shape[1]}x{images.shape[2]} "
                             f"(shape {tuple(images.shape)})")
        if images.shape[0] == 0:
            raise ValueError(f"{name} is an empty batch")
        return images

    def preprocess(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 NHWC -> (encoder input, float NCHW; likelihood target, float NHWC in [-1, 1])."""
        c = self.config
        x = images.to(self.device, non_blocking=True).float()
        encoder_input = (x * c.pixel_scale + c.shift) * c.scale if c.pixel_scale != 1 else (x + c.shift) * c.scale
        target = torch.floor(x / 8.0) * 8.0 if c.low_bit else x
        if c.pixel_scale != 1:
            target = target * c.pixel_scale
        target = (target + c.shift_loss) * c.scale_loss
        encoder_input = encoder_input.permute(0, 3, 1, 2).contiguous(memory_format=self.decoder.memory_format)
        return encoder_input.to(self.dtype), target

    def layer_temperatures(self, temperature: Temperature) -> List[float]:
        """Expand a temperature to one float per decoder layer.

        `temperature` is a number (every layer), a sequence of L numbers (one per layer, top to bottom), or a
        mapping {resolution: t} read as a schedule: a layer at resolution r takes the value of the largest key
        <= r (layers below every key use 1.0). 0 means the prior mean; negative values are refused.
        """
        L = self.num_layers
        if isinstance(temperature, Mapping):
            try:
                schedule = sorted((int(k), float(v)) for k, v in temperature.items())
            except (TypeError, ValueError):
                raise ValueError(f"a temperature mapping must map resolutions to numbers, got {temperature!r}") from None
            values = []
            for r in self.layer_resolutions:
                below = [t for k, t in schedule if k <= r]
                values.append(below[-1] if below else 1.0)
        elif isinstance(temperature, (int, float)) and not isinstance(temperature, bool):
            values = [float(temperature)] * L
        else:
            if isinstance(temperature, torch.Tensor):
                temperature = temperature.tolist()
            try:
                values = [float(t) for t in temperature]
            except (TypeError, ValueError):
                raise ValueError(f"temperature must be a number, a list of {L} numbers (one per decoder layer) "
                                 f"or a mapping {{resolution: number}}, got {temperature!r}") from None
            if len(values) != L:
                raise ValueError(f"temperature list has {len(values)} values; this model has {L} decoder layers, "
                                 "so give exactly that many (or one number)")
        for i, t in enumerate(values):
            if not math.isfinite(t) or t < 0:
                raise ValueError(f"temperature must be finite and >= 0 (0 = prior mean), got {t} for layer {i}")
        return values

    def _require_encoder(self) -> None:
        if self.encoder_mismatch:
            raise EncoderMismatchError(
                "this model's encoder weights do not match its config, so likelihood, encode and reconstruct "
                f"are unavailable ({self.encoder_mismatch}). sample() and decode() use only the decoder and work. "
                "To use the encoder, load again with a config whose enc_blocks matches the file "
                "(`vdvae-zoo inspect FILE` shows the file's structure).")

    @staticmethod
    def _chunks(n: int, batch_size: Optional[int]) -> List[slice]:
        if batch_size is None or batch_size >= n:
            return [slice(0, n)]
        if batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]

    # --------------------------------------------------------------------------------------- training
    def forward(self, images: ImageBatch, generator: Optional[torch.Generator] = None,
                noise: Optional[Callable[[torch.Tensor], torch.Tensor]] = None) -> Dict[str, torch.Tensor]:
        """The loss terms with autograd, per image (N,): `elbo`, `distortion`, `rate` in nats per dim, and `kl`
        (N, L) in nats. The training loss is `elbo.mean()`. `noise(like)` may supply the posterior draws
        (the trainer uses it to make them independent of how a batch is split across processes)."""
        self._require_encoder()
        x_in, target = self.preprocess(self._check_images(images))
        return self._terms(self.encoder(x_in), target, x_in.shape[0], generator, noise)

    def _terms(self, activations: Dict[int, torch.Tensor], target: torch.Tensor, n: int,
               generator: Optional[torch.Generator] = None, noise: Optional[Callable] = None,
               log_weight: bool = False) -> Dict[str, torch.Tensor]:
        """Run the decoder on the posterior and score `target`. With `log_weight`, also the importance weight
        log p(x, z) - log q(z | x) of the draw, in nats per image, float64 (N,)."""
        def summarize(o: LayerOutput):  # per image: the layer's KL, and its log p(z) - log q(z | x) when needed
            return o.kl.sum(dim=(1, 2, 3)), _log_prior_over_posterior(o) if log_weight else None

        params, per_layer = self.decoder(n, activations, generator=generator, noise=noise, summarize=summarize)
        distortion = dmol_nll(params, target, self.config.num_mixtures, self.config.low_bit)
        kl = torch.stack([layer_kl for layer_kl, _ in per_layer], dim=1)
        rate = kl.sum(dim=1) / self.config.dims_per_image
        terms = {"elbo": distortion + rate, "distortion": distortion, "rate": rate, "kl": kl}
        if log_weight:
            log_ratio = torch.stack([ratio for _, ratio in per_layer]).sum(dim=0)
            terms["log_weight"] = log_ratio - distortion.double() * self.config.dims_per_image
        return terms

    # ------------------------------------------------------------------------------------------ inference
    @_inference
    def likelihood(self, images: ImageBatch, *, n_samples: int = 1, generator: Optional[torch.Generator] = None,
                   batch_size: Optional[int] = None, dtype: Union[None, str, torch.dtype] = None) -> LikelihoodResult:
        """Negative ELBO of uint8 NHWC images and its parts; with `n_samples` = K > 1 also the importance-weighted
        bound -log (1/K) sum_k p(x, z_k) / q(z_k | x) (Burda et al.), never worse than the ELBO in expectation.

        Returns a LikelihoodResult: `bpd` (bits per dim), `elbo`, `distortion`, `rate` (nats per dim), each (N,),
        `kl` (N, L) in nats (averaged over the K draws), and for K > 1 `bpd_iw` (N,) in bits per dim.
        `batch_size` bounds how many images x draws are evaluated at once (None: `auto_batch_size()`); the
        K draws are spread over passes, so memory does not grow with K. With K = 1 the split changes no random
        number (the draws of the whole batch are made first, in the original's order).
        """
        self._require_encoder()
        images = self._check_images(images)
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer (posterior draws per image), got {n_samples!r}")
        per_pass = self._batch(batch_size)
        chunks = self._chunks(images.shape[0], per_pass)
        draws = self._batch_draws(images.shape[0], [None] * self.num_layers, False, generator) \
            if len(chunks) > 1 and n_samples == 1 else None
        parts = []
        with self._autocast(dtype):
            for s in chunks:
                x_in, target = self.preprocess(images[s])
                activations = self.encoder(x_in)
                b = x_in.shape[0]
                if n_samples == 1:
                    parts.append(self._terms(activations, target, b, generator, draws.noise(s) if draws else None))
                    continue
                draws_per_pass = max(1, per_pass // b)
                total: Dict[str, torch.Tensor] = {}
                log_sum = None
                for k0 in range(0, n_samples, draws_per_pass):
                    k = min(draws_per_pass, n_samples - k0)
                    terms = self._terms({r: a.repeat(k, 1, 1, 1) for r, a in activations.items()},
                                        target.repeat(k, 1, 1, 1), b * k, generator, log_weight=True)
                    lse = torch.logsumexp(terms.pop("log_weight").view(k, b), dim=0)
                    log_sum = lse if log_sum is None else torch.logaddexp(log_sum, lse)
                    for name, value in terms.items():
                        value = value.view(k, b, *value.shape[1:]).double().sum(dim=0)
                        total[name] = total[name] + value if name in total else value
                part = {name: (value / n_samples).float() for name, value in total.items()}
                log_mean_weight = log_sum - math.log(n_samples)  # nats per image
                part["bpd_iw"] = (-log_mean_weight / (self.config.dims_per_image * math.log(2))).float()
                parts.append(part)
        cat = {k: torch.cat([p[k] for p in parts]).float().cpu() for k in parts[0]}
        return LikelihoodResult(elbo=cat["elbo"], distortion=cat["distortion"], rate=cat["rate"], kl=cat["kl"],
                                bpd_iw=cat.get("bpd_iw"))

    @_inference
    def encode(self, images: ImageBatch, *, mean: bool = False, generator: Optional[torch.Generator] = None,
               batch_size: Optional[int] = None, dtype: Union[None, str, torch.dtype] = None) -> List[torch.Tensor]:
        """Latents of every decoder layer for uint8 NHWC images: a list of L CPU float tensors, layer i of shape
        (N, zdim, r_i, r_i), top (lowest resolution) first. Posterior samples, or with `mean=True` the posterior
        means (each layer's mean given the means above it; no random numbers are drawn)."""
        self._require_encoder()
        images = self._check_images(images)
        chunks = self._chunks(images.shape[0], self._batch(batch_size))
        draws = self._batch_draws(images.shape[0], [None] * self.num_layers, False, generator) \
            if len(chunks) > 1 and not mean else None
        pieces = []
        with self._autocast(dtype):
            for s in chunks:
                x_in, _ = self.preprocess(images[s])
                noise = (lambda like: torch.zeros_like(like)) if mean else (draws.noise(s) if draws else None)
                _, zs = self.decoder(x_in.shape[0], self.encoder(x_in), generator=generator, noise=noise,
                                     summarize=lambda o: o.z.float().cpu())
                pieces.append(zs)
        return [torch.cat(layer) for layer in zip(*pieces)]

    @_inference
    def sample(self, n: int, temperature: Temperature = 1.0, *, generator: Optional[torch.Generator] = None,
               batch_size: Optional[int] = None, dtype: Union[None, str, torch.dtype] = None) -> torch.Tensor:
        """Draw `n` images from the prior at `temperature` (see `layer_temperatures`); uint8 (n, H, W, 3) on the CPU.
        Only the decoder's prior path runs. `batch_size`: images per pass (None: `auto_batch_size()`)."""
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ValueError(f"n must be a positive integer number of images, got {n!r}")
        return self._decode(n, [], self.layer_temperatures(temperature), generator, batch_size, dtype)

    @_inference
    def decode(self, latents: Sequence[Optional[torch.Tensor]], temperature: Temperature = 1.0, *,
               n: Optional[int] = None, generator: Optional[torch.Generator] = None,
               batch_size: Optional[int] = None, dtype: Union[None, str, torch.dtype] = None) -> torch.Tensor:
        """Images from given latents: `latents[i]` fixes decoder layer i (None or a missing tail: sampled from the
        prior at `temperature`). Usually `model.encode(x)[:k]`. Returns uint8 (N, H, W, 3) on the CPU."""
        latents = self._check_latents(latents, n)
        n = n if n is not None else next(z.shape[0] for z in latents if z is not None)
        return self._decode(n, latents, self.layer_temperatures(temperature), generator, batch_size, dtype)

    def _check_latents(self, latents: Sequence[Optional[torch.Tensor]], n: Optional[int]) -> List[Optional[torch.Tensor]]:
        latents = list(latents)
        if len(latents) > self.num_layers:
            raise ValueError(f"got {len(latents)} latents; this model has {self.num_layers} decoder layers")
        given = [z for z in latents if z is not None]
        if n is None:
            if not given:
                raise ValueError("decode needs n= (the batch size) when no latent is given")
            n = given[0].shape[0]
        for i, z in enumerate(latents):
            if z is not None:
                r = self.layer_resolutions[i]
                expected = (n, self.config.zdim, r, r)
                if tuple(z.shape) != expected:
                    raise ValueError(f"latent {i} has shape {tuple(z.shape)}; expected {expected} for layer {i}")
        return latents

    @_inference
    def reconstruct(self, images: ImageBatch, keep: Union[None, int, Sequence[Optional[int]]] = None,
                    temperature: Temperature = 1.0, *, generator: Optional[torch.Generator] = None,
                    dtype: Union[None, str, torch.dtype] = None) -> torch.Tensor:
        """Encode uint8 NHWC images, keep the first `keep` layers' latents (all when None) and sample the rest
        from the prior at `temperature`. Returns uint8 (N, H, W, 3) on the CPU.

        With a list of keeps (the paper's Figure 4: `keep=[1, 4, 16, None]`) the images are encoded once and
        decoded once per entry: uint8 (N, len(keep), H, W, 3)."""
        several = isinstance(keep, (list, tuple))
        keeps = [self._check_keep(k) for k in (keep if several else [keep])]
        images = self._check_images(images)
        latents = self.encode(images, generator=generator, dtype=dtype)
        out = [self.decode(latents[:k], temperature, n=images.shape[0], generator=generator, dtype=dtype)
               for k in keeps]
        return torch.stack(out, dim=1) if several else out[0]

    def _check_keep(self, keep: Optional[int]) -> int:
        keep = self.num_layers if keep is None else keep
        if isinstance(keep, bool) or not isinstance(keep, int) or not 0 <= keep <= self.num_layers:
            raise ValueError(f"keep must be an integer in 0..{self.num_layers} (number of layers to keep), got {keep!r}")
        return keep

    @_inference
    def interpolate(self, a: ImageBatch, b: ImageBatch, steps: int = 8, *, keep: Optional[int] = None,
                    temperature: Temperature = 1.0, mode: str = "linear", generator: Optional[torch.Generator] = None,
                    dtype: Union[None, str, torch.dtype] = None) -> torch.Tensor:
        """Decode `steps` images along the path from image a to image b in latent space.

        a, b: uint8 (H, W, 3) or matching batches (N, H, W, 3). Both are encoded to their posterior means; the
        first `keep` layers (all when None) are interpolated (`mode` 'linear' or 'slerp' per layer), the rest are
        drawn from the prior at `temperature`, with the same noise at every step (pixels included), so the path is
        smooth and changes only where the interpolated latents do. Returns
        uint8 (steps, H, W, 3) for single images, (N, steps, H, W, 3) for batches, on the CPU; step 0 is a.
        """
        single = isinstance(a, (torch.Tensor, np.ndarray)) and a.ndim == 3
        if single:
            a, b = a[None], b[None] if isinstance(b, (torch.Tensor, np.ndarray)) and b.ndim == 3 else b
        a, b = self._check_images(a, "a"), self._check_images(b, "b")
        if a.shape != b.shape:
            raise ValueError(f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
            raise ValueError(f"steps must be an integer >= 2 (images on the path, ends included), got {steps!r}")
        if mode not in ("linear", "slerp"):
            raise ValueError(f"mode must be 'linear' or 'slerp', got {mode!r}")
        keep = self._check_keep(keep)
        temperatures = self.layer_temperatures(temperature)
        za = self.encode(a, mean=True, dtype=dtype)[:keep]
        zb = self.encode(b, mean=True, dtype=dtype)[:keep]
        ts = torch.linspace(0.0, 1.0, steps)

        def same_noise_each_step(like: torch.Tensor) -> torch.Tensor:
            return _standard_normal(like[:1], generator).expand_as(like)

        paths = []
        with self._autocast(dtype):
            for i in range(a.shape[0]):
                latents = [_mix(za_l[i], zb_l[i], ts, mode).to(self.device) for za_l, zb_l in zip(za, zb)]
                params, _ = self.decoder(steps, temperatures=temperatures, latents=latents,
                                         noise=same_noise_each_step, summarize=lambda o: None)
                paths.append(dmol_sample(params, self.config.num_mixtures, generator, same_noise=True).cpu())
        out = torch.stack(paths)
        return out[0] if single else out

    def _batch(self, batch_size: Optional[int]) -> int:
        if batch_size is None:
            return self.auto_batch_size()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive integer (images per pass), got {batch_size!r}")
        return batch_size

    def _decode(self, n: int, latents: List[Optional[torch.Tensor]], temperatures: List[float],
                generator: Optional[torch.Generator], batch_size: Optional[int],
                dtype: Union[None, str, torch.dtype] = None) -> torch.Tensor:
        chunks = self._chunks(n, self._batch(batch_size))
        draws = self._batch_draws(n, latents, True, generator) if len(chunks) > 1 else None
        pieces = []
        with self._autocast(dtype):
            for s in chunks:
                chunk_latents = [None if z is None else z[s].to(self.device, torch.float32) for z in latents]
                params, _ = self.decoder(s.stop - s.start, temperatures=temperatures, latents=chunk_latents,
                                         generator=generator, noise=draws.noise(s) if draws else None,
                                         summarize=lambda o: None)
                pieces.append(dmol_sample(params, self.config.num_mixtures, generator=generator,
                                          uniforms=draws.pixel_uniforms(s) if draws else None).cpu())
        return torch.cat(pieces)

    def _batch_draws(self, n: int, latents: Sequence[Optional[torch.Tensor]], pixels: bool,
                     generator: Optional[torch.Generator]) -> Optional[_BatchDraws]:
        """All random numbers a batch of n would draw in one pass: a normal per layer without a given latent,
        then (when sampling pixels) the output distribution's uniforms. None when they would not fit the memory
        budget of a micro-batch (thousands of images): each micro-batch then draws its own, as consecutive
        calls would."""
        c = self.config
        given = list(latents) + [None] * (self.num_layers - len(latents))
        normal_shapes = [None if z is not None else (n, c.zdim, r, r) for z, r in zip(given, self.layer_resolutions)]
        uniform_shapes = pixel_uniform_shapes(n, c.image_size, c.image_size, c.num_mixtures) if pixels else []
        floats = sum(math.prod(shape) for shape in normal_shapes + uniform_shapes if shape is not None)
        if 4 * floats > self._memory_budget():
            return None
        return _BatchDraws(normal_shapes, uniform_shapes, self.device, generator)

    def _memory_budget(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.get_device_properties(self.device).total_memory * self.cuda_batch_memory_fraction
        return self.cpu_batch_memory

    # --------------------------------------------------------------------------- saving and loading
    # The Hugging Face folder layout: config.json + model.safetensors (+ a model card). The work is done in
    # hub.py, imported here lazily because hub.py builds models.
    def save_pretrained(self, folder: str, **kwargs) -> "Path":
        """Write config.json, model.safetensors and a model card README.md into `folder`."""
        from .hub import save_pretrained
        return save_pretrained(self, folder, **kwargs)

    @classmethod
    def from_pretrained(cls, folder_or_repo_id: str, **kwargs) -> "VDVAE":
        """Load from a save_pretrained folder, a Hub repository id or a manifest name (see `vdvae_zoo.load`)."""
        from .hub import load
        return load(folder_or_repo_id, **kwargs)

    def push_to_hub(self, repo_id: str, **kwargs) -> Dict[str, str]:
        """Upload to the Hugging Face Hub; returns repo_id, revision and sha256 to pin in a manifest."""
        from .hub import push_to_hub
        return push_to_hub(self, repo_id, **kwargs)

    def extra_repr(self) -> str:
        c = self.config
        return (f"image_size={c.image_size}, width={c.width}, zdim={c.zdim}, layers={self.num_layers}, "
                f"encoder_blocks={len(self.encoder.enc_blocks)}")
