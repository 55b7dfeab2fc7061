"""Lossless image compression with bits-back coding (BB-ANS, Townsend et al. 2019; HiLLoC for hierarchies).

A likelihood in bits per dim is the promise of a file size; this keeps it. For each image, top-down through the
decoder's layers: compute the layer's prior and posterior, *pop* the latent z_i from the ANS stack under the
discretised posterior, and give the decoder that value; then *push* the pixels under p(x | z) (R, then G given R,
then B given R and G: exactly the model's mixture of logistics, `dmol.dmol_level_probs`), and push z_L .. z_1
under their discretised priors. The net cost is the negative ELBO of the draw. Decompression runs the same steps
backwards. docs/compress.md has the measurements behind every choice here.

- Discretisation: layer i's latent takes values mu_p + sigma_p * delta * k, k in -K_i..K_i (a grid in units of the
  prior's standard deviation), so prior and posterior are quantised Gaussians over the same buckets. The grid
  (delta and each layer's span) is chosen per archive by a dry run of a few candidates on the first images
  (`choose_grid`), and the header records it. Each latent is popped from a window of +-8 posterior stds.
- Clean bits: the bits an image pops must look random. Before image j pops, the top `whiten_words` words of the
  stack and the coder's head are whitened with a keystream seeded by (KEY, j); the decoder undoes it once it has
  pushed image j's posterior bits back. Without it, image j would pop the latents image j-1 pushed under its prior
  (its first, most influential latents straight from the coder's head), or the structured bytes of stored images,
  and drift into the tails.
- Initial bits: an image is coded with bits-back only when its pops stay inside the whitened words (at most
  `whiten_words`, about 1.5 times what the first images pop in a dry run; fewer while the stack is smaller);
  otherwise it is stored as lossless WebP, pushed onto the stack as 16-bit symbols. The first images of an
  archive are stored so until the stack holds what an image pops: they are the initial bits.
- Never a crash, never a wrong file: an image whose distribution parameters are not finite, or that the coder
  refuses, is stored as WebP instead (flagged in the header); the decoder makes the same decision from the flags.
- Determinism: both sides must compute bit-identical probabilities. The model runs in float64 on the CPU, one
  thread, one image at a time, and every distribution parameter is rounded to a grid of 2^-24 before it becomes
  a probability. A fingerprint of the model's rounded outputs on fixed probes is stored in the archive; a machine
  that computes differently refuses to decode, and a difference the probes miss is caught by the image's CRC32,
  which names the image.
- Scale: the ANS coder holds only the top of the stack (a few times `whiten_words`); the rest is kept aside, so
  the time per image does not grow with the archive, and images are read and written one at a time.
- Container: magic, format version (3; format 2, from before the grid was chosen per archive, still decodes), a
  deflated JSON header (model, fingerprint, versions, grid, image size, the names unless they are the default
  numbering, the stored images), each image's CRC32, the ANS words, and a CRC32 of the whole; a damaged,
  truncated or edited archive is a clear error.

Needs the optional `constriction` (`pip install "vdvae-zoo[compress]"`).
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from .._version import __version__
from .bitsback import (
    GRID,
    ArchiveError,
    ImageRecord,
    _constriction,
    _decode_bits_back,
    _decode_webp,
    _encode_bits_back,
    _encode_webp,
    _exact,
    _probe_fingerprint,
    _Reject,
    _webp,
    dry_run,
    require_coder,
    whiten_words,
)
from .grid import DEFAULT_GRID, LatentGrid, candidate_grids, fitted_span
from .header import MAGIC, default_names, pack, read_header
from .stack import Stack

__all__ = [
    "compress",
    "decompress",
    "decompress_iter",
    "read_header",
    "ArchiveError",
    "CompressReport",
    "ImageRecord",
    "require_coder",
    "MAGIC",
    "LatentGrid",
    "DEFAULT_GRID",
    "choose_grid",
]


@dataclass
class CompressReport:
    """What `compress` measured: sizes in bits per dim (bits / (images x H x W x 3)) unless the name says bytes."""

    images: int
    archive_bytes: int
    bits_per_dim: float  # the whole archive
    webp_images: int  # images stored as lossless WebP (the first ones pay the initial bits)
    webp_bytes: int
    net_bits_per_dim: list[float]  # each bits-back image: what it added to the archive
    seconds_per_image: float
    whiten_words: int = 0
    records: list[ImageRecord] = field(default_factory=list)  # every image, in order
    grid: dict[str, Any] = field(default_factory=dict)  # the latent grid the archive uses (its header's)
    grid_choice: dict[str, Any] = field(default_factory=dict)  # how it was chosen: choose_grid's account
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    try:
        coder = version("constriction")
    except PackageNotFoundError:
        coder = "?"
    return {"vdvae_zoo": __version__, "torch": torch.__version__, "numpy": np.__version__, "constriction": coder}


DRY_RUN_IMAGES = 4  # images the grid is chosen on (the first ones of the archive)
MIN_GAIN = 0.01  # a candidate replaces the default grid only if it saves more than this fraction of net bits
# on the dry run's images, and its per-image savings pass a one-sided t-test at 99%
T_99 = {1: 31.82, 2: 6.965, 3: 4.541, 4: 3.747, 5: 3.365, 6: 3.143, 7: 2.998, 8: 2.896, 9: 2.821}  # by degrees
# of freedom; 2.33 beyond. A dry run's image costs vary by a few percent from draw to draw,
# and a 4-image run once found a 2% "saving" on a trained model that the archive did not see


def choose_grid(model, images: Sequence[np.ndarray], c=None) -> tuple[LatentGrid, dict[str, Any]]:
    """The latent grid for an archive of `images` (uint8 (H, W, C), the first images of it), by measurement: each
    candidate (coding_grid.candidate_grids: the default, each layer's span fitted to the posteriors the default's
    dry run saw, a coarser and a finer DELTA) codes the images onto the same random bits, and the cheapest in net
    bits wins if it beats the default by more than MIN_GAIN and its per-image savings pass a one-sided t-test at
    99%; otherwise the default stays. `model` must be in exact mode (bitsback._exact). Returns the grid and an account:
    each candidate's net bits per dim on each image (None where the coder refused an image), and the seconds."""
    grid, account, _ = _choose_grid(model, images, c or _constriction())
    return grid, account


def _dry_runs(model, images: Sequence[np.ndarray], grid: LatentGrid, c) -> tuple[list[ImageRecord | None], list]:
    """Each image's dry-run record on `grid` (None where the coder refused it) and each coded image's layer reach."""
    records: list[ImageRecord | None] = []
    reach: list[list[float]] = []
    for j, image in enumerate(images):
        try:
            record, layer_reach = dry_run(model, image, j, grid, c)
        except _Reject:
            records.append(None)
            continue
        records.append(record)
        reach.append(layer_reach)
    return records, reach


def _choose_grid(model, images, c) -> tuple[LatentGrid, dict[str, Any], list[ImageRecord | None]]:
    start = time.perf_counter()
    dims = model.config.dims_per_image
    records, reach = _dry_runs(model, images, DEFAULT_GRID, c)
    tried = {DEFAULT_GRID: records}
    fitted = [fitted_span(np.array(layer)) for layer in zip(*reach, strict=False)] if reach else []
    for grid in candidate_grids(fitted)[1:]:
        tried[grid] = _dry_runs(model, images, grid, c)[0]
    nets = {g: [r.net / dims for r in rs if r] for g, rs in tried.items() if all(rs)}  # a refused image rules it out
    whole = {g: float(np.mean(n)) for g, n in nets.items()}
    chosen = DEFAULT_GRID
    if whole and DEFAULT_GRID not in whole:  # the default refused an image: the cheapest that codes them all
        chosen = min(whole, key=whole.__getitem__)
    elif whole:
        best = min(whole, key=whole.__getitem__)
        saving = np.array(nets[DEFAULT_GRID]) - np.array(nets[best])
        error = float(np.std(saving, ddof=1) / math.sqrt(len(saving))) if len(saving) > 1 else float("inf")
        critical = T_99.get(len(saving) - 1, 2.33)
        if best != DEFAULT_GRID and saving.mean() > max(MIN_GAIN * whole[DEFAULT_GRID], critical * error):
            chosen = best
    account = {
        "chosen": chosen.describe(),
        "images": len(images),
        "seconds": time.perf_counter() - start,
        "candidates": [
            {"grid": g.describe(), **g.to_header(), "net_bits_per_dim": n, "mean": whole.get(g)}
            for g, n in nets.items()
        ],
    }
    return chosen, account, tried[chosen]


# ------------------------------------------------------------------------------------------------- the API
def compress(
    model,
    images: Iterable[np.ndarray],
    names: Sequence[str] | None = None,
    *,
    model_name: str = "",
    model_sha256: str = "",
    grid: str | LatentGrid = "auto",
    progress: Callable[[ImageRecord], None] | None = None,
) -> tuple[bytes, CompressReport]:
    """Losslessly compress uint8 (H, W, C) images of the model's size and channels into one archive (bytes).
    `images` may be
    any iterable, read one at a time: of arrays (named by `names`, default 000000.png, ...) or of (name, array)
    pairs. Returns the archive and a report, one ImageRecord per image. `model_name` / `model_sha256` are recorded
    so that `decompress` can name and check the model it needs; `progress(record)` is called after each image.
    `grid`: "auto" chooses the latent grid on the first DRY_RUN_IMAGES images (`choose_grid`; the report states
    the time it took), "default" is DEFAULT_GRID, or a LatentGrid; the archive's header records it."""
    c = _constriction()
    size = model.config.image_size
    if model.config.low_bit:
        raise ValueError(
            "this model's likelihood is over 5-bit pixels (low_bit): it cannot code 8-bit images losslessly"
        )
    given = list(names) if names is not None else None
    names = given if given is not None else []
    iterator = iter(_named_items(images, names, given is not None))
    head: list[np.ndarray] = []
    start = time.perf_counter()
    with _exact(model) as exact:
        fingerprint = _probe_fingerprint(exact)
        for image in iterator:  # the first images, for the dry run that sizes the whitening
            head.append(_checked(image, len(head), names, size, model.config.image_channels))
            if len(head) == DRY_RUN_IMAGES:
                break
        if not head:
            raise ValueError("no images to compress")
        grid, choice = _grid_for(exact, head, grid, c)
        pops = [r.popped for r in choice.pop("records")]
        whiten, expected_pop = whiten_words(exact, pops, grid), max(pops, default=0.0)
        stack = Stack(c, whiten)
        records, stored, crcs, push_words = [], {}, [], 0
        for j, image in enumerate(_chain(head, iterator, names, size, model.config.image_channels)):
            name = names[j] if j < len(names) else f"{j:06d}.png"
            crcs.append(zlib.crc32(image.tobytes()))
            record, reason = None, "the stack does not yet hold the bits its latents pop (the first images)"
            if 32 * (stack.total_words() - 2) >= expected_pop:
                try:
                    record = _encode_bits_back(stack, exact, image, j, whiten, c, name, grid)
                    push_words = max(push_words, int(math.ceil((record.pixels + record.pushed) / 32)) + 2)
                except _Reject as e:
                    reason = str(e)
            if record is None:
                webp = _webp(image)
                _encode_webp(stack, webp, c)
                stored[j] = len(webp)
                record = ImageRecord(name, "webp", 8.0 * len(webp), reason=reason)
            records.append(record)
            stack.spill()
            if progress is not None:
                progress(record)
    count = len(records)
    if given is not None and len(given) != count:
        raise ValueError(f"{len(given)} names for {count} images")
    payload = stack.payload().astype("<u4").tobytes()
    all_names = names if len(names) == count else default_names(count)
    if len(set(all_names)) != count:
        raise ValueError("two images have the same name; an archive stores names without folders")
    header = {
        "model": model_name,
        "model_sha256": model_sha256,
        "fingerprint": fingerprint,
        "versions": _versions(),
        **grid.to_header(),
        "grid": GRID,
        "whiten_words": whiten,
        "push_words": push_words,
        "image_size": size,
        "count": count,
        "stored": [[j, n] for j, n in sorted(stored.items())],
        "names": None if all_names == default_names(count) else all_names,
    }
    archive = pack(header, np.array(crcs, dtype="<u4").tobytes() + payload)
    dims = model.config.dims_per_image
    net = [r.net / dims for r in records if r.mode == "bits-back"]
    report = CompressReport(
        images=count,
        archive_bytes=len(archive),
        bits_per_dim=8 * len(archive) / (dims * count),
        webp_images=len(stored),
        webp_bytes=sum(stored.values()),
        net_bits_per_dim=net,
        seconds_per_image=(time.perf_counter() - start) / count,
        whiten_words=whiten,
        records=records,
        extra={"container_bytes": len(archive) - len(payload)},
        grid={"description": grid.describe(), **grid.to_header()},
        grid_choice=choice,
    )
    return archive, report


def _grid_for(model, head: list[np.ndarray], grid: str | LatentGrid, c) -> tuple[LatentGrid, dict[str, Any]]:
    """The archive's grid and the account of its choice, with the dry run's records on it (their pops size the
    whitening)."""
    if grid == "auto":
        chosen, choice, records = _choose_grid(model, head, c)
    elif grid == "default" or isinstance(grid, LatentGrid):
        chosen = DEFAULT_GRID if isinstance(grid, str) else grid
        choice, records = {"chosen": "given", "seconds": 0.0}, _dry_runs(model, head[:3], chosen, c)[0]
    else:
        raise ValueError(f"grid must be 'auto', 'default' or a LatentGrid, not {grid!r:.60}")
    return chosen, {**choice, "records": [r for r in records if r is not None]}


def _named_items(images: Iterable, names: list[str], named: bool) -> Iterator[np.ndarray]:
    """The arrays of `images`; (name, array) pairs have their names appended to `names` as they come."""
    for item in images:
        if not named and isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
            names.append(item[0])
            item = item[1]
        yield item


def _checked(image, j: int, names, size: int, channels: int = 3) -> np.ndarray:
    image = np.array(image, dtype=np.uint8, order="C")  # an own, writable copy
    if image.ndim == 2 and channels == 1:
        image = image[..., None]
    if image.shape != (size, size, channels):
        raise ValueError(
            f"image {j} ({names[j] if j < len(names) else j}) is {image.shape}; "
            f"this model codes {size}x{size}x{channels}"
        )
    return image


def _chain(head: list[np.ndarray], rest: Iterator, names, size: int, channels: int) -> Iterator[np.ndarray]:
    yield from head
    for j, image in enumerate(rest, start=len(head)):
        yield _checked(image, j, names, size, channels)


def decompress_iter(model, archive: bytes) -> Iterator[tuple[int, str, np.ndarray]]:
    """The images of `archive` as (index, name, uint8 image), bit-exact, one at a time and last first (the ANS
    stack gives them back in reverse). Raises ArchiveError when the archive is damaged, when this machine computes
    the model differently from the one that wrote it (the probes), or when an image does not decode to what was
    stored (its CRC32; the error names it)."""
    c = _constriction()
    header, payload = read_header(archive)
    if header["image_size"] != model.config.image_size:
        raise ArchiveError(
            f"the archive holds {header['image_size']}x{header['image_size']} images; this model codes "
            f"{model.config.image_size}x{model.config.image_size}"
        )
    if not math.isfinite(header["grid"]) or header["grid"] <= 0:
        raise ArchiveError(f"the archive is damaged: its header field 'grid' is {header['grid']!r}, not a grid")
    if header["grid"] != GRID:
        wrote = header["versions"].get("vdvae_zoo")
        raise ArchiveError(
            f"the archive was written with other discretisation settings (grid {header['grid']!r}, this version "
            f"uses {GRID!r})"
            + (f"; decode it with vdvae-zoo {wrote}, which wrote it" if wrote and wrote != __version__ else "")
        )
    windows = "layer" if header["format"] == 2 else "per-latent"
    try:
        grid = LatentGrid.from_header(header, len(model.layer_resolutions), windows)
    except ValueError as e:
        raise ArchiveError(
            f"{e}: the archive was made for another model, or it is damaged (decode it with the "
            f"model it names: {header['model'] or 'not recorded'})"
        ) from None
    names, stored, whiten = header["names"], header["stored"], header["whiten_words"]
    stack = Stack(c, whiten, np.frombuffer(payload, dtype="<u4").astype(np.uint32), whiten_head=header["format"] >= 3)
    with _exact(model) as exact:
        if len(stored) < header["count"] and _probe_fingerprint(exact, windows) != header["fingerprint"]:
            raise ArchiveError(
                "this machine (or model) computes the model's probabilities differently from the one "
                f"that wrote the archive ({header['model'] or 'model'} sha256 "
                f"{header['model_sha256'][:12] or '?'}, {header['versions']}); decoding would give "
                "wrong pixels, so it is refused"
            )
        for j in reversed(range(header["count"])):
            try:
                if j in stored:
                    image = _decode_webp(stack, stored[j], c, names[j], model.config.image_channels)
                else:
                    image = _decode_bits_back(stack, exact, j, whiten, header["push_words"], c, grid)
            except _Reject:  # the coder's own text ("zero probability") says nothing to a user
                raise ArchiveError(
                    f"{names[j]} (image {j}) could not be decoded: the archive is damaged at image {j} (its coded "
                    "bits do not decode under the model: a changed byte, or another model than the one it names)"
                ) from None
            if (
                image.shape != (header["image_size"],) * 2 + (model.config.image_channels,)
                or zlib.crc32(np.ascontiguousarray(image).tobytes()) != header["crc32"][j]
            ):
                raise ArchiveError(
                    f"{names[j]} (image {j}) does not decode to the image that was stored (CRC32 "
                    "mismatch): the archive is damaged, or this machine rounds the model's arithmetic "
                    "differently where the probes did not look (docs/compress.md, cross-machine)"
                )
            yield j, names[j], image
    if stack.total_words() != 0:
        raise ArchiveError("the archive holds more data than its images (damaged)")


def decompress(model, archive: bytes) -> tuple[list[np.ndarray | None], list[str]]:
    """The images and names stored in `archive`, bit-exact, in their order (all held in memory; the CLI and large
    archives use `decompress_iter`)."""
    header, _ = read_header(archive)
    images: list[np.ndarray | None] = [None] * header["count"]
    for j, _name, image in decompress_iter(model, archive):
        images[j] = image
    return images, header["names"]
