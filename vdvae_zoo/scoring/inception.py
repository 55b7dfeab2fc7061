"""Inception features for sample quality, through torch-fidelity: the network (`inception-v3-compat`, the TensorFlow
FID Inception ported bit for bit, 2048-d pool features), its weights file (read as tensors only before torch-fidelity
loads it), and the reference images' features, cached by content. scoring/fid.py turns features into numbers.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.datasets import open_dataset
from ..data.files import atomic_write, check_user_file, read_user_bytes, sha256_file
from ..data.images import as_channels

__all__ = ["FidError", "INSTALL", "CACHE_NAME", "CHUNK", "inception_weights_file", "reference_cache_dir"]

INSTALL = 'pip install "vdvae-zoo[fid]"'
EXTRACTOR = "inception-v3-compat"
FEATURE = "2048"
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"
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
