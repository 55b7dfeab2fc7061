"""The cache as `vdvae-zoo cache` shows it (as `hf cache` does for the Hub's): what vdvae-zoo keeps, where, how
large, and removing a model. Converted weights live in $HF_HOME/hub/vdvae-zoo/NAME (the authors' files,
converted here; huggingface_hub's own cache tools do not see them); published ones in huggingface_hub's
models--OWNER--NAME folders."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from .hub import CacheDir, _inside, _root, hub_repo_folder
from .manifest import Manifest

__all__ = ["CachedModel", "cached_models", "remove_cached"]


@dataclass
class CachedModel:
    """One model vdvae-zoo keeps in the cache: its `name`, `kind` ("converted": the authors' file converted here,
    under CACHE/vdvae-zoo/NAME; "hub": a Hub repository huggingface_hub keeps, models--OWNER--NAME), its folder,
    and its size in bytes."""

    name: str
    kind: str
    path: Path
    size: int


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())


def cached_models(manifest: Manifest, cache_dir: CacheDir = None) -> list[CachedModel]:
    """What vdvae-zoo keeps in the cache (`vdvae-zoo cache`): converted folders, and the Hub repositories of the
    manifest's published entries. Nothing is read but the folders' sizes."""
    root = _root(cache_dir)
    found = []
    converted = root / "vdvae-zoo"
    if converted.is_dir():
        for folder in sorted(p for p in converted.iterdir() if p.is_dir() and not p.is_symlink()):
            found.append(CachedModel(folder.name, "converted", folder, _folder_bytes(folder)))
    for entry in manifest.entries:
        repo = hub_repo_folder(entry.hub["repo_id"], cache_dir) if entry.published else None
        if repo is not None and repo.is_dir():
            found.append(CachedModel(entry.name, "hub", repo, _folder_bytes(repo)))
    return found


def remove_cached(name: str, manifest: Manifest, cache_dir: CacheDir = None) -> list[CachedModel]:
    """Delete what the cache holds of model `name` (its converted folder and, for a published entry, its Hub
    repository); returns what was removed. A name the cache does not hold is a ValueError naming what it holds."""
    root = _root(cache_dir)
    held = cached_models(manifest, cache_dir)
    mine = [m for m in held if m.name == name]
    if not mine:
        names = sorted({m.name for m in held})
        raise ValueError(f"the cache {root} holds no model {name!r}" + (f"; it holds {', '.join(names)}" if names
                                                                          else "; it is empty"))  # fmt: skip
    for m in mine:
        shutil.rmtree(_inside(m.path, root))
    return mine
