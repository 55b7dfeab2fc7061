"""Getting weights into a VDVAE: by name (manifest -> Hugging Face Hub, or the authors' original file as a
fallback), from a local folder (`config.json` + `model.safetensors`), a `.safetensors` file, or an original
`.th` state dict. Also saving, converting and publishing.

Safety: original `.th` files are read with `torch.load(..., weights_only=True)` only; a file holding
pickled objects other than tensors is refused. Everything we write is safetensors + JSON.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch

from .config import PRESETS, VDVAEConfig
from .model import VDVAE, compute_dtype

__all__ = [
    "load", "download", "Manifest", "ModelEntry", "load_manifest", "read_checkpoint", "load_weights",
    "save_pretrained", "push_to_hub", "convert_original", "model_card", "sha256_file", "IntegrityError", "UnknownModelError",
    "default_cache_dir",
]

ConfigLike = Union[None, str, Dict[str, Any], VDVAEConfig, os.PathLike]
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


class IntegrityError(ValueError):
    """A downloaded file does not have the sha256 the manifest pins."""


class UnknownModelError(ValueError):
    """A name that is neither a model of the manifest, nor an existing path, nor a Hub repository id."""


# ------------------------------------------------------------------------------------------------------------
# Configs and state dicts
# ------------------------------------------------------------------------------------------------------------

def resolve_config(config: ConfigLike) -> VDVAEConfig:
    """A VDVAEConfig from a preset name, a dict, a VDVAEConfig or the path of a config.json."""
    if isinstance(config, VDVAEConfig):
        return config
    if isinstance(config, dict):
        return VDVAEConfig.from_dict(config)
    if isinstance(config, (str, os.PathLike)):
        text = str(config)
        if Path(text).is_file():
            return VDVAEConfig.from_json(Path(text))
        if text.endswith(".json"):
            raise FileNotFoundError(f"config file {text} does not exist")
        return VDVAEConfig.from_preset(text)
    raise ValueError("config= must be a preset name (" + ", ".join(PRESETS) + "), a dict, a VDVAEConfig or the "
                     f"path of a config.json; got {type(config).__name__}")


def read_checkpoint(path: Union[str, os.PathLike]) -> Dict[str, torch.Tensor]:
    """Read a state dict from an original `.th`/`.pt` file (never unpickling anything but tensors) or a
    `.safetensors` file, on the CPU. The `module.` prefix of DistributedDataParallel checkpoints is stripped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        try:
            state = load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise ValueError(f"cannot read {path} as safetensors: {e}") from None
    else:
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(
                f"refused to load {path}: it is not a plain state dict of tensors that can be read safely "
                f"(torch.load with weights_only=True failed: {str(e).splitlines()[0]}). Only files holding tensors "
                "are accepted; arbitrary pickled objects are never unpickled.") from None
        if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
            state = state["state_dict"]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError(f"{path} does not hold a state dict (a dict of name -> tensor); found "
                             f"{type(state).__name__}")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def _mismatches(expected: Dict[str, torch.Size], found: Dict[str, torch.Tensor]) -> List[str]:
    problems = []
    for k in expected:
        if k not in found:
            problems.append(f"missing {k} {tuple(expected[k])}")
        elif tuple(found[k].shape) != tuple(expected[k]):
            problems.append(f"{k}: file has shape {tuple(found[k].shape)}, config expects {tuple(expected[k])}")
    problems += [f"unexpected {k} {tuple(found[k].shape)}" for k in found if k not in expected]
    return problems


def load_weights(model: VDVAE, state: Dict[str, torch.Tensor], source: str = "checkpoint") -> VDVAE:
    """Copy `state` into `model`, strictly. If only encoder tensors differ from the config, the decoder is
    loaded, a warning is given and the encoder is marked unusable (sampling and decoding still work).
    Any other difference raises ValueError listing the first mismatches."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    problems = _mismatches(expected, state)
    if not problems:
        model.load_state_dict(state, strict=True)
        model.encoder_mismatch = None
        return model
    decoder_problems = [p for p in problems if not _names_encoder_key(p)]
    if decoder_problems:
        shown = "\n  ".join(decoder_problems[:10])
        more = f"\n  ... and {len(decoder_problems) - 10} more" if len(decoder_problems) > 10 else ""
        raise ValueError(f"{source} does not match the config ({len(problems)} differences):\n  {shown}{more}\n"
                         "Pass the config the file was trained with (`vdvae-zoo inspect FILE` shows its structure).")
    decoder_state = {k: v for k, v in state.items() if k.startswith("decoder.")}
    model.decoder.load_state_dict({k[len("decoder."):]: v for k, v in decoder_state.items()}, strict=True)
    summary = "; ".join(problems[:3]) + (f"; ... ({len(problems)} differences)" if len(problems) > 3 else "")
    model.encoder_mismatch = f"{source}: {summary}"
    warnings.warn(f"{source}: the encoder tensors do not match the config ({summary}). The decoder was loaded: "
                  "sample() and decode() work; likelihood(), encode() and reconstruct() will raise until the model is "
                  "loaded with the encoder's real enc_blocks (see `vdvae-zoo inspect FILE`).", stacklevel=3)
    return model


def _names_encoder_key(problem: str) -> bool:
    key = problem.split(" ")[1] if problem.startswith(("missing ", "unexpected ")) else problem.split(":")[0]
    return key.startswith("encoder.")


def _pick_device(device: Union[None, str, torch.device]) -> torch.device:
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _build(config: VDVAEConfig, state: Dict[str, torch.Tensor], source: str, device) -> VDVAE:
    with torch.device("meta"):
        model = VDVAE(config)
    model = model.to_empty(device="cpu")
    load_weights(model, state, source)
    model = model.to(device=_pick_device(device))
    return model.eval()


# ------------------------------------------------------------------------------------------------------------
# The manifest
# ------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ModelEntry:
    """One released model of the manifest."""

    name: str
    preset: str
    dataset: str
    resolution: int
    bits: int
    parameters: int
    reported_test_bpd: Optional[float]
    license: str
    hub: Dict[str, Any]
    source: Dict[str, Any]
    aliases: tuple = ()
    encoder_verified: bool = True
    notes: str = ""
    config: Optional[Dict[str, Any]] = None  # an explicit architecture, for models that are not a preset

    def resolve_config(self) -> VDVAEConfig:
        return VDVAEConfig.from_dict(self.config) if self.config else VDVAEConfig.from_preset(self.preset)

    @property
    def published(self) -> bool:
        """True once converted weights are on the Hub, pinned by revision and sha256."""
        return bool(self.hub.get("revision")) and bool(self.hub.get("sha256"))


_REQUIRED = {"name": str, "preset": str, "dataset": str, "resolution": int, "bits": int, "parameters": int,
             "license": str, "hub": dict, "source": dict}


class Manifest:
    """The pinned list of released models (`weights_manifest.json`)."""

    def __init__(self, entries: List[ModelEntry], path: str = "<memory>"):
        self.entries, self.path = entries, path
        self._by_name: Dict[str, ModelEntry] = {}
        for e in entries:
            for n in (e.name, *e.aliases):
                if n in self._by_name:
                    raise ValueError(f"{path}: model name {n!r} appears twice")
                self._by_name[n] = e

    @classmethod
    def from_json(cls, data: Dict[str, Any], path: str = "<memory>") -> "Manifest":
        if not isinstance(data, dict) or not isinstance(data.get("models"), list):
            raise ValueError(f"{path}: a manifest is a JSON object with a 'models' list")
        entries = []
        for i, m in enumerate(data["models"]):
            where = f"{path}: models[{i}]" + (f" ({m.get('name')})" if isinstance(m, dict) and "name" in m else "")
            if not isinstance(m, dict):
                raise ValueError(f"{where} must be an object")
            for key, typ in _REQUIRED.items():
                if key not in m:
                    raise ValueError(f"{where} lacks the field {key!r}")
                if not isinstance(m[key], typ) or isinstance(m[key], bool):
                    raise ValueError(f"{where}: field {key!r} must be {typ.__name__}, got {m[key]!r}")
            if "config" in m:
                if not isinstance(m["config"], dict):
                    raise ValueError(f"{where}: config must be an object of hyper-parameters")
                try:
                    VDVAEConfig.from_dict(m["config"])
                except ValueError as e:
                    raise ValueError(f"{where}: invalid config: {e}") from None
            elif m["preset"] not in PRESETS:
                raise ValueError(f"{where}: preset {m['preset']!r} is not one of {', '.join(PRESETS)}")
            if m["bits"] not in (5, 8):
                raise ValueError(f"{where}: bits must be 5 or 8, got {m['bits']}")
            hub, source = m["hub"], m["source"]
            if "repo_id" not in hub:
                raise ValueError(f"{where}: hub needs a repo_id")
            for key in ("revision", "sha256"):
                if hub.get(key) is not None and not _is_hex(hub[key], 40 if key == "revision" else 64):
                    raise ValueError(f"{where}: hub.{key} must be null or "
                                     f"{'a 40' if key == 'revision' else 'a 64'}-digit hex string, got {hub[key]!r}")
            if source.get("sha256") is not None and not _is_hex(source["sha256"], 64):
                raise ValueError(f"{where}: source.sha256 must be null or a 64-digit hex string")
            if not (hub.get("revision") and hub.get("sha256")) and not source.get("url"):
                raise ValueError(f"{where}: an entry must be published on the Hub (revision and sha256) or have a "
                                 "source.url")
            known = set(_REQUIRED) | {"reported_test_bpd", "aliases", "encoder_verified", "notes", "config"}
            unknown = set(m) - known
            if unknown:
                raise ValueError(f"{where}: unknown fields {sorted(unknown)}")
            entries.append(ModelEntry(
                name=m["name"], preset=m["preset"], dataset=m["dataset"], resolution=m["resolution"], bits=m["bits"],
                parameters=m["parameters"], reported_test_bpd=m.get("reported_test_bpd"), license=m["license"],
                hub=dict(hub), source=dict(source), aliases=tuple(m.get("aliases", ())),
                encoder_verified=bool(m.get("encoder_verified", True)), notes=m.get("notes", ""),
                config=m.get("config")))
        return cls(entries, path)

    @classmethod
    def from_file(cls, path: Union[str, os.PathLike]) -> "Manifest":
        try:
            data = json.loads(Path(path).read_text())
        except OSError as e:
            raise FileNotFoundError(f"cannot read manifest {path}: {e}") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"manifest {path} is not valid JSON: {e}") from None
        return cls.from_json(data, str(path))

    @property
    def names(self) -> List[str]:
        return list(self._by_name)

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def get(self, name: str) -> ModelEntry:
        if name in self._by_name:
            return self._by_name[name]
        close = difflib.get_close_matches(name, self.names, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownModelError(f"unknown model {name!r}.{hint} Known models: {', '.join(self.names)}. "
                       "A local path must exist; a Hub repository id looks like 'owner/name'.")


def _is_hex(value: Any, length: int) -> bool:
    return isinstance(value, str) and len(value) == length and all(c in "0123456789abcdef" for c in value.lower())


def load_manifest(path: Union[None, str, os.PathLike] = None) -> Manifest:
    """The manifest shipped with the package, or the one at `path`."""
    if path is not None:
        return Manifest.from_file(path)
    text = resources.files("vdvae_zoo").joinpath("weights_manifest.json").read_text()
    return Manifest.from_json(json.loads(text), "vdvae_zoo/weights_manifest.json")


# ------------------------------------------------------------------------------------------------------------
# Files, hashes, caches
# ------------------------------------------------------------------------------------------------------------

def sha256_file(path: Union[str, os.PathLike]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def default_cache_dir() -> Path:
    """Where downloads go: $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub (read at call time)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def _offline(local_files_only: bool) -> bool:
    return local_files_only or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------------------------------
# Saving, model cards, conversion, publishing
# ------------------------------------------------------------------------------------------------------------

def model_card(config: VDVAEConfig, entry: Optional[ModelEntry] = None, repo_id: Optional[str] = None) -> str:
    """A Hugging Face model card (README.md with YAML metadata) for a VDVAE."""
    name = entry.name if entry else (repo_id or "vdvae")
    meta = ["---", "library_name: vdvae-zoo", f"license: {(entry.license if entry else 'mit').lower()}",
            "tags:", "- vdvae", "- vae", "- image-generation", "- likelihood"]
    if entry:
        meta += ["datasets:", f"- {entry.dataset}"]
        if entry.reported_test_bpd is not None:
            meta += ["model-index:", f"- name: {entry.name}", "  results:", "  - task:", "      type: density-estimation",
                     "    dataset:", f"      name: {entry.dataset}", f"      type: {entry.dataset}",
                     "    metrics:", "    - type: bpd", "      name: test bits per dim (reported)",
                     f"      value: {entry.reported_test_bpd}"]
    meta.append("---")
    lines = [f"# {name}", "",
             "A Very Deep VAE (Child, *Very Deep VAEs Generalize Autoregressive Models and Can Outperform Them on "
             "Images*, ICLR 2021), packaged for [vdvae-zoo](https://github.com/vdvae-zoo/vdvae-zoo).", ""]
    if entry:
        lines += [f"- Dataset: {entry.dataset}, {entry.resolution}x{entry.resolution}, {entry.bits}-bit targets",
                  f"- Parameters: {entry.parameters:,}",
                  f"- Reported test bits per dim (ELBO): {entry.reported_test_bpd}",
                  f"- Source: converted without change from the authors' EMA checkpoint {entry.source.get('url')}"
                  + (f" (sha256 {entry.source['sha256']})" if entry.source.get("sha256") else ""),
                  f"- Licence: {entry.license}"]
        if not entry.encoder_verified:
            lines.append("- Note: the encoder of this file has not been verified against the published "
                         "hyper-parameters; sampling uses only the decoder.")
        lines.append("")
    load_name = entry.name if entry else (repo_id or "path/to/this/folder")
    lines += ["## Use", "", "```python", "import vdvae_zoo", f'model = vdvae_zoo.load("{load_name}")',
              "images = model.sample(4, temperature=0.8)     # uint8 (4, H, W, 3)",
              "print(model.likelihood(images).bpd)           # bits per dim", "```", "",
              "## Architecture", "", "```json", config.to_json(), "```", ""]
    return "\n".join(meta + [""] + lines)


def save_pretrained(model: VDVAE, folder: Union[str, os.PathLike], *, entry: Optional[ModelEntry] = None,
                    card: bool = True) -> Path:
    """Write `config.json`, `model.safetensors` (and a model card `README.md`) into `folder`, atomically per file."""
    from safetensors.torch import save_file
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp = folder / f".{WEIGHTS_NAME}.tmp-{os.getpid()}"
    save_file(state, str(tmp), metadata={"format": "pt", "library": "vdvae-zoo"})
    os.replace(tmp, folder / WEIGHTS_NAME)
    _atomic_write_bytes(folder / CONFIG_NAME, (model.config.to_json() + "\n").encode())
    if card:
        _atomic_write_bytes(folder / "README.md", model_card(model.config, entry).encode())
    return folder


def push_to_hub(model: VDVAE, repo_id: str, *, entry: Optional[ModelEntry] = None, private: bool = False,
                token: Optional[str] = None, commit_message: str = "Upload VDVAE weights") -> Dict[str, str]:
    """Upload config.json + model.safetensors + model card to the Hub. Returns the fields to pin in the
    manifest: repo_id, revision (the commit) and sha256 of model.safetensors."""
    from huggingface_hub import HfApi
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp, entry=entry)
        sha = sha256_file(Path(tmp) / WEIGHTS_NAME)
        info = api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message)
    return {"repo_id": repo_id, "revision": info.oid, "sha256": sha}


def convert_original(path: Union[str, os.PathLike], config: ConfigLike, folder: Union[str, os.PathLike], *,
                     entry: Optional[ModelEntry] = None) -> Path:
    """Convert an original `.th` state dict into a `config.json` + `model.safetensors` folder, unchanged
    tensors. The keys and shapes are checked against `config` first (encoder-only differences warn)."""
    cfg = resolve_config(config)
    state = read_checkpoint(path)
    with torch.device("meta"):
        model = VDVAE(cfg)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    problems = _mismatches(expected, state)
    if any(not _names_encoder_key(p) for p in problems):
        load_weights(model, state, str(path))  # raises with the list of mismatches
    if problems:
        warnings.warn(f"{path}: the encoder tensors do not match the config ({problems[0]}; {len(problems)} "
                      "differences); they are converted as they are.", stacklevel=2)
    from safetensors.torch import save_file
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{WEIGHTS_NAME}.tmp-{os.getpid()}"
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata={"format": "pt", "library": "vdvae-zoo"})
    os.replace(tmp, folder / WEIGHTS_NAME)
    _atomic_write_bytes(folder / CONFIG_NAME, (cfg.to_json() + "\n").encode())
    _atomic_write_bytes(folder / "README.md", model_card(cfg, entry).encode())
    return folder


# ------------------------------------------------------------------------------------------------------------
# Downloading
# ------------------------------------------------------------------------------------------------------------

def _fetch_url(url: str, destination: Path, expected_sha256: Optional[str] = None, timeout: float = 60.0) -> str:
    """Stream `url` to `destination` with a progress bar; the file appears only when complete (and its
    sha256 matches, when given). Returns the sha256."""
    from huggingface_hub.utils import tqdm
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = destination.with_name(f".{destination.name}.incomplete-{os.getpid()}")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            received = 0
            with tqdm(total=total, unit="B", unit_scale=True, desc=destination.name, leave=False) as bar:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            if total is not None and received != total:
                raise IOError(f"download of {url} stopped after {received} of {total} bytes")
        sha = digest.hexdigest()
        if expected_sha256 and sha != expected_sha256.lower():
            raise IntegrityError(f"{url}: sha256 {sha} does not match the manifest's {expected_sha256}; the file was "
                                 "deleted. Try again; if it persists the source changed and the manifest must be updated.")
        os.replace(tmp, destination)
        return sha
    except (urllib.error.URLError, OSError) as e:
        raise ConnectionError(f"could not download {url}: {e}") from e
    finally:
        if tmp.exists():
            tmp.unlink()


def _lock(path: Path):
    from huggingface_hub.utils import WeakFileLock
    path.parent.mkdir(parents=True, exist_ok=True)
    return WeakFileLock(str(path))


def _not_cached_error(entry: ModelEntry, what: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"model {entry.name!r} is not in the local cache ({what}) and downloads are off (local_files_only=True or "
        f"HF_HUB_OFFLINE=1). On a machine with internet run `vdvae-zoo download {entry.name}` (with the same HF_HOME "
        "or --cache-dir), or load with local_files_only=False.")


def _fetch_from_hub(entry: ModelEntry, revision: Optional[str], cache_dir: Optional[Path],
                    local_files_only: bool) -> Path:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import LocalEntryNotFoundError
    rev = revision or entry.hub["revision"]
    paths = {}
    for filename in (CONFIG_NAME, WEIGHTS_NAME):
        try:
            paths[filename] = Path(hf_hub_download(entry.hub["repo_id"], filename, revision=rev,
                                                   cache_dir=str(cache_dir or default_cache_dir()),
                                                   local_files_only=_offline(local_files_only),
                                                   endpoint=os.environ.get("HF_ENDPOINT") or None))
        except LocalEntryNotFoundError:
            if _offline(local_files_only):
                raise _not_cached_error(entry, f"{entry.hub['repo_id']}@{rev}/{filename}") from None
            raise
    weights = paths[WEIGHTS_NAME]
    pinned = entry.hub.get("sha256") if revision is None or revision == entry.hub.get("revision") else None
    if pinned:
        sha = sha256_file(weights)
        if sha != pinned.lower():
            real = weights.resolve()
            for p in {weights, real}:
                if p.exists() or p.is_symlink():
                    p.unlink()
            raise IntegrityError(f"{entry.hub['repo_id']}@{rev}/{WEIGHTS_NAME} has sha256 {sha}, but the manifest pins "
                                 f"{pinned}; the file was deleted from the cache. Try again; if it persists the "
                                 "repository no longer matches the manifest.")
    return weights.parent


def _fetch_from_source(entry: ModelEntry, cache_dir: Optional[Path], local_files_only: bool) -> Path:
    root = (cache_dir or default_cache_dir()) / "vdvae-zoo"
    folder = root / entry.name
    done = lambda: (folder / WEIGHTS_NAME).is_file() and (folder / CONFIG_NAME).is_file()  # noqa: E731
    if done():
        return folder
    if _offline(local_files_only):
        raise _not_cached_error(entry, str(folder))
    with _lock(root / f"{entry.name}.lock"):
        if done():  # another process finished it while we waited
            return folder
        url = entry.source["url"]
        original = root / "originals" / Path(url).name
        if not original.is_file():
            _fetch_url(url, original, entry.source.get("sha256"))
        staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}-", dir=root))
        try:
            convert_original(original, entry.resolve_config(), staging, entry=entry)
            (staging / "source.json").write_text(json.dumps(
                {"url": url, "sha256": sha256_file(original)}, indent=2) + "\n")
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        original.unlink()  # the converted copy is all we need; its sha256 is kept in source.json
    return folder


def download(name: str, *, revision: Optional[str] = None, cache_dir: Union[None, str, os.PathLike] = None,
             local_files_only: bool = False, manifest: Union[None, str, os.PathLike, Manifest] = None) -> Path:
    """Make sure model `name` is in the cache; returns the folder with its config.json + model.safetensors."""
    man = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    entry = man.get(name)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else None
    if entry.published or revision is not None:
        return _fetch_from_hub(entry, revision, cache, local_files_only)
    return _fetch_from_source(entry, cache, local_files_only)


def _load_folder(folder: Path, device, config: ConfigLike = None) -> VDVAE:
    cfg_path, weights = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{folder} has no {WEIGHTS_NAME}; a model folder holds {CONFIG_NAME} + {WEIGHTS_NAME}")
    if config is None and not cfg_path.is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG_NAME}; pass config= or add the config the weights were "
                                "trained with")
    cfg = resolve_config(config if config is not None else cfg_path)
    return _build(cfg, read_checkpoint(weights), str(weights), device)


def load(name_or_path: Union[str, os.PathLike], *, config: ConfigLike = None,
         device: Union[None, str, torch.device] = None, dtype: Union[None, str, torch.dtype] = None,
         revision: Optional[str] = None, cache_dir: Union[None, str, os.PathLike] = None,
         local_files_only: bool = False, manifest: Union[None, str, os.PathLike, Manifest] = None,
         channels_last: Optional[bool] = None, compile: bool = False) -> VDVAE:
    """Load a VDVAE ready for inference (eval mode, on CUDA when available unless `device=` says otherwise).

    `dtype` ('float32' default, 'bfloat16', 'float16') is the compute precision of the convolutions (autocast;
    the weights stay float32), `channels_last` the memory layout and `compile` torch.compile: see
    `VDVAE.optimize`, which can also change them later.

    `name_or_path` is one of:
    - a model name of the manifest (`vdvae_zoo.list_models()`), downloaded once into the Hugging Face cache
      (`HF_HOME`, or `cache_dir=`) and pinned to the manifest's revision and sha256;
    - a folder holding `config.json` + `model.safetensors` (what `save_pretrained` and the trainer write);
    - a `.safetensors` file with a `config.json` beside it (or `config=`);
    - an original `.th` checkpoint with `config=` (a preset name, dict, VDVAEConfig or config.json path);
    - a Hub repository id `owner/name` holding config.json + model.safetensors.
    `local_files_only=True` (or HF_HUB_OFFLINE=1) never touches the network.
    """
    compute_dtype(dtype)  # a wrong value fails before any download
    model = _load_any(name_or_path, config, device, revision, cache_dir, local_files_only, manifest)
    return model.optimize(dtype=dtype, channels_last=channels_last, compile=compile or None)


def _load_any(name_or_path, config, device, revision, cache_dir, local_files_only, manifest) -> VDVAE:
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        return _load_folder(path, device, config)
    if path.is_file():
        if path.suffix == ".safetensors":
            cfg = config if config is not None else path.with_name(CONFIG_NAME)
            if config is None and not Path(cfg).is_file():
                raise FileNotFoundError(f"{path} has no {CONFIG_NAME} beside it; pass config= (a preset name or config)")
            return _build(resolve_config(cfg), read_checkpoint(path), str(path), device)
        if config is None:
            raise ValueError(f"{path} is an original checkpoint; say which architecture it has with config= "
                             f"(a preset name: {', '.join(PRESETS)}; a dict; or a config.json path)")
        return _build(resolve_config(config), read_checkpoint(path), str(path), device)
    man = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
    if text in man:
        folder = download(text, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only, manifest=man)
        model = _load_folder(folder, device)
        return model
    looks_like_path = text.endswith((".th", ".pt", ".pth", ".safetensors", ".json")) or text.startswith((".", "/", "~"))
    if looks_like_path:
        raise FileNotFoundError(f"{text} does not exist")
    if text.count("/") == 1 and not text.startswith("/"):
        return _load_hub_repo(text, revision, cache_dir, local_files_only, device)
    man.get(text)  # raises UnknownModelError naming the known models and the closest match
    raise AssertionError("unreachable")


def _load_hub_repo(repo_id, revision, cache_dir, local_files_only, device) -> VDVAE:
    entry = ModelEntry(name=repo_id, preset="cifar10", dataset="", resolution=0, bits=8, parameters=0,
                       reported_test_bpd=None, license="", hub={"repo_id": repo_id, "revision": revision or "main"},
                       source={})
    folder = _fetch_from_hub(entry, None, Path(cache_dir) if cache_dir else None, local_files_only)
    return _load_folder(folder, device)
