"""Lossless image compression with bits-back coding (BB-ANS, Townsend et al. 2019; HiLLoC for hierarchies).

A likelihood in bits per dim is the promise of a file size; this keeps it. For each image, top-down through the
decoder's layers: compute the layer's prior and posterior, *pop* the latent z_i from the ANS stack under the
discretised posterior, and give the decoder that value; then *push* the pixels under p(x | z) (R, then G given R,
then B given R and G: exactly the model's mixture of logistics), and push z_L .. z_1 under their discretised
priors. The net cost is about the negative ELBO. Decompression runs the same steps backwards.

- Discretisation: layer i's latent takes values mu_p + sigma_p * DELTA * k, k in -K..K (a grid in units of the
  prior's standard deviation), so prior and posterior are quantised Gaussians over the same buckets.
- Determinism: both sides must compute bit-identical probabilities. The model runs in float64 on the CPU, one
  thread, one image at a time, and every distribution parameter is rounded to a grid of 2^-24 before it becomes
  a probability. A fingerprint of the model's rounded outputs on fixed probes is stored in the archive; a machine
  that computes differently refuses to decode (it never returns wrong pixels).
- Initial bits: popping an image's latents needs bits to pop (measured: the pop cost of the first image, by a
  dry run). The first images of an archive are stored as lossless WebP until their bytes cover that cost; those
  bytes are the bits the next image's latents are popped from, and they come back, unchanged, at the end of
  decoding. With too few images to pay for that, everything is stored as WebP.
- Container: magic, format version, a deflated JSON header (model, fingerprint, versions, image size, the
  names unless they are the default numbering), each image's CRC32 (4 bytes), the ANS words, and a CRC32 of
  the whole; a damaged or truncated archive is a clear error.

Needs the optional `constriction` (`pip install "vdvae-zoo[compress]"`).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import math
import struct
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from ._version import __version__
from .dmol import dmol_level_probs

__all__ = ["compress", "decompress", "ArchiveError", "CompressReport", "MAGIC", "DELTA"]

MAGIC, FORMAT_VERSION = b"VDZ\x01", 1
DELTA = 2.0 ** -9      # bucket width, in prior standard deviations (chosen by measurement: docs/compress.md)
SPAN = 24.0           # buckets cover mu_p +- SPAN prior standard deviations
GRID = 2.0 ** -24     # distribution parameters are rounded to this before they become probabilities


class ArchiveError(ValueError):
    """A damaged archive, or one this machine cannot decode exactly."""


@dataclass
class CompressReport:
    """What `compress` measured: sizes in bits per dim (bits / (images x H x W x 3)) unless the name says bytes."""

    images: int
    archive_bytes: int
    bits_per_dim: float                 # the whole archive
    webp_images: int                    # the first images, stored as lossless WebP (the initial bits)
    webp_bytes: int
    net_bits_per_dim: List[float]       # each later image: what it added to the stack
    seconds_per_image: float
    extra: Dict[str, Any] = field(default_factory=dict)


def _constriction():
    try:
        import constriction
    except ImportError:
        raise ImportError('compress needs the optional coder: pip install "vdvae-zoo[compress]" (constriction)') from None
    return constriction


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


class _Latents:
    """The bucket grid of one layer: from the layer's (rounded) prior, the value of bucket k and the quantised
    Gaussians of prior and posterior in bucket units."""

    def __init__(self, layer):
        self.shape = tuple(layer.p_mean.shape)
        self.mu = _grid(layer.p_mean)
        self.sigma = np.exp(_grid(layer.p_logstd))
        self.posterior = None
        if layer.q_mean is not None:
            step = self.sigma * DELTA
            self.posterior = ((_grid(layer.q_mean) - self.mu) / step, np.exp(_grid(layer.q_logstd)) / step)

    def value(self, k: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.mu + self.sigma * DELTA * k).view(self.shape)


def _probe_fingerprint(model) -> str:
    """sha256 of the rounded outputs of `model` (exact mode) on fixed probes: the prior path with z = the prior
    mean, and the posterior path for a mid-grey image."""
    digest = hashlib.sha256()
    grey = torch.full((1, model.config.image_size, model.config.image_size, 3), 128, dtype=torch.uint8)

    def prior_mean(i, layer):
        grid = _Latents(layer)
        digest.update(grid.mu.tobytes() + grid.sigma.tobytes())
        return grid.value(np.zeros(grid.mu.size))

    def posterior_mean(i, layer):
        grid = _Latents(layer)
        digest.update(grid.posterior[0].tobytes() + grid.posterior[1].tobytes())
        return grid.value(np.clip(np.round(grid.posterior[0]), -_span(), _span()))

    for params in (model.decode_with(prior_mean), model.decode_with(posterior_mean, images=grey)):
        digest.update(_grid(params).tobytes())
    return digest.hexdigest()


def _span() -> int:
    return int(math.ceil(SPAN / DELTA))


def _targets(levels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(levels.astype(np.float64) / 127.5 - 1.0)


def _push_image(ans, model, image: np.ndarray, c) -> None:
    """Pop the latents of `image` (uint8 H x W x 3) under their posteriors, push the pixels, push the latents
    under their priors."""
    gauss = c.stream.model.QuantizedGaussian(-_span(), _span())
    categorical = c.stream.model.Categorical(perfect=False)
    popped: List[np.ndarray] = []

    def choose(i, layer):
        grid = _Latents(layer)
        k = ans.decode(gauss, *grid.posterior)
        popped.append(k)
        return grid.value(k)

    params = model.decode_with(choose, images=torch.from_numpy(image[None]))
    targets = _targets(image[None])
    for channel in (2, 1, 0):  # the decoder pops R first
        probs = dmol_level_probs(params, model.config.num_mixtures, channel, targets[..., :channel])
        ans.encode_reverse(image[..., channel].ravel().astype(np.int32), categorical,
                           np.round(probs.reshape(-1, 256).numpy() / GRID) * GRID)
    for k in reversed(popped):  # the decoder pops z_1 first
        ans.encode_reverse(k, gauss, np.zeros(k.size), np.full(k.size, 1.0 / DELTA))


def _pop_image(ans, model, c) -> np.ndarray:
    gauss = c.stream.model.QuantizedGaussian(-_span(), _span())
    categorical = c.stream.model.Categorical(perfect=False)
    ks: List[np.ndarray] = []

    def from_prior(i, layer):
        grid = _Latents(layer)
        k = ans.decode(gauss, np.zeros(grid.mu.size), np.full(grid.mu.size, 1.0 / DELTA))
        ks.append(k)
        return grid.value(k)

    params = model.decode_with(from_prior)
    size = model.config.image_size
    levels = np.zeros((1, size, size, 3), dtype=np.uint8)
    for channel in range(3):
        probs = dmol_level_probs(params, model.config.num_mixtures, channel, _targets(levels)[..., :channel])
        levels[..., channel] = ans.decode(categorical, np.round(probs.reshape(-1, 256).numpy() / GRID) * GRID
                                          ).reshape(1, size, size)
    posteriors: List[Tuple[np.ndarray, np.ndarray]] = []

    def known(i, layer):
        grid = _Latents(layer)
        posteriors.append(grid.posterior)
        return grid.value(ks[i])

    model.decode_with(known, images=torch.from_numpy(levels))
    for k, posterior in reversed(list(zip(ks, posteriors))):  # give back the bits the encoder popped
        ans.encode_reverse(k, gauss, *posterior)
    return levels[0]


def _webp(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="WEBP", lossless=True, quality=100, method=6)
    return buf.getvalue()


def _versions() -> Dict[str, str]:
    return {"vdvae_zoo": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "constriction": getattr(_constriction(), "__version__", "?")}


def compress(model, images: Sequence[np.ndarray], names: Optional[Sequence[str]] = None, *,
             model_name: str = "", model_sha256: str = "") -> Tuple[bytes, CompressReport]:
    """Losslessly compress uint8 (H, W, 3) images of the model's size into one archive (bytes). Returns the
    archive and a report. `model_name` / `model_sha256` are recorded so that `decompress` can name and check the
    model it needs."""
    c = _constriction()
    images = [np.array(im, dtype=np.uint8, order="C") for im in images]  # own, writable copies
    size = model.config.image_size
    for i, im in enumerate(images):
        if im.shape != (size, size, 3):
            raise ValueError(f"image {i} ({names[i] if names else i}) is {im.shape}; this model codes {size}x{size}x3")
    if not images:
        raise ValueError("no images to compress")
    if model.config.low_bit:
        raise ValueError("this model's likelihood is over 5-bit pixels (low_bit): it cannot code 8-bit images "
                         "losslessly")
    names = list(names) if names is not None else _default_names(len(images))
    start = time.perf_counter()
    dims = size * size * 3
    with _exact(model) as exact:
        fingerprint = _probe_fingerprint(exact)
        need = _pop_cost(exact, images[0], c)
        webps: List[bytes] = []
        while len(webps) < len(images) and 8 * sum(map(len, webps)) < need:
            webps.append(_webp(images[len(webps)]))
        prefix = b"".join(webps)
        ans = c.stream.stack.AnsCoder(np.frombuffer(prefix + b"\0" * (-len(prefix) % 4), dtype="<u4").astype(np.uint32),
                                      seal=True)
        net = []
        for image in images[len(webps):]:
            before = ans.num_bits()
            _push_image(ans, exact, image, c)
            net.append((ans.num_bits() - before) / dims)
    payload = ans.get_compressed().astype("<u4").tobytes()
    header = {"model": model_name, "model_sha256": model_sha256, "fingerprint": fingerprint, "versions": _versions(),
              "delta": DELTA, "span": SPAN, "grid": GRID, "webp_lengths": [len(w) for w in webps], "image_size": size,
              "count": len(images), "names": None if names == _default_names(len(images)) else names}
    crcs = np.array([zlib.crc32(im.tobytes()) for im in images], dtype="<u4").tobytes()
    archive = _pack(header, crcs + payload)
    report = CompressReport(images=len(images), archive_bytes=len(archive), bits_per_dim=8 * len(archive) /
                            (dims * len(images)), webp_images=len(webps), webp_bytes=len(prefix),
                            net_bits_per_dim=net, seconds_per_image=(time.perf_counter() - start) / len(images),
                            extra={"pop_bits_first_image": need})
    return archive, report


def _pop_cost(model, image: np.ndarray, c) -> float:
    """Bits that popping `image`'s latents takes from the stack (a dry run on a coder full of random bits)."""
    ans = c.stream.stack.AnsCoder(np.random.default_rng(0).integers(0, 2 ** 32, 1 << 20, dtype=np.uint32), seal=True)
    before = ans.num_bits()
    gauss = c.stream.model.QuantizedGaussian(-_span(), _span())

    def choose(i, layer):
        grid = _Latents(layer)
        return grid.value(ans.decode(gauss, *grid.posterior))

    model.decode_with(choose, images=torch.from_numpy(image[None]))
    return float(before - ans.num_bits())


def _default_names(n: int) -> List[str]:
    return [f"{i:06d}.png" for i in range(n)]


def _pack(header: Dict[str, Any], payload: bytes) -> bytes:
    """The archive: `payload` is the images' CRC32s (4 bytes each) followed by the ANS words."""
    head = zlib.compress(json.dumps(header, sort_keys=True).encode(), 9)
    body = MAGIC + struct.pack("<HI", FORMAT_VERSION, len(head)) + head + struct.pack("<I", len(payload)) + payload
    return body + struct.pack("<I", zlib.crc32(body))


def read_header(archive: bytes) -> Tuple[Dict[str, Any], bytes]:
    """The header (with `names` filled in and `crc32`, one per image) and the ANS words of an archive, after
    checking its magic, version, lengths and CRC32."""
    if archive[:4] != MAGIC:
        raise ArchiveError("not a vdvae-zoo archive (wrong magic bytes)")
    if len(archive) < 14 or zlib.crc32(archive[:-4]) != struct.unpack("<I", archive[-4:])[0]:
        raise ArchiveError("the archive is damaged or truncated (its CRC32 does not match)")
    version, head_len = struct.unpack("<HI", archive[4:10])
    if version != FORMAT_VERSION:
        raise ArchiveError(f"archive format {version}; this vdvae-zoo reads format {FORMAT_VERSION}")
    header = json.loads(zlib.decompress(archive[10:10 + head_len]))
    (payload_len,) = struct.unpack("<I", archive[10 + head_len:14 + head_len])
    payload = archive[14 + head_len:14 + head_len + payload_len]
    if len(payload) != payload_len or len(payload) % 4 or len(payload) < 4 * header["count"]:
        raise ArchiveError("the archive is truncated (payload shorter than its header says)")
    n = header["count"]
    header["names"] = header["names"] or _default_names(n)
    header["crc32"] = np.frombuffer(payload[:4 * n], dtype="<u4").tolist()
    return header, payload[4 * n:]


def decompress(model, archive: bytes) -> Tuple[List[np.ndarray], List[str]]:
    """The images and names stored in `archive`, bit-exact. Raises ArchiveError when the archive is damaged or
    when this machine computes the model differently from the one that wrote it."""
    c = _constriction()
    header, payload = read_header(archive)
    if header["image_size"] != model.config.image_size:
        raise ArchiveError(f"the archive holds {header['image_size']}x{header['image_size']} images; this model codes "
                           f"{model.config.image_size}x{model.config.image_size}")
    if (header["delta"], header["span"], header["grid"]) != (DELTA, SPAN, GRID):
        raise ArchiveError("the archive was written with other discretisation settings; use the vdvae-zoo version "
                           f"that wrote it ({header['versions'].get('vdvae_zoo')})")
    ans = c.stream.stack.AnsCoder(np.frombuffer(payload, dtype="<u4").astype(np.uint32))
    names = header["names"]
    with _exact(model) as exact:
        if _probe_fingerprint(exact) != header["fingerprint"]:
            raise ArchiveError("this machine (or model) computes the model's probabilities differently from the one "
                               f"that wrote the archive ({header['model'] or 'model'} sha256 "
                               f"{header['model_sha256'][:12] or '?'}, {header['versions']}); decoding would give "
                               "wrong pixels, so it is refused")
        lengths = header["webp_lengths"]
        later = [_pop_image(ans, exact, c) for _ in names[len(lengths):]][::-1]
    prefix = ans.get_compressed(unseal=True).astype("<u4").tobytes()
    images, offset = [], 0
    try:
        for length in lengths:
            images.append(np.asarray(Image.open(io.BytesIO(prefix[offset:offset + length])).convert("RGB")))
            offset += length
    except OSError:
        raise ArchiveError("the archive's first images do not decode (damaged data)") from None
    images += later
    for name, crc, image in zip(names, header["crc32"], images):
        if zlib.crc32(np.ascontiguousarray(image).tobytes()) != crc:
            raise ArchiveError(f"{name} does not decode to the image that was stored (CRC32 mismatch)")
    return images, names
