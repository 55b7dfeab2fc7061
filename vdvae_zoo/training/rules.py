"""The trainer's rules for one update, stated once: which updates are skipped (a fixed gradient-norm threshold, or
`auto`: outliers of the recent norms), the training objective (the negative ELBO, or with a KL warm-up and free
bits), and when a latent unit counts as active. All losses in nats per dim."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

__all__ = [
    "SkipRule",
    "kl_weight",
    "objective",
    "active_units",
    "AUTO_SKIP_WINDOW",
    "AUTO_SKIP_QUANTILE",
    "AUTO_SKIP_FACTOR",
    "AUTO_SKIP_MIN_HISTORY",
    "ACTIVE_UNIT_VARIANCE",
]

#: --skip-threshold auto: skip an update whose gradient norm is above FACTOR x the QUANTILE of the last WINDOW finite
#: norms (skipped ones included, so the rule follows norms that grow), once MIN_HISTORY of them are known.
AUTO_SKIP_WINDOW, AUTO_SKIP_QUANTILE, AUTO_SKIP_FACTOR, AUTO_SKIP_MIN_HISTORY = 100, 0.9, 3.0, 20
#: A latent unit is active when its posterior mean varies across validation images by more than this (variance).
ACTIVE_UNIT_VARIANCE = 0.01


class SkipRule:
    """Whether an update is skipped for its gradient norm. `threshold`: a number (<= 0: never on the norm) or
    "auto"; `history`: auto's window of recent finite norms (saved with the checkpoint, so a resume continues it).
    A non-finite norm is always skipped."""

    def __init__(self, threshold: float | str, history: Sequence[float] = ()):
        self.threshold = threshold
        self.history: list[float] = [float(v) for v in history if isinstance(v, (int, float))]

    def too_big(self, grad_norm: float) -> bool:
        if not math.isfinite(grad_norm):
            return True
        if not isinstance(self.threshold, str):
            return self.threshold > 0 and grad_norm >= self.threshold
        window = self.history[-AUTO_SKIP_WINDOW:]
        outlier = len(window) >= AUTO_SKIP_MIN_HISTORY and grad_norm > AUTO_SKIP_FACTOR * float(
            np.quantile(window, AUTO_SKIP_QUANTILE)
        )
        self.history = window[-(AUTO_SKIP_WINDOW - 1) :] + [grad_norm]
        return outlier


def kl_weight(step: int, warmup: int) -> float:
    """The KL term's weight at iteration `step` (0-based): step / warmup, up to 1 (1 without warm-up)."""
    return 1.0 if warmup <= 0 else min(1.0, step / warmup)


def objective(out: dict[str, torch.Tensor], weight: float, free_bits: float, dims: int) -> torch.Tensor:
    """The training loss per image, nats per dim: the negative ELBO (no warm-up, no free bits), else
    distortion + weight * (the layers' KL, each at least `free_bits` nats: `out["kl_free"]`) / dims."""
    if weight == 1.0 and free_bits <= 0:
        return out["neg_elbo"]
    kl = out["kl_free"] if free_bits > 0 else out["kl"]
    return out["distortion"] + weight * kl.sum(dim=1) / dims


def active_units(layers) -> list[int]:
    """Per decoder layer (encode(stats=True)'s LayerLatents of several images), the units whose posterior mean's
    variance across the images exceeds ACTIVE_UNIT_VARIANCE (Burda et al.'s measure; a collapsed layer has 0)."""
    return [int((layer.mean.var(dim=0) > ACTIVE_UNIT_VARIANCE).sum()) for layer in layers]
