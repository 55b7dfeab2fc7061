"""The one scoring engine: every number that scores an image (`vdvae-zoo bpd`, `eval`, `ood`, `evaluate`, the
trainer's validation) is computed here, by one rule.

**The seed rule.** Image i of a data set (its position in the data set's order) draws its random numbers from
a generator seeded with `batching.image_seed(seed, i)`, and is computed in passes of a fixed shape (`batch_size`
images, default `batching.seeded_pass_size`; the last pass padded). Its scores are therefore a function of the
image, the model, the seed and the options only: not of how many images are scored with it, of the chunking,
of a resume, or of the number of processes. (Changing `batch_size` itself changes the shape of the arithmetic,
which moves scores by float rounding only, about 1e-6 bits per dim.)

Streaming: `score_dataset` reads the data in chunks of `chunk` images, appends each finished chunk to a state
file (JSON lines after a header that names the model, the data and the options), continues from it with
`resume=True`, and under torchrun gives chunk k to process k % world size and gathers every per-image result
exactly (no padding duplicates, no dropped tail).

Units: bits per dim everywhere (`bpd`, `distortion_bpd`, `rate_bpd`, `bpd_iw`, `bpd_k{k}`, `llr_k{k}`), except
`kl_sum_nats`. For out-of-distribution scores (ood.py), `bpd_k{k}` is the bound L^{>k} (the k lowest decoder
layers from their conditional prior) and `llr_k{k}` = bpd_k{k} - bpd = (L - L^{>k}) / (D ln 2), Havtorn et al.'s
LLR^{>k} in bits per dim: larger means more out-of-distribution.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ..compute import distributed
from ..compute.batching import image_seed
from ..data.datasets import Dataset
from ..data.files import append_line, atomic_write
from .state import StateError, read_state, recorded_pass_size, refuse_existing_state, state_files

__all__ = [
    "ScoreOptions",
    "ScoreTable",
    "score_images",
    "score_dataset",
    "mean_and_stderr",
    "StateError",
    "write_scores",
    "model_for_images",
    "printable_path",
    "refuse_existing_state",
]


@dataclass(frozen=True)
class ScoreOptions:
    """What a score depends on besides the image and the model.

    `seed`: of every posterior draw (the seed rule above); `samples`: posterior draws per image (K > 1 adds
    `bpd_iw`, the importance-weighted bound); `ks`: the out-of-distribution bounds L^{>k} to compute, each k a
    number of lowest decoder layers taken from the conditional prior at `prior_temperature` (0: its mean, as
    Havtorn et al.); `batch_size`: images per pass (None: the per-device default); `dtype`: compute precision."""

    seed: int = 0
    samples: int = 1
    ks: tuple[int, ...] = ()
    prior_temperature: float = 0.0
    batch_size: int | None = None
    dtype: str | None = None

    def check(self, num_layers: int) -> ScoreOptions:
        """Itself, after checking the values against a model of `num_layers` decoder layers."""
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if isinstance(self.samples, bool) or not isinstance(self.samples, int) or self.samples < 1:
            raise ValueError(f"samples must be an integer >= 1 (posterior draws per image), got {self.samples!r}")
        for k in self.ks:
            if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= num_layers:
                raise ValueError(
                    f"each k must be an integer in 0..{num_layers} (lowest decoder layers taken from "
                    f"the prior), got {k!r}"
                )
        if len(set(self.ks)) != len(self.ks):
            raise ValueError(f"ks has repeated values: {list(self.ks)}")
        if self.ks and self.samples > 1:
            raise ValueError("the L^{>k} bounds use one posterior draw; give samples=1 with ks")
        t = self.prior_temperature
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0 <= t <= MAX_PRIOR_TEMPERATURE:
            raise ValueError(
                f"prior temperature must be a number in 0..{MAX_PRIOR_TEMPERATURE:g} (0: the prior's "
                f"mean, 1: a prior sample), got {t!r}"
            )
        return self

    def record(self) -> dict[str, Any]:
        """The options as JSON values (reports, state headers)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def columns(self) -> list[str]:
        """The per-image columns a score has with these options, in order."""
        names = ["bpd", "distortion_bpd", "rate_bpd"] + (["bpd_iw"] if self.samples > 1 else [])
        for k in self.ks:
            names += [f"bpd_k{k}", f"llr_k{k}"]
        return names


def score_images(
    model, images, indices: Sequence[int], options: ScoreOptions = ScoreOptions()
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Scores of uint8 NHWC `images` whose positions in their data set are `indices` (the seed rule): a dict
    column -> (n,) float64 in bits per dim (see `ScoreOptions.columns`) and the KL of each layer, (n, L) nats."""
    options.check(model.num_layers)
    seeds = [image_seed(options.seed, int(i)) for i in indices]
    common = dict(seeds=seeds, batch_size=options.batch_size, dtype=options.dtype)
    if options.samples > 1:
        elbo = model.likelihood(images, n_samples=options.samples, **common)
        bounds = []
    else:
        keeps = [None] + [model.num_layers - k for k in options.ks]
        elbo, *bounds = model.likelihood(images, keep=keeps, prior_temperature=options.prior_temperature, **common)
    columns = {"bpd": elbo.bpd, "distortion_bpd": elbo.distortion_bpd, "rate_bpd": elbo.rate_bpd}
    if elbo.bpd_iw is not None:
        columns["bpd_iw"] = elbo.bpd_iw
    for k, bound in zip(options.ks, bounds, strict=False):
        columns[f"bpd_k{k}"] = bound.bpd
        columns[f"llr_k{k}"] = bound.bpd.double() - elbo.bpd.double()
    return {name: value.double().numpy() for name, value in columns.items()}, elbo.kl.double().numpy()


def mean_and_stderr(values: ArrayLike) -> tuple[float, float | None]:
    """Mean and standard error of the mean (None for fewer than two values)."""
    values = np.asarray(values, dtype=np.float64)
    se = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
    return float(values.mean()), se


@dataclass
class ScoreTable:
    """Per-image scores of a data set, in the order of its positions (skipped images left out).

    `columns`: name -> (n,) float64 (bits per dim), plus `index` (positions in the data set, int64);
    `kl_sum_nats`: (L,) each layer's KL summed over the images; `skipped`: (position, reason) of unreadable ones."""

    columns: dict[str, np.ndarray]
    kl_sum_nats: np.ndarray
    skipped: list[tuple[int, str]]
    options: ScoreOptions
    elapsed_s: float = 0.0
    scored_here: int = 0  # images this run scored (not taken from a resumed state)
    header: dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False  # stopped by Ctrl-C (keep_partial): the chunks finished before it

    def rows(self, dataset: Dataset) -> list[dict[str, Any]]:
        """One dict per image: `index`, `path` (data sets of files), and every score column."""
        names = [n for n in self.columns if n != "index"]
        out = []
        for j, i in enumerate(self.columns["index"].tolist()):
            row: dict[str, Any] = {"index": i}
            if dataset.files is not None:
                row["path"] = printable_path(dataset.files[i])
            row.update({n: float(self.columns[n][j]) for n in names})
            out.append(row)
        return out

    def summary(self) -> dict[str, Any]:
        """Images scored and skipped, and the mean and standard error of every score column (JSON-safe)."""
        out: dict[str, Any] = {"images": len(self), "skipped": len(self.skipped), "interrupted": self.interrupted}
        for name in self.columns:
            if name != "index" and len(self):
                out[f"mean_{name}"], out[f"stderr_{name}"] = self.mean(name)
        return out

    def __len__(self) -> int:
        return len(self.columns["index"])

    def mean(self, name: str) -> tuple[float, float | None]:
        return mean_and_stderr(self.columns[name])


# ------------------------------------------------------------------------------------------------- streaming
def score_dataset(
    model,
    dataset: Dataset,
    options: ScoreOptions = ScoreOptions(),
    *,
    positions: ArrayLike | None = None,
    chunk: int = 256,
    resize: str | None = None,
    state: None | str | os.PathLike = None,
    resume: bool = False,
    overwrite: bool = False,
    model_id: str | None = None,
    progress: bool = True,
    desc: str = "scoring",
    on_chunk: Callable[[dict[str, Any]], None] | None = None,
    keep_partial: bool = False,
) -> ScoreTable | None:
    """Score the images of `dataset` at `positions` (default: all) in chunks of `chunk` images.

    `state`: a file where finished chunks are kept; `resume` continues from it (its header must name the same
    model, data and options); an existing state without `resume` is refused unless `overwrite`. `model_id`
    identifies the weights in that header (default: `model.provenance.sha256`). `resize`: "center-crop" for
    data sets of image files of other sizes. `on_chunk(record)` sees each chunk this process scores, as it is
    saved. Returns the table (None on processes other than rank 0 under torchrun). Ctrl-C (KeyboardInterrupt)
    propagates, the finished chunks kept in `state`; with `keep_partial` it returns the table of those chunks
    instead, marked `interrupted`."""
    options = options.check(model.num_layers)
    size = model.config.image_size
    if dataset.files is None and dataset.size is not None and dataset.size != size:
        raise ValueError(f"{dataset.name} has {dataset.size}x{dataset.size} images; this model takes {size}x{size}")
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be a positive integer (images per saved chunk), got {chunk!r}")
    positions = np.arange(len(dataset)) if positions is None else np.asarray(positions, dtype=np.int64)
    if len(positions) == 0:
        raise ValueError(f"{dataset.name} holds no images to score")
    chunks = [positions[i : i + chunk] for i in range(0, len(positions), chunk)]
    columns = options.columns()
    world, rank = distributed.world_and_rank()
    if model_id is None:
        model_id = model.provenance.sha256
    header = {
        "model": model_id,
        "data": dataset.fingerprint,
        "split": dataset.split,
        "positions": _positions_key(positions),
        "chunk": chunk,
        "resize": resize,
        "options": options.record(),
    }
    state_path = Path(state) if state is not None else None
    mine = state_path.with_name(f"{state_path.name}.rank{rank}") if state_path and world > 1 else state_path
    existing = state_files(state_path) if state_path is not None and state_path.parent.is_dir() else []
    if existing and not resume and not overwrite:
        raise FileExistsError(
            f"{existing[0]} holds the progress of an earlier run; --resume continues it, --overwrite starts again"
        )
    if resume and existing:
        recorded = recorded_pass_size(existing, header)
        if recorded is not None:
            warnings.warn(
                f"resuming with the run's pass size ({recorded} images per pass), not --batch-size "
                f"{options.batch_size}: a score depends on the pass's shape, so a run keeps one",
                stacklevel=2,
            )
            options = replace(options, batch_size=recorded)
            header["options"] = options.record()
    done = read_state(existing, header, chunks, columns, model.num_layers) if resume and existing else {}
    distributed.barrier()  # every process has read the state before any rewrites it
    if mine is not None:
        if world > 1 and rank == 0 and not resume:
            for stale in existing:
                stale.unlink(missing_ok=True)
        kept = [json.dumps(header)] + [json.dumps(r) for k, r in sorted(done.items()) if k % world == rank]
        atomic_write(mine, "\n".join(kept) + "\n")
        if rank == 0 and state_path is not None and state_path != mine:
            state_path.unlink(missing_ok=True)  # the single-process file was split into the ranks' files
    todo = [k for k in range(len(chunks)) if k % world == rank and k not in done]
    from ..data.progress import progress_bar

    start, scored_here = time.perf_counter(), 0
    interrupted = False
    with progress_bar(
        total=len(positions),
        initial=sum(len(chunks[k]) for k in done),
        unit="img",
        desc=desc,
        enabled=progress and rank == 0,
    ) as bar:
        try:
            for k in todo:
                done[k] = record = _score_chunk(model, dataset, k, chunks[k], options, size, resize)
                scored_here += len(record["index"])
                if mine is not None:
                    append_line(mine, json.dumps(record))
                if on_chunk is not None:
                    with bar.external_write_mode():  # the bar steps aside for what the callback prints
                        on_chunk(record)
                bar.update(len(chunks[k]) * world)
                skipped_so_far = sum(len(r["skipped"]) for r in done.values())
                if skipped_so_far:  # the bar counts files read; say how many of them were not scored
                    bar.set_postfix(skipped=skipped_so_far)
        except KeyboardInterrupt:
            if not keep_partial or world > 1:
                raise
            interrupted = True
    elapsed = time.perf_counter() - start
    if world > 1:
        done = {
            k: v
            for part in distributed.gather_objects({k: v for k, v in done.items() if k % world == rank})
            for k, v in part.items()
        }
        scored_here = sum(distributed.gather_objects(scored_here))
    if mine is not None and not interrupted:
        mine.unlink(missing_ok=True)  # complete: nothing left to resume
    if rank != 0:
        return None
    if len(done) != len(chunks) and not interrupted:
        raise RuntimeError(f"scoring incomplete: {len(done)} of {len(chunks)} chunks")
    records = [done[k] for k in sorted(done)]
    table_columns = {"index": np.array([i for r in records for i in r["index"]], dtype=np.int64)}
    for name in columns:
        table_columns[name] = np.array([v for r in records for v in r[name]], dtype=np.float64)
    kl_sum = np.sum([r["kl_sum_nats"] for r in records], axis=0)
    skipped = [(int(i), str(why)) for r in records for i, why in r.get("skipped", [])]
    kl_sum = kl_sum if records else np.zeros(model.num_layers)
    return ScoreTable(table_columns, kl_sum, skipped, options, elapsed, scored_here, header, interrupted)


def _score_chunk(
    model, dataset: Dataset, k: int, positions: np.ndarray, options: ScoreOptions, size: int, resize: str | None
) -> dict[str, Any]:
    """The record of chunk k: the positions scored and skipped, each column's values, the layers' KL sum."""
    images, kept, skipped = dataset.read_checked(positions.tolist(), size, resize, model.config.image_channels)
    record: dict[str, Any] = {
        "chunk": k,
        "index": [int(i) for i in kept],
        "skipped": [[int(i), why] for i, why in skipped],
    }
    if kept:
        values, kl = score_images(model, images, kept, options)
        record.update({name: values[name].tolist() for name in options.columns()})
        record["kl_sum_nats"] = kl.sum(axis=0).tolist()
    else:
        record.update({name: [] for name in options.columns()})
        record["kl_sum_nats"] = [0.0] * model.num_layers
    return record


def _positions_key(positions: np.ndarray) -> dict[str, Any]:
    """A short identity of the positions scored (for the state header): count and a hash."""
    import hashlib

    return {"count": int(len(positions)), "sha256": hashlib.sha256(positions.astype("<i8").tobytes()).hexdigest()[:16]}


def printable_path(path: str | os.PathLike) -> str:
    """A path as text that any UTF-8 file can hold: bytes of a name that is not valid UTF-8 are written as \\xNN."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


#: A temperature beyond this scales the prior's standard deviation past any use (1e308 made every score NaN).
MAX_PRIOR_TEMPERATURE = 100.0


def write_scores(
    path: str | os.PathLike, rows: list[dict[str, Any]], about: dict[str, Any], *, overwrite: bool = False
) -> Path:
    """Per-image rows as `.csv` (one line per image) or `.json` (`about` + `rows` under "images"), atomically."""
    import csv
    import io

    path = Path(path)
    if path.suffix.lower() == ".json":
        text = json.dumps({**about, "images": rows}, indent=2) + "\n"
    elif path.suffix.lower() == ".csv":
        buffer = io.StringIO()
        fields = list(dict.fromkeys(key for row in rows for key in row)) or ["index"]  # every row's columns
        writer = csv.DictWriter(buffer, fieldnames=fields, restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        text = buffer.getvalue()
    else:
        raise ValueError(f"{path}: per-image scores are written as .csv or .json")
    return atomic_write(path, text, overwrite=overwrite)


def model_for_images(files: Sequence[Path], manifest=None) -> tuple[str | None, list[tuple[Path, str]]]:
    """The released model for images of one size (the manifest's first entry of that resolution), and the files
    that could not be read. Mixed sizes, or a size no released model takes, are a ValueError saying what to do."""
    from ..data.images import ImageReadError, image_size
    from ..weights.manifest import load_manifest

    sizes, unreadable = {}, []
    for p in files:
        try:
            sizes[p] = image_size(p)
        except ImageReadError as e:
            unreadable.append((p, e.reason))
    distinct = set(sizes.values())
    if not distinct:
        return None, unreadable
    if len(distinct) > 1:
        listed = ", ".join(f"{w}x{h}" for w, h in sorted(distinct)[:5])
        raise ValueError(
            f"images have mixed sizes ({listed}); choose a model with --model NAME and --resize center-crop"
        )
    ((w, h),) = distinct
    man = load_manifest(manifest)
    entry = man.for_resolution(w) if w == h else None
    if entry is None:
        known = ", ".join(str(r) for r in sorted({e.resolution for e in man.entries}))
        raise ValueError(
            f"no released model works at {w}x{h} (they are {known}); pick one with --model NAME and "
            "--resize center-crop"
        )
    return entry.name, unreadable
