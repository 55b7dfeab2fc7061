"""Sample quality through torch-fidelity: FID, KID and precision/recall of a model's samples against reference images.

Nothing here computes a metric or holds a network: torch-fidelity's Inception (`inception-v3-compat`, the TensorFlow
FID network ported bit for bit) extracts the 2048-d pool features, and its functions turn features into numbers
(`fid_features_to_statistics` / `fid_statistics_to_metric`, `kid_features_to_metric`, `prc_features_to_metric`).
Precision and recall use the same Inception features (torch-fidelity's default for them is VGG-16: one network here).

- Samples: image i of temperature t is `model.sample(seeds=[image_seed(seed, i)])` in passes of the sample-set
  pass size, so its pixels are those `vdvae-zoo sample --outdir` writes (PNG is lossless): the features of a sample
  folder and of streamed samples are the same. Grey and RGBA images go to Inception as RGB (grey repeated, alpha
  dropped).
- Reference: anything `eval --data` reads, at the model's size (images of another size are skipped, named, unless
  resize="center-crop"; Inception itself resizes to 299 as torch-fidelity always does), or a statistics file this
  module wrote (.safetensors), or `mu`/`sigma` in an .npz (FID only). Reference features are cached by content: the
  sha256 of the pixels fed to Inception and of its weights names the cache file (`reference_cache_dir`, which
  `vdvae-zoo cache` lists).
- Resume: the features of the samples drawn so far are kept in a state file when interrupted (and every few
  minutes); `resume=True` continues from them.
- Inception sees images in fixed chunks of 64 by index (inception.CHUNK), so no number depends on the batch size
  or on how the samples were drawn.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._version import __version__
from ..compute.batching import check_batch_size, image_seed
from ..data.files import atomic_write, read_user_bytes
from ..data.images import find_images, load_images
from ..nn.inputs import temperature_record
from . import inception
from .inception import (
    EXTRACTOR,
    FidError,
    _Extractor,
    _fidelity,
    _reference,
    reference_cache_dir,
)

__all__ = ["FidReport", "FidRow", "fid"]

STATE_EVERY_S = 300.0  # the state file is rewritten at most this often during a long run


# ------------------------------------------------------------------------------------------------ samples
def _sample_folder_pixels(folder: Path) -> tuple[list[np.ndarray], dict[str, Any]]:
    meta = json.loads(read_user_bytes(folder / "samples.json", what="sample set record"))
    files = [f for f in find_images([str(folder)]) if f.name != "samples.json"]
    size = int(meta.get("image_size", 0))
    images, ok, bad = load_images(files, size=size)
    if bad:
        raise FidError(f"{bad[0][0]}: {bad[0][1]}; the sample set in {folder} is damaged (sample --resume repairs it)")
    return [images], meta


def _state_meta(options: dict[str, Any]) -> str:
    return json.dumps(options, sort_keys=True, default=str)


@dataclass
class FidRow:
    """One temperature's numbers: FID; KID's mean and std over subsets; precision, recall, F-score."""

    temperature: Any
    fid: float
    kid_mean: float | None = None
    kid_std: float | None = None
    precision: float | None = None
    recall: float | None = None
    f_score: float | None = None


@dataclass
class FidReport:
    """What `fid` measured: one row per temperature, and everything that determines the numbers."""

    rows: list[FidRow]
    num: int
    seed: int
    reference: dict[str, Any]
    extractor: dict[str, str]
    model: dict[str, Any]
    seconds: float
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "torch_fidelity": _fidelity().__version__, "vdvae_zoo": __version__}

    def chart(self, path: str | os.PathLike, metric: str = "fid", *, overwrite: bool = True) -> None:
        """`metric` ("fid", or "kid_mean" when KID was computed) against temperature, a PNG."""
        from ..data.plots import line_chart

        temps = [r.temperature for r in self.rows]
        numbers = all(isinstance(x, (int, float)) for x in temps)
        xs = [float(x) if numbers else float(i) for i, x in enumerate(temps)]
        name = {"fid": "FID", "kid_mean": "KID"}[metric]
        series: dict[str, Sequence[tuple[float, float]]] = {
            name: [(x, float(getattr(r, metric))) for x, r in zip(xs, self.rows, strict=True)]
        }
        span = (min(xs), max(xs)) if max(xs) > min(xs) else None
        line_chart(series, Path(path), x_label="temperature", x_range=span, overwrite=overwrite)

    def card_results(self, command: str) -> list[dict[str, Any]]:
        """One model-index result per temperature and metric, as `eval --card` writes them."""
        from ..weights.cards import measured_result

        names = {"fid": "FID", "kid_mean": "KID", "precision": "precision", "recall": "recall"}
        out = []
        for row in self.rows:
            args = {"temperature": row.temperature, "num": self.num, "seed": self.seed, "extractor": EXTRACTOR}
            for key, name in names.items():
                value = getattr(row, key)
                if value is not None:
                    out.append(
                        measured_result(
                            self.reference.get("name", self.reference.get("path", "reference")),
                            self.reference.get("split", "all"),
                            value,
                            metric=name,
                            metric_name=f"{name} against the reference ({EXTRACTOR})",
                            args=args,
                            command=command,
                            task="unconditional-image-generation",
                        )
                    )
        return out


def fid(
    model: Any,
    ref: str | os.PathLike,
    *,
    num: int = 50_000,
    temperatures: Sequence[Any] = (1.0,),
    seed: int = 0,
    split: str = "test",
    resize: str | None = None,
    kid: bool = False,
    prc: bool = False,
    batch_size: int | None = None,
    inception_weights: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    state: str | os.PathLike | None = None,
    resume: bool = False,
    progress: bool = True,
) -> FidReport:
    """FID (and with `kid` / `prc`, KID and precision/recall) of `num` samples of `model` at each of `temperatures`
    against the reference `ref`. `model` is a VDVAE, or the path of a sample-set folder (`vdvae-zoo sample
    --outdir`: its images and temperature are used). `state`: where the features of an interrupted run are kept
    (`resume=True` continues from them). Units: FID and KID in Inception feature units squared; precision and
    recall in [0, 1]."""
    fidelity = _fidelity()
    started = time.perf_counter()
    folder = Path(model) if isinstance(model, (str, os.PathLike)) else None
    if folder is not None and not (folder / "samples.json").is_file():
        raise FidError(f"{folder} is not a sample set (no samples.json); give a model, or a folder written by sample")
    if isinstance(num, bool) or not isinstance(num, int) or num < 2:
        raise FidError(f"num must be an integer >= 2 (FID needs a covariance), got {num!r}")
    if folder is None:
        for t in temperatures:  # checked before any work
            model.layer_temperatures(t)
        size, device = model.config.image_size, model.device
    else:
        size, device = 0, torch.device("cpu")
    extractor = _Extractor(inception_weights, device)
    cache = Path(cache_dir) if cache_dir is not None else reference_cache_dir()

    sample_sets: list[tuple[Any, torch.Tensor]] = []
    if folder is not None:
        pixels, meta = _sample_folder_pixels(folder)
        size = int(meta.get("image_size") or pixels[0].shape[1])
        num, seed, temperatures = sum(len(p) for p in pixels), int(meta.get("seed", 0)), [meta.get("temperature")]
        if num < 2:
            raise FidError(f"{folder} holds {num} sample(s); FID needs at least 2")
        sample_sets.append((meta.get("temperature"), extractor(np.concatenate(pixels))))
        provenance = meta.get("model", {})
    else:
        provenance = model.provenance.to_dict()
    ref_features, ref_stats, ref_info = _reference(str(ref), split, size, resize, extractor, cache, progress)
    if ref_features is None and (kid or prc):
        raise FidError(f"{ref} holds FID statistics only (mu, sigma); KID and precision/recall need images")

    if folder is None:
        options = {
            "model": provenance.get("sha256"),
            "num": num,
            "seed": seed,
            "temperatures": [temperature_record(t) for t in temperatures],
            "extractor": extractor.sha256,
        }
        sample_sets = _sampled_features(model, options, temperatures, batch_size, extractor, state, resume, progress)

    rows = []
    for t, features in sample_sets:
        row = FidRow(temperature_record(t), 0.0)
        stats = fidelity.metric_fid.fid_features_to_statistics(features)
        if ref_stats is not None:
            stats = {k: v.astype(ref_stats[k].dtype) for k, v in stats.items()}
            other = ref_stats
        else:
            assert ref_features is not None
            other = fidelity.metric_fid.fid_features_to_statistics(ref_features)
        row.fid = fidelity.metric_fid.fid_statistics_to_metric(stats, other, False)["frechet_inception_distance"]
        if kid:
            assert ref_features is not None
            subset = min(1000, len(features), len(ref_features))
            k = fidelity.metric_kid.kid_features_to_metric(
                features, ref_features, kid_subset_size=subset, verbose=False
            )
            row.kid_mean, row.kid_std = k["kernel_inception_distance_mean"], k["kernel_inception_distance_std"]
        if prc:
            assert ref_features is not None
            p = fidelity.metric_prc.prc_features_to_metric(features, ref_features, verbose=False)
            row.precision, row.recall, row.f_score = p["precision"], p["recall"], p["f_score"]
        rows.append(row)
    return FidReport(
        rows,
        num,
        seed,
        ref_info,
        extractor.record(),
        provenance,
        time.perf_counter() - started,
        {"kid": kid, "prc": prc, "resize": resize, "split": split, "sample_set": str(folder) if folder else None},
    )


def _sampled_features(
    model: Any,
    options: dict[str, Any],
    temperatures: Sequence[Any],
    batch_size: int | None,
    extractor: _Extractor,
    state: str | os.PathLike | None,
    resume: bool,
    progress: bool,
) -> list[tuple[Any, torch.Tensor]]:
    """The features of each temperature's samples, continuing from `state` with `resume`; the state is written when
    interrupted and every STATE_EVERY_S seconds, and removed when done."""
    from safetensors.torch import load as load_tensors
    from safetensors.torch import save as save_tensors

    from ..data.progress import progress_bar

    num, seed = options["num"], options["seed"]
    pass_size = check_batch_size(batch_size, model.config, model.device, seeded=True)
    done: dict[str, torch.Tensor] = {}
    state_path = Path(state) if state is not None else None
    if resume and state_path is not None and state_path.is_file():
        from safetensors import safe_open

        with safe_open(str(state_path), "pt") as f:
            recorded = (f.metadata() or {}).get("options")
        if recorded != _state_meta(options):
            raise FidError(
                f"--resume: {state_path} holds another run's features (model, num, seed, temperatures or Inception "
                "differ); use the same options, or remove it"
            )
        done = dict(load_tensors(read_user_bytes(state_path, what="fid state file", kind="weights")))

    def save_state() -> None:
        if state_path is not None:
            atomic_write(state_path, save_tensors(done, metadata={"options": _state_meta(options)}))

    last_save = time.monotonic()
    out = []
    try:
        for j, t in enumerate(temperatures):
            key = f"t{j}"
            temps = model.layer_temperatures(t)
            have = done.get(key, torch.zeros(0, 2048))  # whole chunks only
            c = model.config
            pending = np.zeros((0, c.image_size, c.image_size, c.image_channels), np.uint8)  # not yet a whole chunk
            first = len(have) // pass_size * pass_size  # the passes of an uninterrupted run, images as it drew them
            with progress_bar(total=num, initial=len(have), unit="img", desc=f"samples T={t}", enabled=progress) as bar:
                for start in range(first, num, pass_size):
                    part = range(start, min(start + pass_size, num))
                    images = model.sample(
                        len(part), temperature=temps, seeds=[image_seed(seed, i) for i in part], batch_size=pass_size
                    ).numpy()
                    new = images[max(0, len(have) + len(pending) - start) :]
                    pending = np.concatenate([pending, new])
                    whole = len(pending) if part[-1] == num - 1 else len(pending) // inception.CHUNK * inception.CHUNK
                    if whole:
                        have = torch.cat([have, extractor(pending[:whole])])
                        pending = pending[whole:]
                        done[key] = have
                    bar.update(len(new))
                    if time.monotonic() - last_save > STATE_EVERY_S:
                        save_state()
                        last_save = time.monotonic()
            out.append((t, have))
    except KeyboardInterrupt:
        save_state()
        raise
    if state_path is not None and state_path.is_file():
        state_path.unlink()
    return out
