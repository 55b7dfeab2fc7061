"""The latent grid of a bits-back archive, and the arithmetic that explains what the coded path costs.

Layer i's latent takes values mu_p + sigma_p * delta * k, k in -K_i..K_i with K_i = ceil(span_i / delta): a grid in
units of the layer's prior standard deviation. `compress` chooses the grid per archive (a dry run of a few
candidates on the first images, docs/compress.md) and writes it into the header; the decoder reads it from there.

The breakdown of an image's latent bits compares what the coder spent with the *ideal* discretised code of the
same latents (each bucket's Gaussian mass, truncated to the grid or window and renormalised): the ideal code's
departure from the analytic KL is quantisation for latents whose posterior mean lies on the grid, and clipping for
those beyond it; `tails` is what the coder's floor changes (a bucket whose mass is below 2^-24 costs 24 bits, not
its Gaussian's), and the leak is the rest of the coder's departure from the ideal code (the mass its floor takes
from every other bucket, and rounding).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

WINDOW = 8.0  # a latent is popped from its posterior within mu_q +- WINDOW posterior standard deviations
PRECISION = 24  # bits of the coder's probabilities: every symbol of a support has at least 2^-24
MAX_BUCKETS = 2**18  # per side of a layer's grid: a header asking for more is refused (the coder's tables)


@dataclass(frozen=True)
class LatentGrid:
    """Bucket width `delta` (prior standard deviations) and the span of every layer's grid (its buckets cover
    mu_p +- span prior standard deviations): one number for all layers, or a tuple with one per layer."""

    delta: float = 2.0**-7
    span: float | tuple[float, ...] = 24.0
    windows: str = "per-latent"  # or "layer": format-2 archives popped a whole layer from its widest window

    def span_of(self, layer: int) -> float:
        return float(self.span[layer] if isinstance(self.span, tuple) else self.span)

    def buckets(self, layer: int) -> int:
        """K: the layer's buckets run from -K to K."""
        return int(math.ceil(self.span_of(layer) / self.delta))

    def describe(self) -> str:
        spans = sorted(set(self.span)) if isinstance(self.span, tuple) else [self.span]
        span = f"+-{spans[0]:g}" if len(spans) == 1 else f"+-{spans[0]:g} to +-{spans[-1]:g} (per layer)"
        return f"DELTA 2^{math.log2(self.delta):g} prior stds, span {span}"

    def as_option(self) -> str:
        """The grid as `--grid` takes it (one span for all layers), e.g. 2^-7:24."""
        return f"2^{math.log2(self.delta):g}:{self.span_of(0):g}"

    def to_header(self) -> dict[str, Any]:
        return {"delta": self.delta, "span": list(self.span) if isinstance(self.span, tuple) else self.span}

    def window_groups(self, std: np.ndarray, k_max: int) -> list[tuple[np.ndarray, int]]:
        """Which latents of a layer are popped together, and the half-width (buckets) of their window: each
        latent's +-WINDOW posterior stds (`std` in buckets) rounded up to a power of two, one group per width, so
        that a narrow posterior far out on the grid is not truncated by a wide one elsewhere in its layer."""
        need = np.minimum(np.ceil(WINDOW * std) + 1, k_max)
        if self.windows == "layer":
            return [(np.arange(std.size), int(need.max()))]
        widths = np.minimum(2.0 ** np.ceil(np.log2(need)), k_max).astype(np.int64)
        return [(np.flatnonzero(widths == w), int(w)) for w in np.unique(widths)]

    @classmethod
    def from_header(cls, header: dict[str, Any], layers: int, windows: str = "per-latent") -> LatentGrid:
        """The grid an archive names; ValueError (with the field) when it is not one this coder can use."""
        delta, span = header.get("delta"), header.get("span")
        if not isinstance(delta, (int, float)) or not _number(delta) or not 2.0**-16 <= delta <= 1.0:
            raise ValueError(f"the archive's header field 'delta' must be a number in [2^-16, 1], got {delta!r:.60}")
        spans = span if isinstance(span, list) else [span]
        if isinstance(span, list) and len(span) != layers:
            raise ValueError(f"the archive's header gives {len(span)} spans; this model has {layers} latent layers")
        if not all(isinstance(s, (int, float)) and _number(s) and 0 < s and s / delta <= MAX_BUCKETS for s in spans):
            raise ValueError(
                f"the archive's header field 'span' must be positive numbers of at most {MAX_BUCKETS} "
                f"buckets, got {str(span)[:60]}"
            )
        numbers = [float(s) for s in spans if isinstance(s, (int, float))]
        return cls(float(delta), tuple(numbers) if isinstance(span, list) else numbers[0], windows)


def parse_grid(text: str) -> str | LatentGrid:
    """'auto', 'default', or 'DELTA:SPAN' with DELTA a number or a power of two written 2^-7 (prior stds)."""
    if text in ("auto", "default"):
        return text
    try:
        delta_text, span_text = text.split(":")
        delta = 2.0 ** float(delta_text[2:]) if delta_text.startswith("2^") else float(delta_text)
        grid = LatentGrid.from_header({"delta": delta, "span": float(span_text)}, 1)
    except (ValueError, OverflowError) as e:  # 2^5000 overflows before the range is checked
        detail = str(e).replace("the archive's header field", "its") if "header" in str(e) else "not DELTA:SPAN"
        raise ValueError(f"--grid {text!r}: use auto, default or DELTA:SPAN such as 2^-7:24 ({detail})") from None
    return grid


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


DEFAULT_GRID = LatentGrid()


def candidate_grids(fitted_spans: Sequence[float]) -> list[LatentGrid]:
    """What the dry run tries: the default first; the default's DELTA with each layer's span fitted to the first
    images' posteriors (when some reach beyond the default span), and with a narrow span of +-8 (clipping far
    posteriors can cost less than coding them: the coder then charges at most PRECISION bits per latent); and a
    coarser and a finer DELTA, with the spans that cover the posteriors seen."""
    fitted = tuple(max(DEFAULT_GRID.span_of(0), s) for s in fitted_spans)
    covering = fitted if any(s > DEFAULT_GRID.span_of(0) for s in fitted) else DEFAULT_GRID.span
    grids = [DEFAULT_GRID] + ([LatentGrid(DEFAULT_GRID.delta, covering)] if covering != DEFAULT_GRID.span else [])
    grids += [LatentGrid(DEFAULT_GRID.delta, 8.0)]
    grids += [LatentGrid(delta, covering) for delta in (2.0**-5, 2.0**-9)]
    return grids


def fitted_span(offsets: np.ndarray) -> float:
    """A layer's span that holds every posterior seen (`offsets`: |mu_q - mu_p| / sigma_p plus the window, in prior
    standard deviations) with a quarter to spare, rounded up to a power of two."""
    reach = float(np.max(offsets)) * 1.25 if offsets.size else 0.0
    return float(2.0 ** math.ceil(math.log2(max(reach, 1.0))))


# ----------------------------------------------------------------------------------------- the ideal code
def _log_mass(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """log of a standard normal's mass between lo < hi, accurate far in either tail."""
    flip = lo > 0  # the mass of [lo, hi] equals that of [-hi, -lo]: keep the interval on the left or across 0
    lo, hi = np.where(flip, -hi, lo), np.where(flip, -lo, hi)
    lo_t, hi_t = torch.from_numpy(lo), torch.from_numpy(hi)
    log_lo, log_hi = torch.special.log_ndtr(lo_t), torch.special.log_ndtr(hi_t)
    left = log_hi + torch.log1p(-torch.exp(torch.clamp(log_lo - log_hi, max=0.0)).clamp(max=1 - 1e-16))
    across = torch.log1p(-(torch.special.ndtr(lo_t) + torch.special.ndtr(-hi_t)))
    return torch.where(hi_t <= 0, left, across).numpy()


def ideal_bits(k: np.ndarray, mean: np.ndarray, std: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """-log2 of the probability of integer bucket k under a Gaussian (mean, std; in bucket units) quantised to the
    integers low..high and renormalised over them."""
    mass = _log_mass((k - 0.5 - mean) / std, (k + 0.5 - mean) / std)
    total = _log_mass((low - 0.5 - mean) / std, (high + 0.5 - mean) / std)
    return (total - mass) / math.log(2)


def latent_breakdown(coded_bits: float, layers: Sequence[tuple[Any, np.ndarray]]) -> dict[str, Any]:
    """Where the latents' coded bits (`coded_bits` = pushed - popped) differ from their analytic KL. `layers`:
    (the layer's _Latents, its coded buckets k) in order. Returns bits that add up to coded_bits - KL:
    quantisation (on-grid latents: ideal code - KL), clipping (latents whose posterior mean lies beyond the grid:
    ideal code - KL), tails (the coder's floor: ideal code capped at PRECISION bits per symbol - ideal code), leak
    (coded - the capped ideal code); and `clipped`, how many latents were beyond the grid."""
    quantisation = clipping = ideal = capped = 0.0
    clipped = 0
    for grid, k in layers:
        mean, std = grid.posterior
        width, centres = grid.windows()
        prior = ideal_bits(
            k,
            np.zeros(k.size),
            np.full(k.size, 1.0 / grid.delta),
            np.full(k.size, -grid.k_max),
            np.full(k.size, grid.k_max),
        )
        posterior = ideal_bits(k, mean, std, centres - width, centres + width)
        cost = prior - posterior
        outside = np.abs(mean) > grid.k_max
        ideal += float(cost.sum())
        capped += float((np.minimum(prior, PRECISION) - np.minimum(posterior, PRECISION)).sum())
        quantisation += float((cost - grid.kl_per_latent)[~outside].sum())
        clipping += float((cost - grid.kl_per_latent)[outside].sum())
        clipped += int(outside.sum())
    return {
        "quantisation": quantisation,
        "clipping": clipping,
        "tails": capped - ideal,
        "leak": coded_bits - capped,
        "clipped": clipped,
    }
