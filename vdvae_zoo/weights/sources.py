"""Where a name points, as files: a model folder (or its `model/` subfolder), a manifest name's cached folder, a
Hub repository id, each read into a state dict with its config and provenance (`Loaded`). pretrained.py turns
what these return into a model."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import ConfigLike, VDVAEConfig, resolve_config
from ..data.files import CONFIG_NAME, MODEL_SUBFOLDER, WEIGHTS_NAME, recover_folder
from . import hub
from .manifest import Manifest, ModelEntry, valid_name
from .original import read_checkpoint
from .provenance import Provenance, named_provenance

__all__ = [
    "ArchitectureWarning",
    "Loaded",
    "local_kind",
    "model_files",
    "read_folder",
    "named_files",
    "warn_if_not_published",
    "hub_id_folder",
]


class ArchitectureWarning(UserWarning):
    """A model loaded by name holds another architecture than the name's published hyper-parameters."""


@dataclass
class Loaded:
    """A state dict read from somewhere, with its config and where it came from."""

    state: dict[str, torch.Tensor]
    config: VDVAEConfig
    source: str
    provenance: Provenance
    label: str | None = None


def local_kind(path: Path) -> str | None:
    """ "dir", "file", or None when `path` is neither (a name too long to be a path is none either)."""
    try:
        return "dir" if path.is_dir() else "file" if path.is_file() else None
    except OSError:
        return None


def model_files(folder: Path) -> Path:
    """The folder that holds the model files: `folder`, or its MODEL_SUBFOLDER when only that has them (one that a
    crash left set aside between the two renames of its replacement is put back first)."""
    if not (folder / WEIGHTS_NAME).is_file():
        recover_folder(folder / MODEL_SUBFOLDER)
    if not (folder / WEIGHTS_NAME).is_file() and (folder / MODEL_SUBFOLDER / WEIGHTS_NAME).is_file():
        return folder / MODEL_SUBFOLDER
    return folder


def read_folder(folder: Path, config: ConfigLike = None, name: str | None = None, kind: str = "folder") -> Loaded:
    folder = model_files(folder)
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{folder} has no {WEIGHTS_NAME}; a model folder holds {CONFIG_NAME} + {WEIGHTS_NAME}")
    if config is None and not (folder / CONFIG_NAME).exists():  # not is_file(): the reader names a FIFO as such
        raise FileNotFoundError(
            f"{folder} has no {CONFIG_NAME}; pass config= (the config the weights were trained with)"
        )
    provenance = Provenance(kind, name or str(folder), str(weights), hub.file_sha256(weights))
    return Loaded(
        read_checkpoint(weights),
        resolve_config(config if config is not None else folder / CONFIG_NAME),
        str(weights),
        provenance,
    )


def named_files(entry: ModelEntry, folder: Path, config: VDVAEConfig | None, revision: str | None) -> Loaded:
    """What a manifest name loads: its cached folder's state dict (none when `config` is given: the model
    converted just now is already built), its config and provenance."""
    loaded_config = config or resolve_config(folder / CONFIG_NAME)
    provenance = named_provenance(entry, folder, loaded_config, revision)
    state = {} if config is not None else read_checkpoint(folder / WEIGHTS_NAME)
    return Loaded(state, loaded_config, str(folder / WEIGHTS_NAME), provenance, provenance.architecture)


def warn_if_not_published(entry: ModelEntry, config: VDVAEConfig) -> None:
    """One sentence when the weights behind `entry` hold another architecture than its name promises."""
    published = entry.resolve_config()
    if config == published:
        return
    candidate = entry.candidate_for(config)
    what = (
        candidate.note
        if candidate and candidate.note
        else f"its file holds another architecture than the published hyper-parameters "
        f"({config.image_size}x{config.image_size}, {config.num_layers} stochastic layers instead of "
        f"{published.image_size}x{published.image_size}, {published.num_layers})"
    )
    warnings.warn(
        f"{entry.name}: {what}. The model loaded is the one the file holds (`vdvae-zoo info {entry.name}` shows it).",
        ArchitectureWarning,
        stacklevel=4,
    )


def hub_id_folder(text: str, man: Manifest, revision, cache_dir, local_files_only) -> Path:
    """`text` is no local path and no manifest name: fetch it as a Hub repository id `owner/name`, or say why not."""
    looks_like_path = text.endswith((".th", ".pt", ".pth", ".safetensors", ".json")) or text.startswith((".", "/", "~"))
    first_part_is_local = "/" in text and local_kind(Path(text.split("/")[0]).expanduser()) == "dir"
    if len(text) > 200:
        raise FileNotFoundError(
            f"{text[:60]}... ({len(text):,} characters) is neither a local path nor a model name "
            "nor a Hub repository id"
        )
    not_an_id = "/" in text and not all(valid_name(part) for part in text.split("/"))  # "tiyn/", "a/ b"
    if looks_like_path or text.count("/") > 1 or first_part_is_local or not_an_id:
        raise FileNotFoundError(
            f"{text} does not exist: it is neither a local folder or file, nor a known model "
            "name, nor a Hub repository id 'owner/name'"
        )
    if "/" not in text:
        man.get(text)  # raises UnknownModelError naming the known models and the closest match
    try:
        return hub.fetch_hub_folder(text, revision, cache_dir=cache_dir, local_files_only=local_files_only, name=text)
    except hub.NotCachedError:
        raise hub.NotCachedError(
            f"{text} is not a local path nor a known model name; taken as a Hub repository id, "
            "it is not in the local cache and downloads are off (HF_HUB_OFFLINE=1 or "
            "local_files_only=True)"
        ) from None
    except (OSError, ValueError) as e:
        if isinstance(e, hub.IntegrityError):
            raise
        raise ConnectionError(
            f"{text} is not a local path nor a known model name; taken as a Hub repository id, it "
            f"could not be fetched ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from None
