"""Restoration with the prior: inpainting, super-resolution and denoising with any VDVAE.

The method is PnP-HVAE (Prost, Houdard, Almansa and Papadakis, "Inverse Problem Regularization with Hierarchical
Variational Autoencoders", ICCV 2023; code: jprost76/PnP-HVAE). It maximises the joint posterior p(x, z | y) for an
observation y = A x + n, n ~ N(0, s^2),
by alternating two steps from x_0 (A^T y, filled in: below):

- z-step: one encoder pass on x_k; at each decoder layer l, z_l is the minimiser of
  -coupling * log q(z_l | z_<l, x_k) - (1 / T_l^2 - coupling) * log p(z_l | z_<l), the precision-weighted mean of
  the posterior and the prior means (`_latent_step`; T_l, layer l's temperature, weighs the prior: T < 1 trusts it
  more). Their configs use a linear schedule over the layers, top to bottom (`linear_temperatures`): 0.3 -> 0.8 for
  inpainting, 0.8 -> 0.5 for super-resolution;
- x-step: the decoder's output, taken as a Gaussian N(mu, v) per sub-pixel: mu the mixture's mean, and v either a
  constant `decoder_std`^2 (their released configs: 3/255 for inpainting, 5/255 for super-resolution and
  deblurring) or, with `decoder_std=None`, the mixture's own variance clamped to [0.004, 0.5] ([0, 1] units). Then
  x_{k+1} = argmin_x ||A x - y||^2 / (2 s^2) + coupling * ||x - mu||^2_{1/v} / 2, solved by conjugate gradients with
  the operator's `forward` and `adjoint` only (`_data_step`). An operator with noise s = 0 that can `project`
  (noiseless inpainting) keeps the observation exactly: x = project(mu, y), the s -> 0 limit.

With `samples` > 1 both steps sample (their 'sample' mode): each z-step draws z_l from the same product of
Gaussians, and each x-step draws x from the Gaussian p(x | z, y) by perturbation-optimisation (Papandreou and
Yuille 2010: perturb mu by N(0, v) and y by N(0, s^2), then solve the same system), so the samples' per-pixel
standard deviation is the spread of the Gaussian posterior approximation, x included. Image i draws from
`image_seed(seed, i)`, sample j of it from `image_seed(image_seed(seed, i), j)`: a result depends on the image, the
model, the seed and the options only.

The simpler alternative this model allows, `method="encode-decode"`: encode x_0, keep the top `keep` layers, draw
the rest at `temperature`, decode (and project onto the observation where the operator can). docs/restore.md
compares the two.

Operators work on float images (N, H, W, C) in [0, 1]: `forward(x)` is the degradation A, `adjoint(y)` its
transpose (<A x, y> = <x, A^T y>, tested); `project(x, y)`, where defined, replaces what y determines exactly
(the observed pixels of a noiseless inpainting, sigma = 0). Any object with these methods works: a blur or a
colourisation needs no change to the library.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from .compute.batching import image_seed, split_when_out_of_memory
from .nn.inputs import LinearTemperature, Temperature, temperature_record

__all__ = [
    "Operator",
    "Inpainting",
    "Downsampling",
    "Denoising",
    "restore",
    "RestoreResult",
    "linear_temperatures",
    "LinearTemperature",
    "psnr",
    "ssim",
    "METHODS",
]

METHODS = ("pnp-hvae", "encode-decode")
#: With decoder_std=None, the decoder's own variance per sub-pixel is clamped to this range ([0, 1] units).
VARIANCE_RANGE = (0.004, 0.5)
#: The defaults of an operator without its own `defaults`. Each operator's `defaults` are the settings that
#: restored best on the tuning images of benchmarks/restore_bench.py (docs/restore.md, "Measured"); PnP-HVAE's own
#: configs (a constant decoder_std of 3/255 or 5/255, schedules 0.3..0.8 and 0.8..0.5) were tried and lost there.
GENERIC_DEFAULTS: dict[str, Any] = {"temperature": 1.0, "decoder_std": None}


class Operator(Protocol):
    """A linear degradation of float images (N, H, W, C) in [0, 1]."""

    sigma: float  # the noise's standard deviation, in [0, 1] units

    def forward(self, x: torch.Tensor) -> torch.Tensor: ...
    def adjoint(self, y: torch.Tensor) -> torch.Tensor: ...


@dataclass
class Inpainting:
    """Keep the pixels where `mask` (H, W) is 1; the others are missing. The observed pixels carry Gaussian noise of
    standard deviation `sigma` ([0, 1] units); with sigma = 0 the result keeps every observed pixel exactly
    (`project`)."""

    mask: torch.Tensor
    sigma: float = 0.0
    defaults: ClassVar[dict[str, Any]] = {"temperature": LinearTemperature(0.8, 0.5), "decoder_std": None}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.mask[None, :, :, None]

    adjoint = forward  # a diagonal 0/1 operator is its own transpose

    def project(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return x_where(self.mask[None, :, :, None], y, x)

    def initial(self, y: torch.Tensor) -> torch.Tensor:
        """The missing pixels filled with the mean of the observed ones, per image and channel."""
        m = self.mask[None, :, :, None]
        fill = (y * m).sum(dim=(1, 2), keepdim=True) / m.sum().clamp_min(1)
        return x_where(m, y, fill.expand_as(y))


def x_where(observed: torch.Tensor, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """y where `observed` is 1, x elsewhere."""
    return x * (1 - observed) + y * observed


@dataclass
class Downsampling:
    """Average `factor` x `factor` blocks (super-resolution observes the small image)."""

    factor: int
    sigma: float = 1.0 / 255
    defaults: ClassVar[dict[str, Any]] = {"temperature": 1.0, "decoder_std": None}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x.permute(0, 3, 1, 2), self.factor).permute(0, 2, 3, 1)

    def adjoint(self, y: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(y.permute(0, 3, 1, 2), scale_factor=self.factor, mode="nearest") / self.factor**2
        return up.permute(0, 2, 3, 1)

    def initial(self, y: torch.Tensor) -> torch.Tensor:
        """Bicubic upsampling (the plain baseline)."""
        up = F.interpolate(y.permute(0, 3, 1, 2), scale_factor=self.factor, mode="bicubic", align_corners=False)
        return up.clamp(0, 1).permute(0, 2, 3, 1)


@dataclass
class Denoising:
    """The identity, with Gaussian noise of standard deviation `sigma` ([0, 1] units: a level of 25 on 0..255 is
    25 / 255)."""

    sigma: float
    defaults: ClassVar[dict[str, Any]] = {"temperature": 1.0, "decoder_std": None}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    adjoint = forward

    def initial(self, y: torch.Tensor) -> torch.Tensor:
        return y.clamp(0, 1)


@dataclass
class RestoreResult:
    """`images`: uint8 (N, H, W, C), the restoration (the mean of the samples when there are several); `std`:
    float (N, H, W, C), the samples' per-pixel standard deviation in [0, 1] units (None for one sample);
    `samples`: uint8 (N, S, H, W, C); `seconds_per_image`; `options`."""

    images: np.ndarray
    std: np.ndarray | None
    samples: np.ndarray
    seconds_per_image: float
    options: dict[str, Any] = field(default_factory=dict)


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


def linear_temperatures(model, top: float, bottom: float) -> list[float]:
    """One temperature per decoder layer of `model`, linear from `top` to `bottom` (LinearTemperature)."""
    return LinearTemperature(top, bottom).per_layer(model.num_layers)


def _latent_step(
    model,
    x: torch.Tensor,
    coupling: float,
    temperatures: list[float],
    decoder_std: float | None,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One encoder pass on x and a decoder pass whose z_l minimises -coupling log q - (1/T_l^2 - coupling) log p
    (or, with a generator, is drawn from that product of Gaussians). Returns the decoder's mean and variance (the
    constant decoder_std^2, or the mixture's own, clamped)."""

    def choose(i, layer):
        a, b = coupling, 1.0 / temperatures[i] ** 2 - coupling
        q_precision, p_precision = torch.exp(-2 * layer.q_logstd), torch.exp(-2 * layer.p_logstd)
        precision = a * q_precision + b * p_precision
        z = (a * q_precision * layer.q_mean + b * p_precision * layer.p_mean) / precision
        if generator is not None:
            z = z + torch.empty_like(z).normal_(generator=generator) / precision.sqrt()
        return z

    params = model.decode_with(choose, images=_to_uint8(x))
    mean, var = model.head.mean_var(params)
    var = torch.full_like(var, decoder_std**2) if decoder_std is not None else var.clamp(*VARIANCE_RANGE)
    return mean.cpu(), var.cpu()


def _data_step(
    operator,
    y: torch.Tensor,
    mu: torch.Tensor,
    var: torch.Tensor,
    coupling: float,
    start: torch.Tensor,
    generator: torch.Generator | None = None,
    iterations: int = 50,
) -> torch.Tensor:
    """argmin_x ||A x - y||^2 / (2 s^2) + coupling ||x - mu||^2_{1/var} / 2: the system
    (A^T A / s^2 + coupling / var) x = A^T y / s^2 + coupling mu / var, by conjugate gradients (float64). With a
    generator, a draw of that Gaussian instead: the same system with mu + N(0, var / coupling) and y + N(0, s^2)
    (perturbation-optimisation). With s = 0, the operator's projection of mu (or of its perturbation)."""
    s2 = float(operator.sigma) ** 2
    if generator is not None:
        mu = mu + torch.empty_like(mu).normal_(generator=generator) * (var / coupling).sqrt()
        if s2 > 0:
            y = y + torch.empty_like(y).normal_(generator=generator) * float(operator.sigma)
    if s2 == 0:
        return operator.project(mu, y)
    weight = (coupling / var).double()

    def apply(v):
        return operator.adjoint(operator.forward(v.float())).double() / s2 + weight * v

    rhs = operator.adjoint(y).double() / s2 + weight * mu.double()
    x = start.double()
    r = rhs - apply(x)
    p, rr = r.clone(), (r * r).sum()
    for _ in range(iterations):
        if rr.sqrt() <= 1e-7 * rhs.norm():
            break
        ap = apply(p)
        alpha = rr / (p * ap).sum()
        x, r = x + alpha * p, r - alpha * ap
        rr_new = (r * r).sum()
        p, rr = r + (rr_new / rr) * p, rr_new
    return x.float()


def task_defaults(operator) -> dict[str, Any]:
    """The defaults for `operator`'s kind of degradation (its `defaults` attribute; chosen by measurement:
    docs/restore.md), or the generic ones for an operator that has none."""
    return {**GENERIC_DEFAULTS, **getattr(operator, "defaults", {})}


def restore(
    model,
    y,
    operator,
    *,
    steps: int = 30,
    temperature: Temperature | None = None,
    coupling: float = 1.0,
    decoder_std: float | None | str = "auto",
    seed: int = 0,
    samples: int = 1,
    method: str = "pnp-hvae",
    keep: int | None = None,
) -> RestoreResult:
    """Restore the observations `y` (uint8 (N, h, w, C), or float in [0, 1]; for super-resolution the small images)
    degraded by `operator` (Inpainting, Downsampling, Denoising or any object with forward/adjoint/sigma), with
    `model` as the prior.

    `steps` iterations of PnP-HVAE. `temperature`: anything `model.layer_temperatures` takes (a number, one per
    decoder layer, a {resolution: t} schedule, a LinearTemperature(top, bottom)), each in (0, 1 / sqrt(coupling)];
    None: the task's default. `coupling`: the weight of the encoder's posterior against the decoder's Gaussian.
    `decoder_std`: the x-step's constant standard deviation of the decoder ([0, 1] units), None for the decoder's
    own variance, "auto" for the task's default.
    `samples` > 1 samples both steps and returns the mean and the per-pixel std of the samples.
    `method="encode-decode"`: the fast alternative (keep the top `keep` layers of x_0's posterior means, default
    half of them, decode at `temperature`)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    for name, value, low in (("steps", steps, 1), ("samples", samples, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if not (isinstance(coupling, (int, float)) and 0 < coupling < math.inf):
        raise ValueError(f"coupling must be a positive number, got {coupling!r}")
    defaults = task_defaults(operator)
    temperature = defaults["temperature"] if temperature is None else temperature
    decoder_std = defaults["decoder_std"] if decoder_std == "auto" else decoder_std
    if decoder_std is not None and not (isinstance(decoder_std, (int, float)) and 0 < decoder_std < math.inf):
        raise ValueError(f"decoder_std must be a positive number ([0, 1] units), None or 'auto', got {decoder_std!r}")
    temperatures = model.layer_temperatures(temperature)
    if method == "pnp-hvae":
        highest = 1 / math.sqrt(coupling)
        if not all(0 < t <= highest for t in temperatures):
            raise ValueError(
                f"temperature must be in (0, 1/sqrt(coupling)] = (0, {highest:.3g}] at every layer, got "
                f"{temperature}: the prior's weight 1/T^2 - coupling cannot be negative"
            )
    sigma = float(operator.sigma)
    if not (0 <= sigma < math.inf):
        raise ValueError(f"the operator's sigma must be a number >= 0, got {operator.sigma!r}")
    exact = sigma == 0
    if exact and not hasattr(operator, "project"):
        raise ValueError(f"{type(operator).__name__} with sigma = 0 needs a project method; give it a sigma > 0")
    y = torch.as_tensor(np.array(y))  # a copy: arrays people pass may be read-only (np.asarray of a PIL image)
    y = y.float() / 255 if y.dtype == torch.uint8 else y.float()
    if y.ndim == 3:
        y = y[None]
    start_time = time.perf_counter()
    initial = operator.initial(y) if hasattr(operator, "initial") else operator.adjoint(y).clamp(0, 1)
    size, channels = model.config.image_size, model.config.image_channels
    if initial.shape[1:] != (size, size, channels):
        raise ValueError(
            f"the observation gives images of {tuple(initial.shape[1:])}; this model restores {size}x{size}x{channels}"
        )
    results: list[torch.Tensor] = []

    def restore_one(i: int) -> torch.Tensor:
        per_sample = []
        for j in range(samples):
            generator = None if samples == 1 else torch.Generator().manual_seed(image_seed(image_seed(seed, i), j))
            x = initial[i : i + 1]
            if method == "encode-decode":
                k = model.num_layers // 2 if keep is None else keep
                latents = model.encode(_to_uint8(x), mean=True)[:k]
                if generator is None:
                    generator = torch.Generator().manual_seed(image_seed(seed, i))
                x = model.decode(latents, temperatures, n=1, generator=generator).float() / 255
                if exact:
                    x = operator.project(x, y[i : i + 1])
            else:
                for _ in range(steps):
                    mu, var = _latent_step(model, x, coupling, temperatures, decoder_std, generator)
                    x = _data_step(operator, y[i : i + 1], mu, var, coupling, start=x, generator=generator)
                    x = x.clamp(0, 1)
            per_sample.append(x[0])
        return torch.stack(per_sample)

    for i in range(y.shape[0]):  # one image per pass: running out of memory is the one sentence the others give
        results += split_when_out_of_memory(functools.partial(_one_pass, restore_one, i), 1, model.device, None)[0]
    stacked = torch.stack(results)  # (N, S, H, W, C) in [0, 1]
    mean = stacked.mean(dim=1)
    if exact:
        mean = operator.project(mean, y)
    return RestoreResult(
        images=_to_uint8(mean).numpy(),
        std=stacked.std(dim=1).numpy() if samples > 1 else None,
        samples=_to_uint8(stacked).numpy(),
        seconds_per_image=(time.perf_counter() - start_time) / y.shape[0],
        options=dict(
            method=method,
            steps=steps,
            temperature=temperature_record(temperature),
            coupling=coupling,
            decoder_std=decoder_std,
            seed=seed,
            samples=samples,
            keep=keep,
            sigma=sigma,
        ),
    )


def _one_pass(restore_one: Callable[[int], torch.Tensor], i: int, per_pass: int) -> list[torch.Tensor]:
    """Image i as the one pass `split_when_out_of_memory` runs (restoration works one image at a time)."""
    return [restore_one(i)]


# ------------------------------------------------------------------------------------------------- metrics
def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 images, in dB (peak 255)."""
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Structural similarity of two uint8 images (H, W, C) (Wang et al. 2004: Gaussian window 11, sigma 1.5,
    K1 0.01, K2 0.03, each channel, averaged)."""
    x = torch.as_tensor(np.asarray(a, np.float64)).permute(2, 0, 1)[:, None]
    y = torch.as_tensor(np.asarray(b, np.float64)).permute(2, 0, 1)[:, None]
    g = torch.exp(-((torch.arange(11, dtype=torch.float64) - 5) ** 2) / (2 * 1.5**2))
    window = (g[:, None] * g[None, :] / g.sum() ** 2)[None, None]
    size = min(11, x.shape[-1], x.shape[-2])
    window = window[..., (11 - size) // 2 : (11 - size) // 2 + size, (11 - size) // 2 : (11 - size) // 2 + size]
    window = window / window.sum()
    blur = lambda t: F.conv2d(t, window)  # noqa: E731
    mx, my = blur(x), blur(y)
    vx, vy, cov = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    s = ((2 * mx * my + c1) * (2 * cov + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return float(s.mean())


def operator_for(kind: str, value: Any, noise: float | None = None) -> Any:
    """The CLI's operators: ("mask", uint8/bool (H, W)), ("upscale", factor), ("denoise", sigma), with `noise` the
    observation's standard deviation for the first two (None: the operator's default); noise levels are on the
    0..255 scale."""
    sigma = {} if noise is None else {"sigma": float(noise) / 255}
    if kind == "mask":
        return Inpainting(torch.as_tensor(np.asarray(value), dtype=torch.float32), **sigma)
    if kind == "upscale":
        return Downsampling(int(value), **sigma)
    if kind == "denoise":
        return Denoising(float(value) / 255)
    raise ValueError(f"unknown degradation {kind!r}")
