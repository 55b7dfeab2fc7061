"""The mechanics of bits-back coding with a VDVAE (compress.py is the archive around it): the latent grid, the
whitened ANS stack, and the coding of one image, either with bits-back or as lossless WebP. docs/compress.md
explains and measures each choice; the names are private to the two modules.

- Layer i's latent takes values mu_p + sigma_p * DELTA * k, k in -K..K: prior and posterior are quantised
  Gaussians over the same buckets; the posterior is popped within mu_q +- WINDOW posterior stds.
- The model runs in float64 on the CPU, one thread, and every distribution parameter is rounded to GRID before
  it becomes a probability, so that both sides compute bit-identical probabilities.
- Before image j pops, the top words of the stack are XORed with a keystream seeded by (KEY, j).
- Only the top of the stack is in the coder; the words below it never change again and are kept aside.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import math
from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from .dmol import bernoulli_level_probs, dmol_level_probs

DELTA = 2.0 ** -7      # bucket width, in prior standard deviations (chosen by measurement: docs/compress.md)
SPAN = 24.0           # buckets cover mu_p +- SPAN prior standard deviations
WINDOW = 8.0          # a latent is popped from its posterior within mu_q +- WINDOW posterior standard deviations
GRID = 2.0 ** -24     # distribution parameters are rounded to this before they become probabilities
KEY = 0x56445A31      # the whitening keystream's key ("VDZ1")


class ArchiveError(ValueError):
    """A damaged archive, or one this machine cannot decode exactly."""


class _Reject(Exception):
    """This image cannot be coded with bits-back here (why: the message); it is stored as WebP instead."""


@dataclass
class ImageRecord:
    """How one image was coded, in bits (divide by H x W x 3 for bits per dim). For bits-back images: `popped`
    bits taken from the stack for the latents, `pixels` pushed for the pixels, `pushed` for the latents under their
    priors; `net` = pixels + pushed - popped is what the image added to the archive. `kl` and `distortion` are the
    analytic KL of the coded draw's layers and -log2 p(x | z) at it: net is close to their sum (the ELBO of that
    draw). For stored images: `net` = the WebP bits, and `reason`."""

    name: str
    mode: str                 # "bits-back" or "webp"
    net: float
    popped: float = 0.0
    pixels: float = 0.0
    pushed: float = 0.0
    kl: float = 0.0
    distortion: float = 0.0
    reason: str = ""


def _constriction():
    try:
        import constriction
    except ImportError:
        raise ImportError('compress needs the optional coder: pip install "vdvae-zoo[compress]" (constriction)') from None
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
        raise _Reject(f"the coder refused it ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"
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
    """The bucket grid of one layer: from the layer's (rounded) prior, the value of bucket k and the quantised
    Gaussians of prior and posterior in bucket units. Raises _Reject when a parameter is not finite."""

    def __init__(self, layer):
        self.shape = tuple(layer.p_mean.shape)
        self.mu = _grid(layer.p_mean)
        self.sigma = np.exp(_grid(layer.p_logstd))
        if not (_finite(self.mu, self.sigma) and (self.sigma > 0).all()):
            raise _Reject("its prior is not finite")
        self.posterior = None
        if layer.q_mean is not None:
            step = self.sigma * DELTA
            q_mean, q_std = _grid(layer.q_mean), np.exp(_grid(layer.q_logstd))
            self.posterior = ((q_mean - self.mu) / step, q_std / step)
            if not (_finite(*self.posterior) and (self.posterior[1] > 0).all()):
                raise _Reject("its posterior is not finite")
            self.kl_bits = float(np.sum(np.log(self.sigma / q_std) + (q_std ** 2 + (q_mean - self.mu) ** 2)
                                        / (2 * self.sigma ** 2) - 0.5) / math.log(2))

    def value(self, k: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.mu + self.sigma * DELTA * k).view(self.shape)

    def posterior_window(self, c) -> Tuple[Any, np.ndarray, np.ndarray, np.ndarray]:
        """How the posterior is coded: (a quantised Gaussian on -S..S, means and stds relative to each latent's
        window centre, the centres). The coder gives every symbol of its support a little mass (it must code
        any of them); a window of +-WINDOW posterior stds keeps that mass next to the posterior instead of
        spread over the whole grid, where a popped latent would land far in the tails."""
        mean, std = self.posterior
        k_max = _span()
        width = int(min(math.ceil(WINDOW * float(std.max())) + 1, k_max))
        centres = np.clip(np.round(mean), -k_max + width, k_max - width)
        return c.stream.model.QuantizedGaussian(-width, width), mean - centres, std, centres.astype(np.int64)


def _span() -> int:
    return int(math.ceil(SPAN / DELTA))


def _models(c):
    return (c.stream.model.QuantizedGaussian(-_span(), _span()), c.stream.model.Categorical(perfect=False),
            c.stream.model.Uniform(2 ** 16))


def _pixel_probs(params: torch.Tensor, config, channel: int, levels: np.ndarray) -> np.ndarray:
    """P(level) of every sub-pixel of `channel` given the earlier channels' `levels`, rounded to the coder's grid."""
    if config.output == "bernoulli":
        exact = bernoulli_level_probs(params, channel)
    else:
        earlier = torch.from_numpy(levels[..., :channel].astype(np.float64) / 127.5 - 1.0)
        exact = dmol_level_probs(params, config.num_mixtures, channel, earlier, channels=config.image_channels)
    probs = np.round(exact.reshape(-1, 256).numpy() / GRID) * GRID
    if not _finite(probs) or (probs.sum(axis=1) <= 0).any():
        raise _Reject("its pixel probabilities are not finite")
    return probs


def _probe_fingerprint(model) -> str:
    """sha256 of the rounded outputs of `model` (exact mode) on fixed probes: the prior path with z = the prior
    mean, and the posterior path for a mid-grey image."""
    digest = hashlib.sha256()
    grey = torch.full((1, model.config.image_size, model.config.image_size, model.config.image_channels), 128,
                      dtype=torch.uint8)

    def prior_mean(i, layer):
        grid = _Latents(layer)
        digest.update(grid.mu.tobytes() + grid.sigma.tobytes())
        return grid.value(np.zeros(grid.mu.size))

    def posterior_mean(i, layer):
        grid = _Latents(layer)
        digest.update(grid.posterior[0].tobytes() + grid.posterior[1].tobytes())
        return grid.value(grid.posterior_window(_constriction())[3])

    try:
        for params in (model.decode_with(prior_mean), model.decode_with(posterior_mean, images=grey)):
            digest.update(_grid(params).tobytes())
    except _Reject as e:
        digest.update(f"not finite: {e}".encode())
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------------ the stack
def _keystream(j: int, n: int) -> np.ndarray:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([KEY, j]))).integers(
        0, 2 ** 32, n, dtype=np.uint32)


class _Stack:
    """The ANS stack, of which only the top (the live coder, a few times `reserve` words) is in the coder; the
    words below it never change again and are kept aside (`frozen`), so no operation costs more as it grows."""

    def __init__(self, c, reserve: int, words: Optional[np.ndarray] = None):
        self.c, self.reserve = c, max(int(reserve), 64)
        words = np.zeros(0, np.uint32) if words is None else words
        cut = max(0, len(words) - 4 * self.reserve)
        self.frozen: List[np.ndarray] = [words[:cut]] if cut else []
        self.frozen_words = cut
        self.coder = c.stream.stack.AnsCoder(words[cut:].copy()) if len(words) else c.stream.stack.AnsCoder()

    def words(self) -> np.ndarray:
        """The live coder's words (a copy)."""
        return self.coder.get_compressed().astype(np.uint32)

    def restore(self, words: np.ndarray) -> None:
        self.coder = self.c.stream.stack.AnsCoder(words.copy()) if len(words) else self.c.stream.stack.AnsCoder()

    def total_words(self) -> int:
        return self.frozen_words + len(self.words())

    def whiten(self, j: int, w: int) -> int:
        """XOR the `w` words below the top two (all of them, on a smaller stack) with image j's keystream (its own
        inverse); returns how many words that was."""
        n = max(0, min(w, self.total_words() - 2))
        self.refill(n + 2)
        words = self.words()
        if n:
            words[-(n + 2):-2] ^= _keystream(j, n)
            self.restore(words)
        return n

    def spill(self) -> None:
        """Keep at most 4 x reserve words in the coder (the encoder's stack only grows below the top)."""
        words = self.words()
        if len(words) > 4 * self.reserve:
            cut = len(words) - 2 * self.reserve
            self.frozen.append(words[:cut])
            self.frozen_words += cut
            self.restore(words[cut:])

    def refill(self, need: int) -> None:
        """Make sure the coder holds at least `need` words (or everything), taking them back from `frozen`."""
        words = self.words()
        if len(words) >= need or not self.frozen_words:
            return
        below = np.concatenate(self.frozen) if len(self.frozen) > 1 else self.frozen[0]
        take = min(len(below), max(need - len(words), 2 * self.reserve))
        self.frozen = [below[:len(below) - take]] if len(below) > take else []
        self.frozen_words = len(below) - take
        self.restore(np.concatenate([below[len(below) - take:], words]))

    def payload(self) -> np.ndarray:
        return np.concatenate(self.frozen + [self.words()]) if self.frozen else self.words()


# ------------------------------------------------------------------------------------------- one image each
def _encode_bits_back(stack: _Stack, model, image: np.ndarray, j: int, whiten_words: int, c, name: str) -> ImageRecord:
    """Code `image` with bits-back onto `stack` (image number j); raises _Reject (the stack then unchanged)."""
    gauss, categorical, _ = _models(c)
    snapshot = stack.words()
    try:
        whitened = stack.whiten(j, whiten_words)
        start = stack.coder.num_bits()
        popped, grids = [], []

        def choose(i, layer):
            grid = _Latents(layer)
            window, means, stds, centres = grid.posterior_window(c)
            k = (_coder_call(stack.coder.decode, window, means, stds) + centres).astype(np.int32)
            popped.append(k)
            grids.append(grid)
            return grid.value(k)

        params = model.decode_with(choose, images=torch.from_numpy(image[None].copy()))
        popped_bits = start - stack.coder.num_bits()
        if popped_bits > 32 * whitened:
            raise _Reject(f"its latents pop {popped_bits:,} bits; the stack held {32 * whitened:,} to pop from")
        if not _finite(_grid(params)):
            raise _Reject("its output distribution is not finite")
        levels = image[None]
        after_pops = stack.coder.num_bits()
        for channel in reversed(range(model.config.image_channels)):  # the decoder pops the first channel first
            _coder_call(stack.coder.encode_reverse, image[..., channel].ravel().astype(np.int32), categorical,
                        _pixel_probs(params, model.config, channel, levels))
        after_pixels = stack.coder.num_bits()
        for k in reversed(popped):  # the decoder pops z_1 first
            _coder_call(stack.coder.encode_reverse, k, gauss, np.zeros(k.size), np.full(k.size, 1.0 / DELTA))
    except _Reject:
        stack.restore(snapshot)
        raise
    target = torch.from_numpy(image[None].astype(np.float64) / 127.5 - 1.0)
    distortion = float(model.pixel_nll(params, target)) * image.size / math.log(2)
    pixels, pushed = after_pixels - after_pops, stack.coder.num_bits() - after_pixels
    return ImageRecord(name, "bits-back", pixels + pushed - popped_bits, popped_bits, pixels, pushed,
                       sum(g.kl_bits for g in grids), distortion)


def _encode_webp(stack: _Stack, webp: bytes, c) -> None:
    symbols = np.frombuffer(webp + b"\0" * (len(webp) % 2), dtype="<u2").astype(np.int32)
    stack.coder.encode_reverse(symbols, _models(c)[2])


def _decode_webp(stack: _Stack, nbytes: int, c, name: str, channels: int = 3) -> np.ndarray:
    count = (nbytes + 1) // 2
    stack.refill(count // 2 + 2 * stack.reserve)
    symbols = _coder_call(stack.coder.decode, _models(c)[2], count)
    try:
        data = symbols.astype("<u2").tobytes()[:nbytes]
        with Image.open(io.BytesIO(data)) as img:
            return _from_webp(img, channels)
    except (OSError, ValueError):
        raise ArchiveError(f"{name}: its stored WebP does not decode (damaged data)") from None


def _decode_bits_back(stack: _Stack, model, j: int, whiten_words: int, push_words: int, c) -> np.ndarray:
    gauss, categorical, _ = _models(c)
    stack.refill(push_words + whiten_words + 64)
    ks: List[np.ndarray] = []

    def from_prior(i, layer):
        grid = _Latents(layer)
        k = _coder_call(stack.coder.decode, gauss, np.zeros(grid.mu.size), np.full(grid.mu.size, 1.0 / DELTA))
        ks.append(k)
        return grid.value(k)

    params = model.decode_with(from_prior)
    size = model.config.image_size
    levels = np.zeros((1, size, size, model.config.image_channels), dtype=np.uint8)
    for channel in range(model.config.image_channels):
        probs = _pixel_probs(params, model.config, channel, levels)
        levels[..., channel] = _coder_call(stack.coder.decode, categorical, probs).reshape(1, size, size)
    windows: List[Tuple[Any, np.ndarray, np.ndarray, np.ndarray]] = []

    def known(i, layer):
        grid = _Latents(layer)
        windows.append(grid.posterior_window(c))
        return grid.value(ks[i])

    model.decode_with(known, images=torch.from_numpy(levels))
    for k, (window, means, stds, centres) in reversed(list(zip(ks, windows))):  # the bits the encoder popped
        _coder_call(stack.coder.encode_reverse, (k - centres).astype(np.int32), window, means, stds)
    stack.whiten(j, whiten_words)
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


def _pop_bits(model, image: np.ndarray, c) -> float:
    """Bits that popping `image`'s latents takes from a stack of random bits (a dry run)."""
    ans = c.stream.stack.AnsCoder(np.random.default_rng(0).integers(0, 2 ** 32, 1 << 22, dtype=np.uint32), seal=True)
    before = ans.num_bits()

    def choose(i, layer):
        grid = _Latents(layer)
        window, means, stds, centres = grid.posterior_window(c)
        return grid.value(_coder_call(ans.decode, window, means, stds) + centres)

    model.decode_with(choose, images=torch.from_numpy(image[None].copy()))
    return float(before - ans.num_bits())


def _whiten_words(model, images: Sequence[np.ndarray], c) -> Tuple[int, float]:
    """Words to whiten before each image: 1.5 x the most bits the first images pop (a dry run on up to 3 of
    them), and never fewer than log2(1 / DELTA) + 3 bits per latent; and the most bits they popped (no image is
    tried with bits-back before the stack holds that many)."""
    latents = sum(model.config.zdim * r * r for r in model.layer_resolutions)
    pops = []
    for image in images[:3]:
        try:
            pops.append(_pop_bits(model, image, c))
        except _Reject:
            continue
    most = max(pops, default=(math.log2(1 / DELTA) + 3) * latents)
    return int(math.ceil(max(1.5 * most, (math.log2(1 / DELTA) + 3) * latents) / 32)), most
