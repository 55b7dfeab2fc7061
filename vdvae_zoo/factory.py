"""Making a model from what a user names: `load` (a released name, a folder, a file, a Hub repository id) and
`list_models` (the names `load` accepts), as timm's `create_model` / `list_models`."""

from __future__ import annotations

import os
from typing import Any

import torch

from .model import VDVAE
from .nn.runtime import DTypeLike, compute_dtype
from .weights.manifest import load_manifest

__all__ = ["load", "list_models"]


def load(
    name_or_path: str | os.PathLike[str],
    *,
    device: None | str | torch.device = None,
    dtype: DTypeLike = None,
    channels_last: bool | None = None,
    compile: bool = False,
    config: Any = None,
    revision: str | None = None,
    cache_dir: None | str | os.PathLike[str] = None,
    local_files_only: bool = False,
    manifest: Any = None,
    output_loading_info: bool = False,
) -> VDVAE:
    """Load a VDVAE ready for inference: `VDVAE.from_pretrained` (a manifest name, a folder, a file, a Hub
    repository id; see there), then `optimize(dtype=, channels_last=, compile=)`.

    - `device`: None puts the model on CUDA when a GPU is present, else the CPU (a model zoo for sampling and
      scoring: the GPU is where it is used); 'cpu', 'cuda', 'cuda:1' choose.
    - `dtype`: 'bfloat16' computes the convolutions in bf16 (the weights stay float32).
    - `config`: the architecture of an original .th file (usually recognised from its tensors).
    - `revision`, `cache_dir`, `local_files_only`: as huggingface_hub's (`local_files_only=True` or HF_HUB_OFFLINE=1
      never touches the network); `manifest`: another weights manifest (a private zoo).
    - `output_loading_info`: return (model, LoadReport)."""
    compute_dtype(dtype)  # a wrong value fails before any download
    loaded = VDVAE.from_pretrained(
        name_or_path,
        config=config,
        device=device,
        revision=revision,
        cache_dir=cache_dir,
        local_files_only=local_files_only,
        manifest=manifest,
        output_loading_info=output_loading_info,
    )
    model = loaded[0] if output_loading_info else loaded
    model.optimize(dtype=dtype, channels_last=channels_last, compile=compile or None)
    return loaded


def list_models(pattern: str = "*", *, cached: bool | None = None, manifest: Any = None) -> list[str]:
    """Names of the released models that `load(name)` accepts (from the manifest), aliases included, as timm's
    `list_models`: `pattern` is a shell pattern (fnmatch: "cifar*", "*64*"); `cached=True` keeps the names whose
    weights are in the local cache, `cached=False` those that would be downloaded."""
    import fnmatch

    from .weights import hub

    man = load_manifest(manifest)
    names = [n for n in man.names if fnmatch.fnmatchcase(n, pattern)]
    if cached is not None:
        names = [n for n in names if hub.is_cached(man.get(n)) == cached]
    return names
