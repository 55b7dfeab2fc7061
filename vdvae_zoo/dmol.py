"""The discretized mixture of logistics (PixelCNN++ style), the output distribution of VDVAE.

Parameters come as a float tensor (N, H, W, 10 * M) in NHWC, M = number of mixture components:
the first M channels are mixture logits; the remaining 9M reshape to (3, 3M): for each colour
channel M means, M log-scales and M raw coefficients. Colour channels are autoregressive inside a
pixel: mean_G += c0 * x_R, mean_B += c1 * x_R + c2 * x_G.

Everything here is computed in float32 whatever the dtype of the network that made the parameters.
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .draws import uniform

__all__ = ["dmol_nll", "dmol_sample", "dmol_level_probs", "pixel_uniform_shapes", "MIN_LOG_SCALE"]

MIN_LOG_SCALE = -7.0


def _unpack(params: torch.Tensor, num_mixtures: int):
    n, h, w, c = params.shape
    if c != 10 * num_mixtures:
        raise ValueError(f"expected {10 * num_mixtures} parameter channels for {num_mixtures} mixtures, got {c}")
    logits = params[..., :num_mixtures]
    rest = params[..., num_mixtures:].reshape(n, h, w, 3, 3 * num_mixtures)
    means = rest[..., :num_mixtures]
    log_scales = rest[..., num_mixtures:2 * num_mixtures].clamp(min=MIN_LOG_SCALE)
    coeffs = torch.tanh(rest[..., 2 * num_mixtures:])
    return logits, means, log_scales, coeffs


def dmol_nll(params: torch.Tensor, target: torch.Tensor, num_mixtures: int, low_bit: bool = False) -> torch.Tensor:
    """Negative log-likelihood of `target` (N, H, W, 3) in [-1, 1], in **nats per dim**, shape (N,).

    Each sub-pixel's probability is the logistic mass of its bin (half-width 1/255, or 1/31 for 5-bit
    targets when `low_bit`), with open bins at the edges (x < -0.999, x > 0.999) and, in the far tail
    where the mass is below 1e-5, the density at the bin centre times the bin width.
    """
    with torch.autocast(params.device.type, enabled=False):
        return _dmol_nll(params.float(), target.float(), num_mixtures, low_bit)


def _dmol_nll(params: torch.Tensor, target: torch.Tensor, num_mixtures: int, low_bit: bool) -> torch.Tensor:
    logits, means, log_scales, coeffs = _unpack(params, num_mixtures)
    x = target.unsqueeze(-1)  # (N, H, W, 3, 1), broadcast over mixtures
    mean_r = means[..., 0, :]
    mean_g = means[..., 1, :] + coeffs[..., 0, :] * x[..., 0, :]
    mean_b = means[..., 2, :] + coeffs[..., 1, :] * x[..., 0, :] + coeffs[..., 2, :] * x[..., 1, :]
    means = torch.stack([mean_r, mean_g, mean_b], dim=3)

    half_bin = 1.0 / 31.0 if low_bit else 1.0 / 255.0
    log_bin_centre_norm = math.log(15.5) if low_bit else math.log(127.5)
    centred = x - means
    inv_scale = torch.exp(-log_scales)
    plus = inv_scale * (centred + half_bin)
    minus = inv_scale * (centred - half_bin)
    cdf_delta = torch.sigmoid(plus) - torch.sigmoid(minus)
    log_cdf_plus = plus - F.softplus(plus)            # left edge: P(X <= x + h)
    log_one_minus_cdf_minus = -F.softplus(minus)      # right edge: P(X > x - h)
    mid = inv_scale * centred
    log_pdf_mid = mid - log_scales - 2.0 * F.softplus(mid)

    log_probs = torch.where(
        x < -0.999, log_cdf_plus,
        torch.where(x > 0.999, log_one_minus_cdf_minus,
                    torch.where(cdf_delta > 1e-5, torch.log(cdf_delta.clamp(min=1e-12)),
                                log_pdf_mid - log_bin_centre_norm)))
    log_probs = log_probs.sum(dim=3) + torch.log_softmax(logits, dim=-1)  # (N, H, W, M)
    log_prob_per_pixel = torch.logsumexp(log_probs, dim=-1)
    dims = target.shape[1] * target.shape[2] * target.shape[3]
    return -log_prob_per_pixel.sum(dim=(1, 2)) / dims


def pixel_uniform_shapes(n: int, h: int, w: int, num_mixtures: int) -> List[Tuple[int, ...]]:
    """Shapes of the uniform draws of `dmol_sample`, in the order it draws them."""
    return [(n, h, w, num_mixtures), (n, h, w, 3)]


def dmol_sample(params: torch.Tensor, num_mixtures: int, generator: Optional[torch.Generator] = None,
                same_noise: bool = False, uniforms: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
    """Draw one image per parameter map; returns uint8 (N, H, W, 3) pixels.

    Random draws, in order: a uniform (N, H, W, M) picks the component (Gumbel-max), then a uniform
    (N, H, W, 3) samples the logistic. Values are clamped to [-1, 1], mapped by (x + 1) * 127.5 and
    truncated (not rounded) to uint8, as the original does. With `same_noise` every image of the batch uses
    the draws of the first (interpolation paths use it so that only the parameters vary along the path).
    `uniforms`, when given, are the two uniform tensors already drawn (see `pixel_uniform_shapes`).
    """
    params = params.float()
    n, h, w, _ = params.shape
    logits, means, log_scales, coeffs = _unpack(params, num_mixtures)
    draws = 1 if same_noise else n
    if uniforms is None:
        uniforms = [uniform(shape, params.device, generator) for shape in pixel_uniform_shapes(draws, h, w, num_mixtures)]
    gumbel_u = uniforms[0].expand(n, -1, -1, -1)
    component = torch.argmax(logits - torch.log(-torch.log(gumbel_u)), dim=3)  # (N, H, W)
    index = component[:, :, :, None, None].expand(n, h, w, 3, 1)
    mean = means.gather(4, index).squeeze(4)
    log_scale = log_scales.gather(4, index).squeeze(4)
    coeff = coeffs.gather(4, index).squeeze(4)
    u = uniforms[1].expand(n, -1, -1, -1)
    x = mean + torch.exp(log_scale) * (torch.log(u) - torch.log(1.0 - u))
    red = x[..., 0].clamp(-1.0, 1.0)
    green = (x[..., 1] + coeff[..., 0] * red).clamp(-1.0, 1.0)
    blue = (x[..., 2] + coeff[..., 1] * red + coeff[..., 2] * green).clamp(-1.0, 1.0)
    rgb = torch.stack([red, green, blue], dim=3)
    return ((rgb + 1.0) * 127.5).clamp(0.0, 255.0).to(torch.uint8)


def _log_bin_probs(value: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(level = value) of each component, float64: the logistic mass of the bin of half-width 1/255 around
    `value` in [-1, 1] (open at the two end levels), computed in log space so that far tails stay finite (and
    floored at e^-700, so that no component's weight becomes 0 / 0)."""
    inv_scale = torch.exp(-log_scale)
    upper = inv_scale * (value + 1.0 / 255.0 - mean)
    lower = inv_scale * (value - 1.0 / 255.0 - mean)
    # log(sigmoid(u) - sigmoid(l)), in whichever tail keeps the terms away from 1
    left = F.logsigmoid(upper) + torch.log1p(-torch.exp(F.logsigmoid(lower) - F.logsigmoid(upper)))
    right = F.logsigmoid(-lower) + torch.log1p(-torch.exp(F.logsigmoid(-upper) - F.logsigmoid(-lower)))
    middle = torch.where(upper + lower < 0, left, right)
    edges = torch.where(value < -0.999, F.logsigmoid(upper), torch.where(value > 0.999, F.logsigmoid(-lower), middle))
    return edges.clamp(min=-700.0)


def dmol_level_probs(params: torch.Tensor, num_mixtures: int, channel: int,
                     earlier: Optional[torch.Tensor] = None) -> torch.Tensor:
    """P(x_c = level k | z, the earlier channels) for the 256 levels of colour channel `channel` (0 R, 1 G, 2 B),
    float64 (N, H, W, 256): the same mixture as `dmol_nll`, each level a bin of half-width 1/255 around
    k / 127.5 - 1, the two end bins open. `earlier`: the values in [-1, 1] of the channels before it, (N, H, W, c).

    The product over the three channels is exactly the mixture p(x | z): a component's weight for channel c is
    its prior weight times the probability it gave the earlier channels, renormalised (what a lossless coder must
    code each sub-pixel with; compress.py)."""
    logits, means, log_scales, coeffs = _unpack(params.double(), num_mixtures)

    def channel_mean(c: int) -> torch.Tensor:
        mean = means[..., c, :]
        if c >= 1:
            mean = mean + coeffs[..., c - 1, :] * earlier[..., 0:1]
        if c == 2:
            mean = mean + coeffs[..., 2, :] * earlier[..., 1:2]
        return mean

    log_weights = torch.log_softmax(logits, dim=-1)                                   # (N, H, W, M)
    for c in range(channel):  # the components that explained the earlier channels weigh more
        log_weights = log_weights + _log_bin_probs(earlier[..., c:c + 1], channel_mean(c), log_scales[..., c, :])
    weights = torch.softmax(log_weights, dim=-1)[..., None, :]                          # (N, H, W, 1, M)
    mean = channel_mean(channel)
    inv_scale = torch.exp(-log_scales[..., channel, :])                              # (N, H, W, M)
    upper = torch.arange(255, dtype=torch.float64, device=params.device) / 127.5 - 1.0 + 1.0 / 255.0
    cdf = torch.sigmoid(inv_scale[..., None, :] * (upper[:, None] - mean[..., None, :]))  # (N, H, W, 255, M)
    zeros, ones = torch.zeros_like(cdf[..., :1, :]), torch.ones_like(cdf[..., :1, :])
    bins = torch.diff(torch.cat([zeros, cdf, ones], dim=-2), dim=-2)                 # (N, H, W, 256, M)
    return (bins * weights).sum(-1)
