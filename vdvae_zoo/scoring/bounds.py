"""What a VDVAE's likelihood computes, as values: the per-image terms of a bound (LikelihoodResult), a layer's
posterior (LayerLatents), and the importance-weighted bound over several posterior draws. model.py runs the
network; this module turns its per-layer outputs into these. Units: nats per dim unless a name says bits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..compute.batching import MicroBatch, image_seed, seeded_draws
from ..nn.network import LayerOutput

__all__ = ["LikelihoodResult", "LayerLatents", "log_prior_over_posterior", "importance_weighted", "joined_result"]


@dataclass
class LikelihoodResult:
    """Per-image likelihood terms (CPU float32 tensors). Units: nats per dim (divided by H * W * 3) unless
    the name says bits; `kl` is in nats, summed over each layer's latent, shape (N, L).

    `keep` says which bound this is: None, the ELBO; n, the bound whose decoder layers n..L-1 (the lowest, at the
    highest resolutions) came from their conditional prior instead of the posterior, so that their KL is 0 here
    (Havtorn et al.'s L^{>k} with k = L - n; see `VDVAE.likelihood`)."""

    neg_elbo: torch.Tensor  # (N,) negative ELBO = distortion + rate, nats per dim (the paper's reported number)
    distortion: torch.Tensor  # (N,) -log p(x | z), nats per dim
    rate: torch.Tensor  # (N,) sum of the layers' KL, nats per dim
    kl: torch.Tensor  # (N, L) KL of each decoder layer, nats
    bpd_iw: torch.Tensor | None = None  # (N,) importance-weighted bound, bits per dim (n_samples > 1)
    keep: int | None = None

    @property
    def bpd(self) -> torch.Tensor:
        """Negative ELBO (or the bound `keep` names) in bits per dim, (N,)."""
        return self.neg_elbo / math.log(2)

    @property
    def distortion_bpd(self) -> torch.Tensor:
        return self.distortion / math.log(2)

    @property
    def rate_bpd(self) -> torch.Tensor:
        return self.rate / math.log(2)


@dataclass
class LayerLatents:
    """One decoder layer's posterior for a batch of images: the sample `z` the decoder used, the posterior
    `mean` and standard deviation `std` (given the samples of the layers above), each (N, zdim, r, r), float32."""

    z: torch.Tensor
    mean: torch.Tensor
    std: torch.Tensor


def log_prior_over_posterior(out: LayerOutput) -> torch.Tensor:
    """log p(z) - log q(z | x) of one layer's posterior draw, summed per image in float64, (N,)."""
    if out.q_mean is None or out.q_logstd is None:
        raise ValueError(
            "log p(z) - log q(z | x) needs the layer's posterior: run the decoder with the encoder's activations"
        )
    z = out.z.float()
    log_p = -0.5 * ((z - out.p_mean) * torch.exp(-out.p_logstd)) ** 2 - out.p_logstd
    log_q = -0.5 * ((z - out.q_mean) * torch.exp(-out.q_logstd)) ** 2 - out.q_logstd
    return (log_p - log_q).double().sum(dim=(1, 2, 3))


def importance_weighted(
    model,
    activations: dict[int, torch.Tensor],
    target: torch.Tensor,
    k_total: int,
    draws_per_pass: int,
    generator: torch.Generator | None,
    seeds: Sequence[int] | None = None,
) -> dict[str, torch.Tensor]:
    """The terms averaged over `k_total` posterior draws, plus `bpd_iw` = -log (1/K) sum_k p(x, z_k)/q(z_k|x)
    in bits per dim, accumulated as a float64 log-sum-exp over passes of `draws_per_pass` draws."""
    b = target.shape[0]
    total: dict[str, torch.Tensor] = {}
    log_sum = None
    for k0 in range(0, k_total, draws_per_pass):
        k = min(draws_per_pass, k_total - k0)
        noise = None
        if seeds is not None:  # draw t of image j: its own generator
            normals = seeded_draws(
                [image_seed(seed, t) for t in range(k0, k0 + k) for seed in seeds],
                model.config,
                model.device,
                [True] * model.num_layers,
                pixels=False,
            )[0]
            noise = MicroBatch(slice(0, b * k), normals=normals).noise()
        terms = model._terms(
            {r: a.repeat(k, 1, 1, 1) for r, a in activations.items()},
            target.repeat(k, 1, 1, 1),
            b * k,
            generator,
            noise,
            log_weight=True,
        )
        lse = torch.logsumexp(terms.pop("log_weight").view(k, b), dim=0)
        log_sum = lse if log_sum is None else torch.logaddexp(log_sum, lse)
        for name, value in terms.items():
            value = value.view(k, b, *value.shape[1:]).double().sum(dim=0)
            total[name] = total[name] + value if name in total else value
    out = {name: (value / k_total).float() for name, value in total.items()}
    assert log_sum is not None  # k_total >= 1 draws were made
    log_mean_weight = log_sum - math.log(k_total)  # nats per image
    out["bpd_iw"] = (-log_mean_weight / (model.config.dims_per_image * math.log(2))).float()
    return out


def joined_result(parts: list[dict[str, torch.Tensor]], keep: int | None) -> LikelihoodResult:
    """One LikelihoodResult from the terms of each micro-batch (as `VDVAE._terms` names them)."""

    def joined(name: str) -> torch.Tensor:
        return torch.cat([p[name] for p in parts]).float().cpu()

    return LikelihoodResult(
        neg_elbo=joined("neg_elbo"),
        distortion=joined("distortion"),
        rate=joined("rate"),
        kl=joined("kl"),
        bpd_iw=joined("bpd_iw") if "bpd_iw" in parts[0] else None,
        keep=keep,
    )
