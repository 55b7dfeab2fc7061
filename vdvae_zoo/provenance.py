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

__all__ = ["Provenance", "named_provenance", "model_card", "measured_result", "card_results", "add_card_result",
           "PAPER_SOURCE"]

#: The project, named as the source of the numbers it measured (a model-index source needs a URL).
PROJECT_URL = "https://github.com/vdvae-zoo/vdvae-zoo"
#: Where the released models' reported numbers come from: quoted in the cards, never measured by us.
PAPER_SOURCE = {"name": "Child (2021), Very Deep VAEs, ICLR: the paper's reported number, quoted (not measured by "
                        "vdvae-zoo)", "url": "https://arxiv.org/abs/2011.10650"}


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


def measured_result(dataset: str, split: str, value: float, *, metric: str = "bpd",
                    metric_name: str = "bits per dim (negative ELBO)", args: Optional[Mapping[str, Any]] = None,
                    command: str = "") -> Dict[str, Any]:
    """One model-index result that vdvae-zoo measured: the dataset and split, the value, the options that
    determine it (`args`: seed, samples, limit, ...), and as its source the command and the vdvae-zoo version."""
    from ._version import __version__
    return {"task": {"type": "density-estimation"},
            "dataset": {"name": dataset, "type": dataset, "split": split},
            "metrics": [{"type": metric, "name": f"{metric_name} (measured)", "value": float(value),
                         "args": dict(args or {})}],
            "source": {"name": f"measured with vdvae-zoo {__version__}: {command}".strip(": "), "url": PROJECT_URL}}


def _paper_result(entry: ModelEntry) -> Dict[str, Any]:
    return {"task": {"type": "density-estimation"}, "dataset": {"name": entry.dataset, "type": entry.dataset,
                                                                "split": "test"},
            "metrics": [{"type": "bpd", "name": "test bits per dim (reported)", "value": entry.reported_test_bpd}],
            "source": dict(PAPER_SOURCE)}


def model_card(config: VDVAEConfig, lines: List[str], entry: Optional[ModelEntry] = None,
               repo_id: Optional[str] = None, run: Optional[Mapping[str, Any]] = None,
               results: Optional[List[Dict[str, Any]]] = None) -> str:
    """A Hugging Face model card (README.md with YAML metadata): the family's description `lines`, what the
    manifest `entry` or a training `run` knows (base_model, data, steps, val_bpd, ...), how to load it and the
    architecture. Its `model-index` holds the paper's number for a released entry (quoted, with the paper as its
    source) and every measured `results` entry (`measured_result`: vdvae-zoo and the command as its source)."""
    import yaml
    run = dict(run or {})
    name = entry.name if entry else (run.get("title") or repo_id or config.model_type)
    front: Dict[str, Any] = {"library_name": "vdvae-zoo", "license": (entry.license if entry else "mit").lower(),
                             "tags": [config.model_type, "vae", "image-generation", "likelihood"]}
    if run.get("base_model"):
        front["base_model"] = run["base_model"]
    if entry:
        front["datasets"] = [entry.dataset]
    index = ([_paper_result(entry)] if entry and entry.reported_test_bpd is not None else []) + list(results or [])
    if index:
        front["model-index"] = [{"name": name, "results": index}]
    meta = ["---", yaml.safe_dump(front, sort_keys=False).rstrip("\n"), "---"]
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
    if index:
        body += ["## Results", "", "| dataset | split | metric | value | source |", "| --- | --- | --- | ---: | --- |"]
        body += [f"| {r['dataset']['name']} | {r['dataset'].get('split', '')} | {r['metrics'][0]['name']} | "
                 f"{r['metrics'][0]['value']:.4g} | {r['source']['name']} |" for r in index] + [""]
    load_name = entry.name if entry else (repo_id or "path/to/this/folder")
    body += ["## Use", "", "```python", "import vdvae_zoo", f'model = vdvae_zoo.load("{load_name}")',
             "images = model.sample(4, temperature=0.8)     # uint8 (4, H, W, 3)",
             "print(model.likelihood(images).bpd)           # bits per dim", "```", "",
             "## Architecture", "", "```json", config.to_json(), "```", ""]
    return "\n".join(meta + [""] + body)


def card_results(card_file: Path) -> List[Dict[str, Any]]:
    """The measured results (not the paper's) that a README.md model card's model-index holds."""
    import yaml
    from .files import read_small_text
    path = Path(card_file)
    if not path.is_file():
        return []
    text = read_small_text(path, what="model card")
    if not text.startswith("---"):
        return []
    try:
        front = yaml.safe_load(text.split("---", 2)[1]) or {}
    except yaml.YAMLError:
        return []
    index = front.get("model-index") if isinstance(front, dict) else None
    results = index[0].get("results", []) if isinstance(index, list) and index and isinstance(index[0], dict) else []
    return [r for r in results if isinstance(r, dict) and r.get("source", {}).get("name") != PAPER_SOURCE["name"]]


def add_card_result(folder: Path, result: Dict[str, Any], card_lines: List[str],
                    entry: Optional[ModelEntry] = None) -> Path:
    """Add a measured result to the model card of model folder `folder` (README.md rewritten atomically, the
    results already there kept; a result for the same dataset, split and metric arguments is replaced)."""
    from .files import CARD_NAME, atomic_write
    folder = Path(folder)
    config = resolve_config(folder / CONFIG_NAME)
    key = lambda r: (r["dataset"].get("name"), r["dataset"].get("split"), r["metrics"][0].get("type"),  # noqa: E731
                     json.dumps(r["metrics"][0].get("args", {}), sort_keys=True))
    kept = [r for r in card_results(folder / CARD_NAME) if key(r) != key(result)]
    return atomic_write(folder / CARD_NAME, model_card(config, card_lines, entry, results=kept + [result]))
