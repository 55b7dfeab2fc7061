"""The weights manifest: which released models exist, where their files are, and how they are pinned.

`weights_manifest.json` (shipped in the package; `--manifest` / `manifest=` for a private zoo) lists one entry
per model. An entry is *published* when a converted copy is on the Hugging Face Hub, pinned by revision
(commit) and the sha256 of its `model.safetensors`; until then `source.url` (the authors' original `.th`) is
the fallback. Whoever wrote a manifest, it is validated here before anything uses it: names are plain
identifiers (they become cache folder names), sources are https (http only on the loopback interface).
"""

from __future__ import annotations

import difflib
import json
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from ..config import EXAMPLE_CONFIGS, PRESETS, VDVAEConfig
from ..data.files import read_small_text

__all__ = [
    "ModelEntry",
    "Candidate",
    "Manifest",
    "load_manifest",
    "manifest_data",
    "pin_entries",
    "UnknownModelError",
    "valid_name",
    "hub_id_of",
    "MANIFEST_FILE",
]

MANIFEST_FILE = "weights_manifest.json"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_LOOPBACK = ("127.", "localhost", "[::1]", "::1")


class UnknownModelError(ValueError):
    """A name that is neither a model of the manifest, nor an existing path, nor a Hub repository id."""


def hub_id_of(model: str, manifest: None | str | os.PathLike[str] | Manifest = None) -> str | None:
    """The Hub repository id a model reference stands for: a manifest name's repo_id, or the reference itself when
    it has the form owner/name and is no local path; None otherwise (a local file or folder)."""
    entries = load_manifest(manifest)
    if model in entries:
        return entries.get(model).hub.get("repo_id")
    parts = model.split("/")
    if not Path(model).exists() and len(parts) == 2 and all(re.fullmatch(r"[A-Za-z0-9][\w.-]{0,95}", p) for p in parts):
        return model
    return None


def valid_name(name: Any) -> bool:
    """A model name that is safe as a file name: letters, digits, '.', '_', '-', not starting with a dot,
    no '..', at most 100 characters."""
    return isinstance(name, str) and bool(_NAME.match(name)) and ".." not in name


def _is_hex(value: Any, length: int) -> bool:
    return isinstance(value, str) and len(value) == length and all(c in "0123456789abcdef" for c in value.lower())


def _check_url(url: Any, where: str) -> None:
    parsed = urllib.parse.urlparse(url if isinstance(url, str) else "")
    host = parsed.hostname or ""
    loopback = host.startswith(_LOOPBACK[0]) or host in ("localhost", "::1")
    if parsed.scheme == "https" or (parsed.scheme == "http" and loopback):
        return
    raise ValueError(f"{where}: source.url must be an https URL (http only for 127.0.0.1/localhost), got {url!r}")


@dataclass(frozen=True)
class Candidate:
    """An architecture a released file may hold besides the one its name promises (e.g. ffhq1024, issue #14):
    `config` is a preset name or a dict of hyper-parameters; `note` is the sentence a user reads when the file
    turns out to hold it."""

    name: str
    config: str | dict[str, Any]
    note: str = ""

    def resolve_config(self) -> VDVAEConfig:
        return (
            VDVAEConfig.from_preset(self.config) if isinstance(self.config, str) else VDVAEConfig.from_dict(self.config)
        )


@dataclass(frozen=True)
class ModelEntry:
    """One released model of the manifest."""

    name: str
    preset: str
    dataset: str
    resolution: int
    bits: int
    parameters: int
    reported_test_bpd: float | None
    license: str
    hub: dict[str, Any]
    source: dict[str, Any]
    aliases: tuple = ()
    encoder_verified: bool = True
    notes: str = ""
    config: dict[str, Any] | None = None  # an explicit architecture, for models that are not a preset
    candidates: tuple[Candidate, ...] = ()  # other architectures the file may hold (see Candidate)
    model_type: str | None = None  # the family (registry.py); None: the default family

    def resolve_config(self) -> VDVAEConfig:
        """The architecture the entry's name promises (its `config`, else its preset)."""
        return VDVAEConfig.from_dict(self.config) if self.config else VDVAEConfig.from_preset(self.preset)

    def architectures(self) -> dict[str, VDVAEConfig]:
        """{label: config} of every architecture the entry's file may hold: 'published' first, then candidates
        (built once per entry)."""
        if "_architectures" not in self.__dict__:
            object.__setattr__(
                self,
                "_architectures",
                {"published": self.resolve_config(), **{c.name: c.resolve_config() for c in self.candidates}},
            )
        return dict(self.__dict__["_architectures"])

    def candidate_for(self, config: VDVAEConfig) -> Candidate | None:
        """The candidate whose architecture is `config` (None when it is the published one, or none of them)."""
        return next((c for c in self.candidates if c.resolve_config() == config), None)

    def label_for(self, config: VDVAEConfig) -> str:
        """ "published", a candidate's name, or "not a listed candidate": which of the entry's architectures `config`
        is."""
        return next((label for label, c in self.architectures().items() if c == config), "not a listed candidate")

    @property
    def published(self) -> bool:
        """True once converted weights are on the Hub, pinned by revision and sha256."""
        return bool(self.hub.get("revision")) and bool(self.hub.get("sha256"))


_REQUIRED = {
    "name": str,
    "preset": str,
    "dataset": str,
    "resolution": int,
    "bits": int,
    "parameters": int,
    "license": str,
    "hub": dict,
    "source": dict,
}
_OPTIONAL = {"reported_test_bpd", "aliases", "encoder_verified", "notes", "config", "candidates", "model_type"}


def _entry(m: Any, where: str) -> ModelEntry:
    if not isinstance(m, dict):
        raise ValueError(f"{where} must be an object")
    for key, typ in _REQUIRED.items():
        if key not in m:
            raise ValueError(f"{where} lacks the field {key!r}")
        if not isinstance(m[key], typ) or isinstance(m[key], bool):
            raise ValueError(f"{where}: field {key!r} must be {typ.__name__}, got {m[key]!r}")
    unknown = set(m) - set(_REQUIRED) - _OPTIONAL
    if unknown:
        raise ValueError(f"{where}: unknown fields {sorted(unknown)}")
    for name in (m["name"], *m.get("aliases", ())):
        if not valid_name(name):
            raise ValueError(
                f"{where}: model name {name!r} is not a plain name (letters, digits, '.', '_', '-'; "
                "not starting with '.', no '..'); names become cache folder names"
            )
    if "config" in m:
        if not isinstance(m["config"], dict):
            raise ValueError(f"{where}: config must be an object of hyper-parameters")
        try:
            VDVAEConfig.from_dict(m["config"])
        except ValueError as e:
            raise ValueError(f"{where}: invalid config: {e}") from None
    elif m["preset"] not in PRESETS:
        raise ValueError(f"{where}: preset {m['preset']!r} is not one of {', '.join(PRESETS)}")
    candidates = []
    for j, c in enumerate(m.get("candidates", ())):
        here = f"{where}: candidates[{j}]"
        if (
            not isinstance(c, dict)
            or not isinstance(c.get("name"), str)
            or "config" not in c
            or set(c) - {"name", "config", "note"}
        ):
            raise ValueError(
                f"{here} must be an object with name, config (a preset name or hyper-parameters) and optionally note"
            )
        try:
            candidate = Candidate(c["name"], c["config"], c.get("note", ""))
            candidate.resolve_config()
        except ValueError as e:
            raise ValueError(f"{here} ({c['name']}): invalid config: {e}") from None
        candidates.append(candidate)
    if "model_type" in m and (not isinstance(m["model_type"], str) or not valid_name(m["model_type"])):
        raise ValueError(f"{where}: model_type must be a plain name such as 'vdvae', got {m['model_type']!r}")
    if m["bits"] not in (5, 8):
        raise ValueError(f"{where}: bits must be 5 or 8, got {m['bits']}")
    hub, source = m["hub"], m["source"]
    if (
        not isinstance(hub.get("repo_id"), str)
        or hub["repo_id"].count("/") != 1
        or not all(valid_name(part) for part in hub["repo_id"].split("/"))
    ):
        raise ValueError(f"{where}: hub.repo_id must be 'owner/name', got {hub.get('repo_id')!r}")
    for key, length in (("revision", 40), ("sha256", 64)):
        if hub.get(key) is not None and not _is_hex(hub[key], length):
            raise ValueError(f"{where}: hub.{key} must be null or a {length}-digit hex string, got {hub[key]!r}")
    if source.get("sha256") is not None and not _is_hex(source["sha256"], 64):
        raise ValueError(f"{where}: source.sha256 must be null or a 64-digit hex string")
    if source.get("url") is not None:
        _check_url(source["url"], where)
    if not (hub.get("revision") and hub.get("sha256")) and not source.get("url"):
        raise ValueError(f"{where}: an entry must be published on the Hub (revision and sha256) or have a source.url")
    return ModelEntry(
        name=m["name"],
        preset=m["preset"],
        dataset=m["dataset"],
        resolution=m["resolution"],
        bits=m["bits"],
        parameters=m["parameters"],
        reported_test_bpd=m.get("reported_test_bpd"),
        license=m["license"],
        hub=dict(hub),
        source=dict(source),
        aliases=tuple(m.get("aliases", ())),
        encoder_verified=bool(m.get("encoder_verified", True)),
        notes=m.get("notes", ""),
        config=m.get("config"),
        candidates=tuple(candidates),
        model_type=m.get("model_type"),
    )


@dataclass
class Manifest:
    """The pinned list of released models (`weights_manifest.json`)."""

    entries: list[ModelEntry]
    path: str = "<memory>"
    _by_name: dict[str, ModelEntry] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for e in self.entries:
            for n in (e.name, *e.aliases):
                if n in self._by_name:
                    raise ValueError(f"{self.path}: model name {n!r} appears twice")
                self._by_name[n] = e

    @classmethod
    def from_json(cls, data: dict[str, Any], path: str = "<memory>") -> Manifest:
        if not isinstance(data, dict) or not isinstance(data.get("models"), list):
            raise ValueError(f"{path}: a manifest is a JSON object with a 'models' list")
        entries = []
        for i, m in enumerate(data["models"]):
            where = f"{path}: models[{i}]" + (f" ({m.get('name')})" if isinstance(m, dict) and "name" in m else "")
            entries.append(_entry(m, where))
        return cls(entries, path)

    @property
    def names(self) -> list[str]:
        return list(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def get(self, name: str) -> ModelEntry:
        if name in self._by_name:
            return self._by_name[name]
        close = difflib.get_close_matches(name, self.names, n=1) if len(name) <= 200 else []
        hint = f" Did you mean {close[0]!r}?" if close else ""
        shown = name if len(name) <= 200 else name[:60] + f"... ({len(name):,} characters)"
        raise UnknownModelError(f"unknown model {shown!r}.{hint} Known models: {', '.join(self.names)}.")

    def architectures(self) -> dict[str, VDVAEConfig]:
        """Every architecture known by name: the presets ('preset cifar10'), the example configs ('example
        tiny32', what `vdvae-zoo new` writes), then each entry's published one and its candidates ('ffhq1024',
        'ffhq1024: A'). What a file without a config is matched against."""
        known = {f"preset {name}": VDVAEConfig.from_preset(name) for name in PRESETS}
        known.update({f"example {name}": VDVAEConfig.from_dict(d) for name, d in EXAMPLE_CONFIGS.items()})
        for e in self.entries:
            for label, config in e.architectures().items():
                known[e.name if label == "published" else f"{e.name}: {label}"] = config
        return known

    def for_resolution(self, size: int) -> ModelEntry | None:
        """The first entry (in manifest order) whose images are size x size, or None: what `--model auto` picks."""
        return next((e for e in self.entries if e.resolution == size), None)


def manifest_data(path: None | str | os.PathLike = None) -> dict[str, Any]:
    """The manifest's JSON as a dict: the shipped one, or the file at `path` (errors name the file)."""
    if path is None:
        return json.loads(resources.files("vdvae_zoo").joinpath(MANIFEST_FILE).read_text())
    try:
        return json.loads(read_small_text(path, what="manifest"))
    except OSError as e:
        raise FileNotFoundError(f"cannot read manifest {path}: {e.strerror or e}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"manifest {path} is not valid JSON: {e}") from None


_PARSED: dict[Any, Manifest] = {}


def load_manifest(manifest: None | str | os.PathLike | Manifest = None) -> Manifest:
    """The manifest shipped with the package, the one at a path, or `manifest` itself when it is one. Each file
    is read and validated once per process (again only when it changes: its size or modification time)."""
    if isinstance(manifest, Manifest):
        return manifest
    if manifest is None:
        key: Any = None
    else:
        try:
            stat = Path(manifest).stat()
            key = (str(Path(manifest).resolve()), stat.st_size, stat.st_mtime_ns)
        except OSError:
            key = ("unreadable", str(manifest))  # manifest_data says why
    if key not in _PARSED:
        where = f"vdvae_zoo/{MANIFEST_FILE}" if manifest is None else str(manifest)
        _PARSED[key] = Manifest.from_json(manifest_data(manifest), where)
    return _PARSED[key]


def pin_entries(data: dict[str, Any], pins: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """A copy of manifest JSON `data` whose entries named in `pins` carry their new pins: {name: {repo_id,
    revision, sha256, source_sha256}} (what `vdvae-zoo publish` uploads). The result is validated."""
    import copy

    updated = copy.deepcopy(data)
    unknown = set(pins) - {m.get("name") for m in updated.get("models", []) if isinstance(m, dict)}
    if unknown:
        raise ValueError(f"no manifest entry is named {', '.join(sorted(unknown))}")
    for m in updated["models"]:
        pin = pins.get(m.get("name"))
        if pin is not None:
            m["hub"].update(repo_id=pin["repo_id"], revision=pin["revision"], sha256=pin["sha256"])
            if pin.get("source_sha256"):
                m["source"]["sha256"] = pin["source_sha256"]
    Manifest.from_json(updated, "the updated manifest")
    return updated
