"""`from_pretrained` / `save_pretrained` / `push_to_hub` for VDVAE (as diffusers' ModelMixin): the model class
inherits them, so this module never imports the model.

Loading reads the weights and the config from wherever they are (a folder, a file, a manifest name, a Hub
repository), builds `cls(config)` once on the `meta` device, checks the state dict against it once
(missing / unexpected / mis-shaped keys, reported as a `LoadReport` value) and assigns the tensors. A file whose
encoder alone differs from its config loads without its encoder (sampling and decoding work), with a warning.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, TypeVar, Union

import torch

from . import hub
from .config import ConfigLike, VDVAEConfig, resolve_config
from .files import sha256_file
from .manifest import Manifest, ModelEntry, load_manifest
from .weights import (CONFIG_NAME, RUN_MODEL_FOLDER, WEIGHTS_NAME, ArchitectureMatch, LoadReport, check_state, match_architectures,
                      read_checkpoint, write_model_folder)

__all__ = ["PretrainedMixin", "ArchitectureWarning", "model_card", "pick_device"]


class ArchitectureWarning(UserWarning):
    """A model loaded by name holds another architecture than the name's published hyper-parameters."""

M = TypeVar("M", bound="PretrainedMixin")
PathLike = Union[str, os.PathLike]
ManifestLike = Union[None, PathLike, Manifest]
Loaded = Tuple[Dict[str, torch.Tensor], VDVAEConfig, str]   # state dict, config, where they came from


def pick_device(device: Union[None, str, torch.device]) -> torch.device:
    """CUDA when there is a GPU, else the CPU; or what `device` says (a clear error when it is unavailable)."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device {device!r} is not a device name (cpu, cuda, cuda:1, auto): {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} was asked for, but this PyTorch build sees no CUDA GPU; "
                         "use device='cpu' (or 'auto')")
    return device


def _read_folder(folder: Path, config: ConfigLike = None) -> Loaded:
    if not (folder / WEIGHTS_NAME).is_file() and (folder / RUN_MODEL_FOLDER / WEIGHTS_NAME).is_file():
        folder = folder / RUN_MODEL_FOLDER  # a training run's folder: its exported EMA weights
    weights = folder / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"{folder} has no {WEIGHTS_NAME}; a model folder holds {CONFIG_NAME} + {WEIGHTS_NAME}")
    if config is None and not (folder / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{folder} has no {CONFIG_NAME}; pass config= (the config the weights were trained with)")
    return read_checkpoint(weights), resolve_config(config if config is not None else folder / CONFIG_NAME), str(weights)




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


class PretrainedMixin:
    """Loading and saving in the Hugging Face layout (`config.json` + `model.safetensors` + model card).
    The class that inherits it is built as `cls(config)` or `cls(config, with_encoder=False)`."""

    config: VDVAEConfig

    # ------------------------------------------------------------------------------- architectures
    @classmethod
    def _skeleton(cls: type[M], config: VDVAEConfig, built: Optional[Dict[str, M]] = None) -> M:
        """`cls(config)` on the `meta` device (no memory), reused from `built` when it is there."""
        key = config.to_json()
        if built is not None and key in built:
            return built[key]
        with torch.device("meta"):
            model = cls(config)
        if built is not None:
            built[key] = model
        return model

    @classmethod
    def expected_shapes(cls, config: VDVAEConfig, built: Optional[dict] = None) -> Dict[str, Tuple[int, ...]]:
        """The names and shapes of the tensors a model of `config` holds."""
        return {k: tuple(v.shape) for k, v in cls._skeleton(config, built).state_dict().items()}

    @classmethod
    def identify(cls, state: Dict[str, torch.Tensor], manifest: ManifestLike = None) -> ArchitectureMatch:
        """Which known architectures (presets, manifest entries and their candidates) `state` matches exactly."""
        return match_architectures(state, load_manifest(manifest).architectures(), cls.expected_shapes)

    @classmethod
    def _choose_architecture(cls, state: Dict[str, torch.Tensor], architectures: Dict[str, VDVAEConfig],
                             source: str) -> Tuple[str, VDVAEConfig, Any, Optional[LoadReport]]:
        """The one architecture `state` matches exactly: (label, config, the meta skeleton its shapes were compared
        with, the check's report). When only encoder tensors differ from the closest one: that one, with no skeleton
        or report (it loads without its encoder). Otherwise a ValueError that says what to do."""
        built: Dict[str, Any] = {}
        match = match_architectures(state, architectures, lambda config: cls.expected_shapes(config, built))
        if match.unique:
            labels, config = match.unique
            return labels[0], config, built[config.to_json()], LoadReport(source)
        if not match.exact and match.closest is not None and match.closest[1].encoder_only:
            return match.closest[0], architectures[match.closest[0]], None, None
        raise ValueError(match.describe(source))

    # ------------------------------------------------------------------------------------------ building
    @classmethod
    def from_state_dict(cls: type[M], state: Dict[str, torch.Tensor], config: ConfigLike, *, source: str = "state dict",
                        device: Union[None, str, torch.device] = None, skeleton: Optional[M] = None,
                        report: Optional[LoadReport] = None) -> Tuple[M, LoadReport]:
        """Build `cls(config)` holding `state`, checked strictly; returns (model in eval mode, LoadReport).
        Raises ValueError listing the differences unless only encoder tensors differ. A `skeleton` (the model on
        meta) and its `report`, when the caller already built and checked them, are used instead of doing it again."""
        config = resolve_config(config)
        target = pick_device(device)
        model = skeleton if skeleton is not None else cls._skeleton(config)
        if report is None:
            report = check_state({k: tuple(v.shape) for k, v in model.state_dict().items()}, state, source)
        if report.encoder_only:
            warnings.warn(f"{source}: the encoder tensors do not match the config ({report.summary()}). The decoder "
                          "was loaded: sample() and decode() work; likelihood(), encode() and reconstruct() raise until "
                          "the model is loaded with the encoder's real enc_blocks (see `vdvae-zoo inspect FILE`).",
                          stacklevel=3)
            with torch.device("meta"):
                model = cls(config, with_encoder=False)
            state = {k: v for k, v in state.items() if k.startswith("decoder.")}
        elif not report.ok:
            shown = "\n  ".join(report.lines()[:10])
            more = f"\n  ... and {len(report.lines()) - 10} more" if len(report.lines()) > 10 else ""
            raise ValueError(f"{source} does not match the config ({len(report.lines())} differences):\n  {shown}{more}"
                             f"\nPass the config the file was trained with (`vdvae-zoo inspect {source}` shows its "
                             "structure).")
        model.load_state_dict(state, strict=True, assign=True)
        return model.to(target).eval(), report

    # ------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(cls: type[M], name_or_path: PathLike, *, config: ConfigLike = None,
                        device: Union[None, str, torch.device] = None, revision: Optional[str] = None,
                        cache_dir: Union[None, PathLike] = None, local_files_only: bool = False,
                        manifest: ManifestLike = None, output_loading_info: bool = False) -> Any:
        """Load a model (eval mode; on CUDA when there is a GPU unless `device=` says otherwise) from:

        - a model name of the manifest (`vdvae_zoo.list_models()`), downloaded once into the Hugging Face cache
          (`HF_HOME`, or `cache_dir=`) and pinned to the manifest's revision and sha256;
        - a folder holding `config.json` + `model.safetensors` (what `save_pretrained` and the trainer write);
        - a `.safetensors` file with a `config.json` beside it (or `config=`);
        - an original `.th` checkpoint, with `config=` (a preset name, dict, VDVAEConfig or config.json path) or
          without: then the one known architecture (presets, manifest entries and their candidates) whose
          names and shapes the file matches exactly is used, and several or none is an error that says why;
        - a Hub repository id `owner/name` holding config.json + model.safetensors.
        `local_files_only=True` (or HF_HUB_OFFLINE=1) never touches the network. With `output_loading_info`
        returns (model, LoadReport).
        """
        text = os.fspath(name_or_path)
        path = Path(text).expanduser()
        built = None
        if path.is_dir():
            loaded = _read_folder(path, config)
        elif path.is_file():
            loaded = cls._read_file(path, config, manifest)
        else:
            man = load_manifest(manifest)
            if text in man:
                entry = man.get(text)
                folder, built = cls._cached_folder(entry, revision, cache_dir, local_files_only, device)
                loaded = None if built else _read_folder(folder)
                _warn_if_not_published(entry, built[0].config if built else loaded[1])
            else:
                loaded = _read_folder(_hub_id_folder(text, man, revision, cache_dir, local_files_only), config)
        model, report = built or cls.from_state_dict(loaded[0], loaded[1], source=loaded[2], device=device)
        return (model, report) if output_loading_info else model

    @classmethod
    def _read_file(cls, path: Path, config: ConfigLike, manifest: ManifestLike) -> Loaded:
        state = read_checkpoint(path)
        if config is None and path.suffix == ".safetensors" and path.with_name(CONFIG_NAME).is_file():
            config = path.with_name(CONFIG_NAME)
        if config is None:
            config = cls._choose_architecture(state, load_manifest(manifest).architectures(), str(path))[1]
        return state, resolve_config(config), str(path)

    @classmethod
    def config_of(cls, path: PathLike, manifest: ManifestLike = None) -> VDVAEConfig:
        """The config a local folder or weights file would load with (config.json, or recognised from the tensors)."""
        path = Path(path)
        if path.is_dir():
            return _read_folder(path)[1]
        if path.suffix in (".json", ""):
            return resolve_config(path)
        return cls._read_file(path, None, manifest)[1]

    @classmethod
    def download(cls, name: str, *, revision: Optional[str] = None, cache_dir: Union[None, PathLike] = None,
                 local_files_only: bool = False, manifest: ManifestLike = None) -> Path:
        """Make sure model `name` is in the cache; returns the folder with its config.json + model.safetensors."""
        return cls._cached_folder(load_manifest(manifest).get(name), revision, cache_dir, local_files_only, "cpu")[0]

    @classmethod
    def _cached_folder(cls, entry: ModelEntry, revision: Optional[str], cache_dir, local_files_only: bool,
                       device) -> Tuple[Path, Optional[tuple]]:
        """The entry's model folder in the cache, fetched or converted when missing. When this call converted
        the original, the model it built and checked comes back too (so it is not built twice)."""
        if entry.published or revision is not None:
            return hub.fetch_hub_folder(entry.hub["repo_id"], revision, pinned_revision=entry.hub.get("revision"),
                                        pinned_sha256=entry.hub.get("sha256"), cache_dir=cache_dir,
                                        local_files_only=local_files_only, name=entry.name), None
        folder = hub.converted_folder(entry, cache_dir)
        done = lambda: (folder / WEIGHTS_NAME).is_file() and (folder / CONFIG_NAME).is_file()  # noqa: E731
        if done():
            return folder, None
        if hub.offline(local_files_only):
            raise hub.not_cached_error(entry.name, str(folder))
        with hub.entry_lock(entry, cache_dir):
            if done():  # another process converted it while we waited
                return folder, None
            original = hub.download_original(entry, cache_dir)
            state, url = read_checkpoint(original), entry.source["url"]
            label, config, skeleton, report = cls._choose_architecture(state, entry.architectures(), url)
            built = cls.from_state_dict(state, config, source=url, device=device, skeleton=skeleton, report=report)
            source = json.dumps({"url": url, "sha256": sha256_file(original), "architecture": label}, indent=2) + "\n"
            write_model_folder(folder, state, config, card=model_card(config, entry), extra={"source.json": source})
            original.unlink()  # the converted copy is all we need; its sha256 is kept in source.json
        return folder, built

    # -------------------------------------------------------------------------------------------- saving
    def save_pretrained(self, folder: PathLike, *, entry: Optional[ModelEntry] = None, card: bool = True,
                        overwrite: bool = True) -> Path:
        """Write config.json, model.safetensors and a model card README.md into `folder` (as a unit)."""
        return write_model_folder(folder, self.state_dict(), self.config,
                                  card=model_card(self.config, entry) if card else None, overwrite=overwrite)

    def push_to_hub(self, repo_id: str, *, entry: Optional[ModelEntry] = None, private: bool = False,
                    token: Optional[str] = None, commit_message: str = "Upload VDVAE weights") -> Dict[str, str]:
        """Upload config.json + model.safetensors + model card to the Hub. Returns the fields to pin in the
        manifest: repo_id, revision (the commit) and sha256 of model.safetensors."""
        from huggingface_hub import HfApi
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            folder = self.save_pretrained(Path(tmp) / "model", entry=entry)
            sha = sha256_file(folder / WEIGHTS_NAME)
            info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message)
        return {"repo_id": repo_id, "revision": info.oid, "sha256": sha}

    @classmethod
    def convert_original(cls, path: PathLike, config: ConfigLike, folder: PathLike, *,
                         entry: Optional[ModelEntry] = None, overwrite: bool = False,
                         manifest: ManifestLike = None) -> Path:
        """Convert an original `.th` state dict into a `config.json` + `model.safetensors` folder, tensors
        unchanged. The keys and shapes are checked against `config` first (encoder-only differences warn); with
        `config=None` the file's architecture is recognised: among `entry`'s architectures when given (the published
        one and its candidates), else among all known ones, as `from_pretrained` does."""
        if config is None and entry is not None:
            state = read_checkpoint(path)
            config = cls._choose_architecture(state, entry.architectures(), str(path))[1]
        else:
            state, config = cls._read_file(Path(path), config, manifest)[:2]
        cls.from_state_dict(state, config, source=str(path), device="cpu")  # the check; raises on a mismatch
        return write_model_folder(folder, state, config, card=model_card(config, entry), overwrite=overwrite)


def _warn_if_not_published(entry: ModelEntry, config: VDVAEConfig) -> None:
    """One sentence when the weights behind `entry` hold another architecture than its name promises."""
    published = entry.resolve_config()
    if config == published:
        return
    candidate = entry.candidate_for(config)
    what = (candidate.note if candidate and candidate.note else
            f"its file holds another architecture than the published hyper-parameters "
            f"({config.image_size}x{config.image_size}, {config.num_layers} stochastic layers instead of "
            f"{published.image_size}x{published.image_size}, {published.num_layers})")
    warnings.warn(f"{entry.name}: {what}. The model loaded is the one the file holds "
                  f"(`vdvae-zoo info {entry.name}` shows it).", ArchitectureWarning, stacklevel=4)


def _hub_id_folder(text: str, man: Manifest, revision, cache_dir, local_files_only) -> Path:
    """`text` is no local path and no manifest name: fetch it as a Hub repository id `owner/name`, or say why not."""
    looks_like_path = text.endswith((".th", ".pt", ".pth", ".safetensors", ".json")) or text.startswith((".", "/", "~"))
    first_part_is_local = "/" in text and Path(text.split("/")[0]).expanduser().is_dir()
    if looks_like_path or text.count("/") > 1 or first_part_is_local:
        raise FileNotFoundError(f"{text} does not exist: it is neither a local folder or file, nor a known model "
                                "name, nor a Hub repository id 'owner/name'")
    if "/" not in text:
        man.get(text)  # raises UnknownModelError naming the known models and the closest match
    try:
        return hub.fetch_hub_folder(text, revision, cache_dir=cache_dir, local_files_only=local_files_only, name=text)
    except hub.NotCachedError:
        raise hub.NotCachedError(f"{text} is not a local path nor a known model name; taken as a Hub repository id, "
                                 "it is not in the local cache and downloads are off (HF_HUB_OFFLINE=1 or "
                                 "local_files_only=True)") from None
    except (OSError, ValueError) as e:
        if isinstance(e, hub.IntegrityError):
            raise
        raise ConnectionError(f"{text} is not a local path nor a known model name; taken as a Hub repository id, it "
                              f"could not be fetched ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                              ) from None
