"""The mechanics of bits-back coding with a VDVAE (compress.py is the archive around it): the latent grid's
buckets, the whitened ANS stack, and the coding of one image, either with bits-back or as lossless WebP.
docs/compress.md explains and measures each choice; the names are private to the two modules.

- Layer i's latent takes values mu_p + sigma_p * delta * k, k in -K_i..K_i (coding_grid.LatentGrid, chosen per
  archive): prior and posterior are quantised Gaussians over the same buckets; the posterior is popped within
  mu_q +- WINDOW posterior stds.
- The model runs in float64 on the CPU, one thread, and every distribution parameter is rounded to GRID before
  it becomes a probability, so that both sides compute bit-identical probabilities.
- Before image j pops, the top words of the stack are whitened (stack.py).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from ..nn.head import OutputHead
from .grid import DEFAULT_GRID, WINDOW, LatentGrid, latent_breakdown
from .stack import KEY, Stack

GRID = 2.0**-24  # distribution parameters are rounded to this before they become probabilities


class ArchiveError(ValueError):
    """A damaged archive, or one this machine cannot decode exactly."""


class _Reject(Exception):
    """This image cannot be coded with bits-back here (why: the message); it is stored as WebP instead."""


@dataclass
class ImageRecord:
    """How one image was coded, in bits (divide by H x W x 3 for bits per dim). For bits-back images: `popped`
    bits taken from the stack for the latents, `pixels` pushed for the pixels, `pushed` for the latents under their
    priors; `net` = pixels + pushed - popped is what the image added to the archive. `kl` and `distortion` are the
    analytic KL of the coded draw's layers and -log2 p(x | z) at it: their sum is the ELBO of that draw, and
    net - (kl + distortion) = (pixels - distortion) + quantisation + clipping + tails + leak exactly, where the last
    four split the latents' pushed - popped - kl (coding_grid.latent_breakdown; `clipped` latents lay beyond the
    grid).
    For stored images: `net` = the WebP bits, and `reason`."""

    name: str
    mode: str  # "bits-back" or "webp"
    net: float
    popped: float = 0.0
    pixels: float = 0.0
    pushed: float = 0.0
    kl: float = 0.0
    distortion: float = 0.0
    reason: str = ""
    quantisation: float = 0.0
    clipping: float = 0.0
    tails: float = 0.0
    leak: float = 0.0
    clipped: int = 0

    @property
    def excess(self) -> dict[str, float]:
        """Bits above the ELBO of the coded draw, by cause (they add up to net - kl - distortion)."""
        return {
            "pixels": self.pixels - self.distortion,
            "quantisation": self.quantisation,
            "clipping": self.clipping,
            "tails": self.tails,
            "leak": self.leak,
        }


def _constriction():
    try:
        import constriction
    except ImportError:
        raise ImportError(
            'compress needs the optional coder: pip install "vdvae-zoo[compress]" (constriction)'
        ) from None
    return constriction


def require_coder() -> None:
    """Raise ImportError with the install command when the optional coder is missing (call before any work)."""
    _constriction()


def _coder_call(fn: Callable, *args):
    """Call the coder; its Rust panics (BaseException, not Exception) become _Reject, never reach the caller."""
    try:
        return fn(*args)
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as e:  # noqa: BLE001 - pyo3's PanicException derives from BaseException
        raise _Reject(
            f"the coder refused it ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"
        ) from None


@contextlib.contextmanager
def _exact(model):
    """A float64, CPU, single-threaded copy of the model (the user's model is left as it is)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exact = copy.deepcopy(model).to(device="cpu", dtype=torch.float64).eval()
        exact.optimize(dtype="float32", channels_last=False, compile=False)
        yield exact
    finally:
        torch.set_num_threads(threads)


def _grid(t: torch.Tensor) -> np.ndarray:
    return np.round(t.detach().to(torch.float64).cpu().numpy().ravel() / GRID) * GRID


def _finite(*arrays: np.ndarray) -> bool:
    return all(bool(np.isfinite(a).all()) for a in arrays)


class _Latents:
    """The buckets of layer i under `grid`: from the layer's (rounded) prior, the value of bucket k and the
    quantised Gaussians of prior and posterior in bucket units. Raises _Reject when a parameter is not finite."""

    def __init__(self, layer, grid: LatentGrid, i: int):
        self.shape = tuple(layer.p_mean.shape)
        self.grid, self.delta, self.k_max = grid, grid.delta, grid.buckets(i)
        self.mu = _grid(layer.p_mean)
        self.sigma = np.exp(_grid(layer.p_logstd))
        if not (_finite(self.mu, self.sigma) and (self.sigma > 0).all()):
            raise _Reject("its prior is not finite")
        self.posterior: tuple[np.ndarray, np.ndarray] | None = None
        if layer.q_mean is not None:
            step = self.sigma * self.delta
            q_mean, q_std = _grid(layer.q_mean), np.exp(_grid(layer.q_logstd))
            self.posterior = ((q_mean - self.mu) / step, q_std / step)
            if not (_finite(*self.posterior) and (self.posterior[1] > 0).all()):
                raise _Reject("its posterior is not finite")
            self.kl_per_latent = (
                np.log(self.sigma / q_std) + (q_std**2 + (q_mean - self.mu) ** 2) / (2 * self.sigma**2) - 0.5
            ) / math.log(2)
            self.kl_bits = float(np.sum(self.kl_per_latent))

    def _posterior(self) -> tuple[np.ndarray, np.ndarray]:
        if self.posterior is None:  # a layer built while decoding has none: only the prior is coded there
            raise RuntimeError("this layer's posterior was not computed (no image was given)")
        return self.posterior

    def value(self, k: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.mu + self.sigma * self.delta * k).view(self.shape)

    def prior_model(self, c):
        return c.stream.model.QuantizedGaussian(-self.k_max, self.k_max)

    def push_prior(self, coder, k: np.ndarray, c) -> None:
        _coder_call(coder.encode_reverse, k, self.prior_model(c), np.zeros(k.size), np.full(k.size, 1.0 / self.delta))

    def pop_prior(self, coder, c) -> np.ndarray:
        return _coder_call(
            coder.decode, self.prior_model(c), np.zeros(self.mu.size), np.full(self.mu.size, 1.0 / self.delta)
        )

    def windows(self) -> tuple[np.ndarray, np.ndarray]:
        """Each latent's window half-width and centre (buckets): the posterior is popped from
        centre +- width, which lies inside the grid (coding_grid.LatentGrid.window_groups)."""
        return self._windows()[1:]

    def _windows(self) -> tuple[list[tuple[np.ndarray, int]], np.ndarray, np.ndarray]:
        if not hasattr(self, "_plan"):
            mean, std = self._posterior()
            groups = self.grid.window_groups(std, self.k_max)
            width = np.zeros(mean.size, np.int64)
            for idx, w in groups:
                width[idx] = w
            centres = np.clip(np.round(mean), -self.k_max + width, self.k_max - width).astype(np.int64)
            self._plan = (groups, width, centres)
        return self._plan

    def reach(self) -> float:
        """How far from the prior the posterior's window reaches, in prior standard deviations (the largest)."""
        mean, std = self._posterior()
        return float(np.max(np.abs(mean) + WINDOW * std)) * self.delta

    def pop_posterior(self, coder, c) -> np.ndarray:
        """Pop the layer's buckets under its posterior, group by group of window widths. The coder gives every
        symbol of its support a little mass (it must code any of them); a window of +-WINDOW posterior stds keeps
        that mass next to the posterior instead of spread over the whole grid, where a popped latent would land far
        in the tails."""
        mean, std = self._posterior()
        groups, _, centres = self._windows()
        k = np.empty(mean.size, np.int64)
        for idx, w in groups:
            k[idx] = (
                _coder_call(coder.decode, c.stream.model.QuantizedGaussian(-w, w), mean[idx] - centres[idx], std[idx])
                + centres[idx]
            )
        return k.astype(np.int32)

    def push_posterior(self, coder, k: np.ndarray, c) -> None:
        """The inverse of pop_posterior (the decoder gives back the bits the encoder popped)."""
        mean, std = self._posterior()
        groups, _, centres = self._windows()
        for idx, w in reversed(groups):
            _coder_call(
                coder.encode_reverse,
                (k[idx] - centres[idx]).astype(np.int32),
                c.stream.model.QuantizedGaussian(-w, w),
                mean[idx] - centres[idx],
                std[idx],
            )


def _models(c):
    """The pixels' and the stored images' models (the latents' depend on the layer: _Latents)."""
    return c.stream.model.Categorical(perfect=False), c.stream.model.Uniform(2**16)


def _pixel_probs(params: torch.Tensor, config, channel: int, levels: np.ndarray) -> np.ndarray:
    """P(level) of every sub-pixel of `channel` given the earlier channels' `levels`, rounded to the coder's grid."""
    earlier = torch.from_numpy(levels[..., :channel].astype(np.float64) / 127.5 - 1.0)
    exact = OutputHead(config).level_probs(params, channel, earlier)
    probs = np.round(exact.reshape(-1, 256).numpy() / GRID) * GRID
    if not _finite(probs) or (probs.sum(axis=1) <= 0).any():
        raise _Reject("its pixel probabilities are not finite")
    return probs


def _probe_fingerprint(model, windows: str = DEFAULT_GRID.windows) -> str:
    """sha256 of the rounded outputs of `model` (exact mode) on fixed probes: the prior path with z = the prior
    mean, and the posterior path for a mid-grey image (z = its windows' centres on the default grid)."""
    probe_grid = LatentGrid(windows=windows)
    digest = hashlib.sha256()
    grey = torch.full(
        (1, model.config.image_size, model.config.image_size, model.config.image_channels), 128, dtype=torch.uint8
    )

    def prior_mean(i, layer):
        grid = _Latents(layer, DEFAULT_GRID, i)
        digest.update(grid.mu.tobytes() + grid.sigma.tobytes())
        return grid.value(np.zeros(grid.mu.size))

    def posterior_mean(i, layer):
        grid = _Latents(layer, probe_grid, i)
        digest.update(grid.posterior[0].tobytes() + grid.posterior[1].tobytes())
        return grid.value(grid.windows()[1])

    try:
        for params in (model.decode_with(prior_mean), model.decode_with(posterior_mean, images=grey)):
            digest.update(_grid(params).tobytes())
    except _Reject as e:
        digest.update(f"not finite: {e}".encode())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------- one image each
def _encode_bits_back(
    stack: Stack,
    model,
    image: np.ndarray,
    j: int,
    whiten_words: int,
    c,
    name: str,
    grid: LatentGrid = DEFAULT_GRID,
    layers_seen: list | None = None,
) -> ImageRecord:
    """Code `image` with bits-back onto `stack` (image number j) on `grid`; raises _Reject (the stack then
    unchanged). Each layer's buckets are appended to `layers_seen` when given."""
    categorical, _ = _models(c)
    snapshot = stack.words()
    try:
        whitened = stack.whiten(j, whiten_words)
        start = stack.coder.num_bits()
        popped, grids = [], []

        def choose(i, layer):
            buckets = _Latents(layer, grid, i)
            k = buckets.pop_posterior(stack.coder, c)
            popped.append(k)
            grids.append(buckets)
            if layers_seen is not None:
                layers_seen.append(buckets)
            return buckets.value(k)

        params = model.decode_with(choose, images=torch.from_numpy(image[None].copy()))
        popped_bits = start - stack.coder.num_bits()
        if popped_bits > 32 * whitened:
            raise _Reject(f"its latents pop {popped_bits:,} bits; the stack held {32 * whitened:,} to pop from")
        if not _finite(_grid(params)):
            raise _Reject("its output distribution is not finite")
        levels = image[None]
        after_pops = stack.coder.num_bits()
        for channel in reversed(range(model.config.image_channels)):  # the decoder pops the first channel first
            _coder_call(
                stack.coder.encode_reverse,
                image[..., channel].ravel().astype(np.int32),
                categorical,
                _pixel_probs(params, model.config, channel, levels),
            )
        after_pixels = stack.coder.num_bits()
        for buckets, k in reversed(list(zip(grids, popped, strict=False))):  # the decoder pops z_1 first
            buckets.push_prior(stack.coder, k, c)
    except _Reject:
        stack.restore(snapshot)
        raise
    target = torch.from_numpy(image[None].astype(np.float64) / 127.5 - 1.0)
    distortion = float(model.head.nll(params, target)) * image.size / math.log(2)
    pixels, pushed = after_pixels - after_pops, stack.coder.num_bits() - after_pixels
    kl = sum(g.kl_bits for g in grids)
    return ImageRecord(
        name,
        "bits-back",
        pixels + pushed - popped_bits,
        popped_bits,
        pixels,
        pushed,
        kl,
        distortion,
        **latent_breakdown(pushed - popped_bits, list(zip(grids, popped, strict=False))),
    )


def _encode_webp(stack: Stack, webp: bytes, c) -> None:
    symbols = np.frombuffer(webp + b"\0" * (len(webp) % 2), dtype="<u2").astype(np.int32)
    stack.coder.encode_reverse(symbols, _models(c)[1])


def _decode_webp(stack: Stack, nbytes: int, c, name: str, channels: int = 3) -> np.ndarray:
    count = (nbytes + 1) // 2
    stack.refill(count // 2 + 2 * stack.reserve)
    symbols = _coder_call(stack.coder.decode, _models(c)[1], count)
    try:
        data = symbols.astype("<u2").tobytes()[:nbytes]
        with Image.open(io.BytesIO(data)) as img:
            return _from_webp(img, channels)
    except (OSError, ValueError):
        raise ArchiveError(f"{name}: its stored WebP does not decode (damaged data)") from None


def _decode_bits_back(
    stack: Stack, model, j: int, whiten_words: int, push_words: int, c, grid: LatentGrid = DEFAULT_GRID
) -> np.ndarray:
    categorical, _ = _models(c)
    stack.refill(push_words + whiten_words + 64)
    ks: list[np.ndarray] = []

    def from_prior(i, layer):
        buckets = _Latents(layer, grid, i)
        k = buckets.pop_prior(stack.coder, c)
        ks.append(k)
        return buckets.value(k)

    params = model.decode_with(from_prior)
    size = model.config.image_size
    levels = np.zeros((1, size, size, model.config.image_channels), dtype=np.uint8)
    for channel in range(model.config.image_channels):
        probs = _pixel_probs(params, model.config, channel, levels)
        levels[..., channel] = _coder_call(stack.coder.decode, categorical, probs).reshape(1, size, size)
    layers: list[_Latents] = []

    def known(i, layer):
        layers.append(_Latents(layer, grid, i))
        return layers[-1].value(ks[i])

    model.decode_with(known, images=torch.from_numpy(levels))
    for k, buckets in reversed(list(zip(ks, layers, strict=False))):  # the bits the encoder popped
        buckets.push_posterior(stack.coder, k, c)
    stack.whiten(j, whiten_words, undo=True)
    return levels[0]


def _webp(image: np.ndarray) -> bytes:
    """Lossless WebP of uint8 (H, W, C): grey as RGB, grey + alpha as RGBA, alpha kept exactly (`exact`)."""
    channels = image.shape[2]
    if channels <= 2:  # WebP holds RGB(A): grey goes in all three
        image = np.concatenate([np.repeat(image[..., :1], 3, axis=2), image[..., 1:]], axis=2)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="WEBP", lossless=True, quality=100, method=6, exact=True)
    return buf.getvalue()


def _from_webp(img: Image.Image, channels: int) -> np.ndarray:
    """The inverse of `_webp` for an image of `channels` channels."""
    rgba = np.asarray(img.convert("RGBA"))
    return rgba[..., {1: [0], 2: [0, 3], 3: [0, 1, 2], 4: [0, 1, 2, 3]}[channels]].copy()


def dry_run(model, image: np.ndarray, j: int, grid: LatentGrid, c) -> tuple[ImageRecord, list[float]]:
    """Code `image` (number j) on `grid` onto a stack of random words seeded by (KEY, j, 1) and thrown away: what it
    would cost (its record) and how far each layer's posterior reached (prior stds, for fitting spans). The same
    words for every grid, so that candidates are compared on common random bits (enough for the finest grid a
    header may name: log2(2^16) + 24 bits per latent)."""
    latents = sum(model.config.zdim * r * r for r in model.layer_resolutions)
    words = int(math.ceil(latents * 40 / 32)) + 1024
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([KEY, j, 1])))
    stack = Stack(c, words, rng.integers(0, 2**32, words + 2, dtype=np.uint32))
    seen: list[_Latents] = []
    record = _encode_bits_back(stack, model, image, j, words, c, f"dry run {j}", grid, seen)
    return record, [buckets.reach() for buckets in seen]


def whiten_words(model, pops: Sequence[float], grid: LatentGrid) -> int:
    """Words to whiten before each image: 1.5 x the most bits the dry run's images popped, and never fewer than
    log2(1 / delta) + 3 bits per latent."""
    latents = sum(model.config.zdim * r * r for r in model.layer_resolutions)
    floor = (math.log2(1 / grid.delta) + 3) * latents
    return int(math.ceil(max(1.5 * max(pops, default=floor), floor) / 32))
