"""Sample sets at data-set scale (for FID and the like): OUTDIR/000000.png, 000001.png, ... and samples.json.

Image i is drawn from a generator seeded with `batching.image_seed(seed, i)`, in passes of one fixed shape
(`pass_size` images, the last one padded): the file is a function of (model, temperature, seed, i, pass size,
dtype, device) only. A set is resumable: files are written whole or not at all, `resume=True` draws only the
missing (or unreadable) ones, and it keeps the pass size recorded in samples.json so that the files match what
an uninterrupted run writes. What stays outside the guarantee: another device, thread count or PyTorch version
can round differently (a pixel may then differ by one level).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._version import __version__
from ..compute.batching import check_batch_size, image_seed
from ..data.files import atomic_write, open_user_file, read_small_text
from ..data.images import ImageReadError, image_size, save_png
from ..nn.inputs import temperature_record

__all__ = ["write_sample_set", "SampleSetReport", "META_NAME", "SampleSetError"]

META_NAME = "samples.json"
_COMPARED = ("model", "temperature", "seed", "dtype", "image_size", "pixels")


class SampleSetError(ValueError):
    """A folder that cannot be continued as this sample set."""


@dataclass
class SampleSetReport:
    """What `write_sample_set` did: `written` new files, `kept` that were there already, of `num`."""

    outdir: Path
    num: int
    written: int
    kept: int
    pass_size: int
    meta: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _file(outdir: Path, i: int) -> Path:
    return outdir / f"{i:06d}.png"


def _complete(path: Path, size: int) -> bool:
    """True when `path` is a readable image of size x size (a file cut short by a crash is not)."""
    try:
        return path.is_file() and image_size(path) == (size, size) and _decodes(path)
    except ImageReadError:
        return False


def _decodes(path: Path) -> bool:
    from PIL import Image

    try:
        with open_user_file(path, what="sample", kind="image") as f, Image.open(f) as img:
            img.load()
        return True
    except (OSError, ValueError):
        return False


def _read_meta(path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(read_small_text(path, what="sample set record"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise SampleSetError(
            f"{path} cannot be read as a sample set's record ({type(e).__name__}); delete it to "
            "start a new set in that folder, or choose another --outdir"
        ) from None
    if not isinstance(meta, dict):
        raise SampleSetError(
            f"{path} is not a sample set's record (a JSON object); delete it or choose another --outdir"
        )
    return meta


def write_sample_set(
    model,
    outdir: str | os.PathLike,
    num: int,
    *,
    temperature: Any = 1.0,
    seed: int = 0,
    batch_size: int | None = None,
    dtype: str | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    exact: bool = False,
) -> SampleSetReport:
    """Write `num` samples of `model` at `temperature` as numbered PNGs into `outdir`, with samples.json.

    `batch_size`: images per pass (default: the per-device seeded pass size); `resume`: keep the complete files
    there and draw the missing ones (with the pass size samples.json records); `overwrite`: draw every file again.
    `exact`: the pixels of the exact draw (dmol_sample), recorded as "pixels" in samples.json.
    A non-empty folder without either is refused. KeyboardInterrupt leaves only whole files behind."""
    outdir = Path(outdir)
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ValueError(f"num must be a positive integer (number of images), got {num!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if outdir.exists() and not outdir.is_dir():
        raise SampleSetError(f"{outdir} exists and is not a folder")
    if outdir.is_dir() and any(outdir.iterdir()) and not (resume or overwrite):
        raise FileExistsError(
            f"{outdir} is not empty; --resume continues the sample set in it, --overwrite replaces its files"
        )
    temperatures = model.layer_temperatures(temperature)  # checked before any work
    pass_size = check_batch_size(batch_size, model.config, model.device, seeded=True)
    size = model.config.image_size
    meta = {
        "model": model.provenance.to_dict(),
        "temperature": temperature_record(temperature),
        "seed": seed,
        "num": num,
        "image_size": size,
        "dtype": str(dtype or model.compute_dtype).replace("torch.", ""),
        "pass_size": pass_size,
        "pixels": "exact" if exact else "original",
        "vdvae_zoo": __version__,
        "seeds": "image i: vdvae_zoo.compute.batching.image_seed(seed, i)",
    }
    notes: list[str] = []
    meta_path = outdir / META_NAME
    if resume and meta_path.is_file():
        before = _read_meta(meta_path)
        recorded_pixels = {"pixels": "original"}  # sets written before the exact draw existed
        differing = [k for k in _COMPARED if k != "model" and before.get(k, recorded_pixels.get(k)) != meta[k]]
        if isinstance(before.get("model"), dict) and before["model"].get("sha256") != meta["model"].get("sha256"):
            differing.insert(0, "model")
        if differing:
            raise SampleSetError(
                f"--resume: {outdir} holds samples of another run (differing: {', '.join(differing)})"
                "; use another --outdir, or the same model and options"
            )
        recorded = before.get("pass_size")
        if isinstance(recorded, int) and recorded >= 1 and recorded != pass_size:
            if batch_size is not None:
                notes.append(
                    f"the set's pass size {recorded} (samples.json) is used, not --batch-size {batch_size}, "
                    "so that its files match an uninterrupted run"
                )
            meta["pass_size"] = pass_size = recorded
    atomic_write(meta_path, json.dumps(meta, indent=2) + "\n")
    todo = [i for i in range(num) if overwrite or not _complete(_file(outdir, i), size)]
    from ..data.progress import progress_bar

    with progress_bar(total=num, initial=num - len(todo), unit="img", desc="sampling", enabled=progress) as bar:
        for start in range(0, len(todo), pass_size):
            part = todo[start : start + pass_size]
            images = model.sample(
                len(part),
                temperature=temperatures,
                seeds=[image_seed(seed, i) for i in part],
                batch_size=pass_size,
                dtype=dtype,
                exact=exact,
            ).numpy()
            for i, image in zip(part, images, strict=False):
                save_png(image, _file(outdir, i))
            bar.update(len(part))
    return SampleSetReport(outdir, num, len(todo), num - len(todo), pass_size, meta, notes)
