"""The output head: p(x | z), the distribution of the pixels given the decoder's last activations, as a config
chooses it (`output="dmol"`: the paper's discretized mixture of logistics; `"bernoulli"`: one logit per
sub-pixel). The model, the coder and restoration call this one object; dmol.py holds the arithmetic."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..config import VDVAEConfig
from .dmol import (
    bernoulli_level_probs,
    bernoulli_mean_var,
    bernoulli_nll,
    bernoulli_sample,
    dmol_level_probs,
    dmol_mean_var,
    dmol_nll,
    dmol_sample,
    mixture_channels,
    pixel_uniform_shapes,
)

__all__ = ["OutputHead", "output_channels"]


def output_channels(config: VDVAEConfig) -> int:
    """Channels of the output distribution's parameters: 10 * num_mixtures for RGB (dmol.mixture_channels), one
    logit per channel for a Bernoulli output."""
    if config.output == "bernoulli":
        return config.image_channels
    return mixture_channels(config.num_mixtures, config.image_channels)


class OutputHead:
    """p(x | z) for `config`, given the parameters (N, output_channels, H, W) the decoder's last convolution makes."""

    def __init__(self, config: VDVAEConfig) -> None:
        self.config = config
        self.bernoulli = config.output == "bernoulli"

    @property
    def channels(self) -> int:
        return output_channels(self.config)

    def nll(self, params: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """-log p(x | z) of the preprocessed target (N, H, W, C), in nats per dim, (N,)."""
        if self.bernoulli:
            return bernoulli_nll(params, target)
        return dmol_nll(params, target, self.config.num_mixtures, self.config.low_bit)

    def mean_var(self, params: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of each sub-pixel, in pixel units / 255 ([0, 1]), float32 (N, H, W, C) each
        (restoration's x-step uses them as a Gaussian decoder)."""
        c = self.config
        mean, var = (
            bernoulli_mean_var(params) if self.bernoulli else dmol_mean_var(params, c.num_mixtures, c.image_channels)
        )
        return (mean + 1) / 2, var / 4

    def sample(
        self,
        params: torch.Tensor,
        generator: torch.Generator | None = None,
        same_noise: bool = False,
        uniforms: Sequence[torch.Tensor] | None = None,
        exact: bool = False,
    ) -> torch.Tensor:
        """uint8 (N, H, W, C) pixels drawn from the distribution (its uniforms: `uniform_shapes`); `exact`: see
        dmol_sample (a Bernoulli draw is exact either way)."""
        if self.bernoulli:
            return bernoulli_sample(params, generator, same_noise, uniforms)
        channels = self.config.image_channels
        return dmol_sample(params, self.config.num_mixtures, generator, same_noise, uniforms, channels, exact=exact)

    def uniform_shapes(self, n: int) -> list[tuple[int, ...]]:
        """The shapes of the uniforms `sample` draws for n images, in the order it draws them."""
        c = self.config
        return pixel_uniform_shapes(n, c.image_size, c.image_size, c.num_mixtures, c.image_channels, c.output)

    def level_probs(self, params: torch.Tensor, channel: int, earlier: torch.Tensor) -> torch.Tensor:
        """P(level) of every sub-pixel of `channel` (..., 256) given the earlier channels' values in [-1, 1]."""
        if self.bernoulli:
            return bernoulli_level_probs(params, channel)
        return dmol_level_probs(params, self.config.num_mixtures, channel, earlier, channels=self.config.image_channels)
