"""Where a model's weights came from (`Provenance`), recorded once where they were read (pretrained.py), and the
model cards written beside them (`model_card`): what reports, archives and the Hub say about a model."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from . import hub
from .config import VDVAEConfig, resolve_config
from .files import CONFIG_NAME, WEIGHTS_NAME
from .manifest import ModelEntry

__all__ = ["Provenance", "named_provenance", "model_card"]


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
    weights: Optional[str] = None
    sha256: Optional[str] = None
    architecture: Optional[str] = None
    source_sha256: Optional[str] = None
    entry: Optional[str] = None
    paper_bpd: Optional[float] = None

    def to_dict(self) -> Dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}


def named_provenance(entry: ModelEntry, folder: Path, config: Optional[VDVAEConfig] = None,
                     revision: Optional[str] = None) -> Provenance:
    """The provenance of manifest entry `entry` whose files are in `folder` (the cache), from the manifest and
    source.json; nothing is hashed that was checked before (a pinned, published file was checked against its
    sha256 when it was fetched)."""
    source = folder / "source.json"
    recorded = json.loads(source.read_text()) if source.is_file() else {}
    pinned = entry.hub.get("sha256") if entry.published and revision in (None, entry.hub.get("revision")) else None
    weights = folder / WEIGHTS_NAME
    label = recorded.get("architecture") or entry.label_for(config or resolve_config(folder / CONFIG_NAME))
    return Provenance("name", entry.name, str(weights), pinned or hub.file_sha256(weights), label,
                      recorded.get("sha256") or entry.source.get("sha256"), entry.name, entry.reported_test_bpd)


def model_card(config: VDVAEConfig, lines: List[str], entry: Optional[ModelEntry] = None,
               repo_id: Optional[str] = None, run: Optional[Mapping[str, Any]] = None) -> str:
    """A Hugging Face model card (README.md with YAML metadata): the family's description `lines`, what the
    manifest `entry` or a training `run` knows (base_model, data, steps, val_bpd, ...), how to load it and the
    architecture."""
    run = dict(run or {})
    name = entry.name if entry else (run.get("title") or repo_id or config.model_type)
    meta = ["---", "library_name: vdvae-zoo", f"license: {(entry.license if entry else 'mit').lower()}",
            "tags:", f"- {config.model_type}", "- vae", "- image-generation", "- likelihood"]
    if run.get("base_model"):
        meta.append(f"base_model: {run['base_model']}")
    if entry:
        meta += ["datasets:", f"- {entry.dataset}"]
        if entry.reported_test_bpd is not None:
            meta += ["model-index:", f"- name: {entry.name}", "  results:", "  - task:", "      type: density-estimation",
                     "    dataset:", f"      name: {entry.dataset}", f"      type: {entry.dataset}",
                     "    metrics:", "    - type: bpd", "      name: test bits per dim (reported)",
                     f"      value: {entry.reported_test_bpd}"]
    meta.append("---")
    body = [f"# {name}", "", *lines, ""]
    if entry:
        body += [f"- Dataset: {entry.dataset}, {entry.resolution}x{entry.resolution}, {entry.bits}-bit targets",
                 f"- Parameters: {entry.parameters:,}",
                 f"- Reported test bits per dim (ELBO): {entry.reported_test_bpd}",
                 f"- Source: converted without change from the authors' checkpoint {entry.source.get('url')}"
                 + (f" (sha256 {entry.source['sha256']})" if entry.source.get("sha256") else ""),
                 f"- Licence: {entry.license}"]
        if not entry.encoder_verified:
            body.append("- Note: the encoder of this file has not been verified against the published "
                        "hyper-parameters; sampling uses only the decoder.")
        body.append("")
    if run:
        body += ["## Training", ""] + [f"- {k.replace('_', ' ')}: {v}" for k, v in run.items() if k != "title"] + [""]
    load_name = entry.name if entry else (repo_id or "path/to/this/folder")
    body += ["## Use", "", "```python", "import vdvae_zoo", f'model = vdvae_zoo.load("{load_name}")',
             "images = model.sample(4, temperature=0.8)     # uint8 (4, H, W, 3)",
             "print(model.likelihood(images).bpd)           # bits per dim", "```", "",
             "## Architecture", "", "```json", config.to_json(), "```", ""]
    return "\n".join(meta + [""] + body)
