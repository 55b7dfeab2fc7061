"""Where a model's weights came from (`Provenance`), recorded once where they were read (pretrained.py): what
reports, archives and model cards (cards.py) say about a model."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..config import VDVAEConfig, resolve_config
from ..data.files import CONFIG_NAME, WEIGHTS_NAME, read_small_text
from . import hub
from .manifest import ModelEntry

__all__ = ["Provenance", "named_provenance"]


@dataclass
class Provenance:
    """Where a model's weights came from, recorded once by `from_pretrained` where it read them; reports,
    resumable runs and archives read it instead of working it out again.

    `kind`: "name" (a manifest entry), "hub" (a repository id), "folder", "file", or "memory" (built in Python);
    `name`: what was asked for; `weights`: the file read; `sha256`: of that file (for "memory", of the tensors,
    computed when asked); `architecture`: the label of the architecture found ("published", a candidate's name,
    "preset cifar10", ...) when it was recognised from the tensors; `source_sha256`: of the authors' original file
    it was converted from, when known; `paper_bpd`: the entry's reported test bits per dim."""

    kind: str
    name: str
    weights: str | None = None
    sha256: str | None = None
    architecture: str | None = None
    source_sha256: str | None = None
    entry: str | None = None
    paper_bpd: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def named_provenance(
    entry: ModelEntry, folder: Path, config: VDVAEConfig | None = None, revision: str | None = None
) -> Provenance:
    """The provenance of manifest entry `entry` whose files are in `folder` (the cache), from the manifest and
    source.json; nothing is hashed that was checked before (a pinned, published file was checked against its
    sha256 when it was fetched)."""
    source = folder / "source.json"
    recorded = json.loads(read_small_text(source, what="source record")) if source.exists() else {}
    pinned = entry.hub.get("sha256") if entry.published and revision in (None, entry.hub.get("revision")) else None
    weights = folder / WEIGHTS_NAME
    label = recorded.get("architecture") or entry.label_for(config or resolve_config(folder / CONFIG_NAME))
    return Provenance(
        "name",
        entry.name,
        str(weights),
        pinned or hub.file_sha256(weights),
        label,
        recorded.get("sha256") or entry.source.get("sha256"),
        entry.name,
        entry.reported_test_bpd,
    )
