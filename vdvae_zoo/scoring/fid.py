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
- Inception sees images in fixed chunks of 64 by index (CHUNK), so no number depends on the batch size or on how
  the samples were drawn.
"""

from __future__ import annotations

import hashlib
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
from ..data.datasets import open_dataset
from ..data.files import atomic_write, check_user_file, read_user_bytes, sha256_file
from ..data.images import as_channels, find_images, load_images
from ..nn.inputs import temperature_record

__all__ = ["FidError", "FidReport", "fid", "INSTALL", "inception_weights_file", "reference_cache_dir", "CACHE_NAME"]

INSTALL = 'pip install "vdvae-zoo[fid]"'
EXTRACTOR = "inception-v3-compat"
FEATURE = "2048"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
STATE_EVERY_S = 300.0  # the state file is rewritten at most this often during a long run
#: Inception sees images i in [64 k, 64 k + 64) together, whatever passes drew them: features (and so every number)
#: do not depend on the batch size, and a sample folder gives what streamed samples give, bit for bit.
CHUNK = 64


#: What `vdvae-zoo cache` calls the reference features this module caches (`cache rm fid-references`).
CACHE_NAME = "fid-references"


def reference_cache_dir(hub_cache: str | os.PathLike | None = None) -> Path:
    """Where reference features are cached by default: beside the converted weights, in the cache `vdvae-zoo cache`
    shows ($HF_HOME/hub/vdvae-zoo-fid, or under `hub_cache`)."""
    from ..weights.hub import _root

    return _root(hub_cache) / "vdvae-zoo-fid"


class FidError(ValueError):
    """A sample-quality run that cannot start or go on: the message names the file, option or command."""


def _fidelity() -> Any:
    try:
        import torch_fidelity
    except ImportError as e:
        raise FidError(f"FID, KID and precision/recall need torch-fidelity: {INSTALL} ({e})") from None
    return torch_fidelity


def inception_weights_file(weights: str | os.PathLike | None = None) -> Path:
    """The Inception weights file: `weights`, or torch-fidelity's download in torch's hub cache (fetched once).
    Offline without it: FidError naming the URL and where to put the file."""
    if weights is not None:
        return check_user_file(weights, what="Inception weights file", kind="weights")
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    path = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE
    if not path.is_file():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.hub.download_url_to_file(URL_INCEPTION_V3, str(path), progress=False)
        except Exception as e:  # offline, a proxy, a full disk: one sentence that says what to do
            raise FidError(
                f"the Inception weights could not be downloaded ({type(e).__name__}: {str(e)[:120]}): fetch "
                f"{URL_INCEPTION_V3} and save it as {path}, or pass --inception-weights FILE"
            ) from None
    return path


class _Extractor:
    """torch-fidelity's Inception with the given weights, read as tensors only (weights_only=True) before
    torch-fidelity loads them; `sha256`: the weights file's."""

    def __init__(self, weights: str | os.PathLike | None, device: torch.device):
        fidelity = _fidelity()
        path = inception_weights_file(weights)
        try:  # a file that is anything but tensors is refused here, before torch-fidelity unpickles it
            torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise FidError(
                f"{path} is not a state dict of tensors ({type(e).__name__}); give Inception weights"
            ) from None
        self.path, self.sha256, self.device = path, sha256_file(path), device
        try:
            self.net = fidelity.utils.create_feature_extractor(
                EXTRACTOR, [FEATURE], cuda=False, feature_extractor_weights_path=str(path), verbose=False
            ).to(device)  # the model's device, cuda:1 included (torch-fidelity's cuda=True means the current one)
        except RuntimeError as e:
            raise FidError(f"{path} does not hold {EXTRACTOR}'s weights ({str(e).splitlines()[0][:120]})") from None

    def __call__(self, images: np.ndarray) -> torch.Tensor:
        """Features (n, 2048) float32 of uint8 (n, H, W, C) images, the first of which is image 64 k of its set:
        extracted CHUNK by CHUNK."""
        parts = []
        for start in range(0, len(images), CHUNK):
            chunk = as_channels(images[start : start + CHUNK], 3)
            rgb = torch.from_numpy(np.ascontiguousarray(chunk)).permute(0, 3, 1, 2).to(self.device)
            with torch.no_grad():
                out = self.net.convert_features_tuple_to_dict(self.net(rgb))
            parts.append(out[FEATURE].cpu())
        return torch.cat(parts) if parts else torch.zeros(0, 2048)

    def record(self) -> dict[str, str]:
        return {"name": f"torch-fidelity {EXTRACTOR}, pool features {FEATURE}", "weights_sha256": self.sha256}


# ------------------------------------------------------------------------------------------------ reference
def _pixels(ref: str, split: str, size: int, resize: str | None) -> tuple[list[np.ndarray], dict[str, Any]]:
    """The reference images as the model sees them (uint8 chunks) and what was read."""
    data = open_dataset(ref, split)
    chunks, skipped = [], []
    for start in range(0, len(data), CHUNK):
        images, _, bad = data.read_checked(range(start, min(start + CHUNK, len(data))), size, resize, 3)
        chunks.append(images)
        skipped += bad
    pixels = np.concatenate(chunks) if chunks else np.zeros((0, size, size, 3), np.uint8)
    chunks = [pixels[i : i + CHUNK] for i in range(0, len(pixels), CHUNK)]  # by index among the kept images
    count = sum(len(c) for c in chunks)
    if count < 2:
        reasons = "; ".join(f"{data.files[i] if data.files else i}: {why}" for i, why in skipped[:3])
        raise FidError(
            f"--ref {ref} gives {count} usable image(s) of {size}x{size} (of {len(data)}"
            + (f"; {reasons}" if reasons else "")
            + "); FID needs at least 2"
            + ("; --resize center-crop uses images of other sizes" if skipped and resize is None else "")
        )
    info = {"path": str(ref), "split": data.split, "name": data.name, "images": count, "skipped": len(skipped)}
    return chunks, info


def _reference(
    ref: str, split: str, size: int, resize: str | None, extractor: _Extractor, cache_dir: Path, progress: bool
) -> tuple[torch.Tensor | None, dict[str, Any] | None, dict[str, Any]]:
    """(features or None, (mu, sigma) from an .npz or None, what the reference is)."""
    from safetensors.torch import load as load_tensors
    from safetensors.torch import save as save_tensors

    path = Path(ref)
    if path.suffix == ".npz" and path.is_file():
        with np.load(check_user_file(path, what="reference statistics", kind="data"), allow_pickle=False) as z:
            if "mu" not in z or "sigma" not in z:
                raise FidError(f"{path} holds no mu and sigma arrays (FID statistics)")
            return None, {"mu": z["mu"], "sigma": z["sigma"]}, {"path": str(path), "statistics": "npz (mu, sigma)"}
    if path.suffix == ".safetensors" and path.is_file():
        features = load_tensors(read_user_bytes(path, what="reference statistics", kind="weights"))["features"]
        return features, None, {"path": str(path), "images": len(features), "statistics": "vdvae-zoo features"}
    chunks, info = _pixels(ref, split, size, resize)
    digest = hashlib.sha256(f"{extractor.sha256} {FEATURE} {size}".encode())
    for c in chunks:
        digest.update(np.ascontiguousarray(c).tobytes())
    cache = cache_dir / f"reference-{digest.hexdigest()[:32]}.safetensors"
    info["statistics"] = str(cache)
    if cache.is_file():
        info["cached"] = True
        return (
            load_tensors(read_user_bytes(cache, what="cached reference features", kind="weights"))["features"],
            None,
            info,
        )
    from ..data.progress import progress_bar

    parts = []
    with progress_bar(total=info["images"], unit="img", desc="reference features", enabled=progress) as bar:
        for c in chunks:
            parts.append(extractor(c))
            bar.update(len(c))
    features = torch.cat(parts)
    cache_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(cache, save_tensors({"features": features.contiguous()}, metadata={"reference": json.dumps(info)}))
    info["cached"] = False
    return features, None, info


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
                    whole = len(pending) if part[-1] == num - 1 else len(pending) // CHUNK * CHUNK
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
