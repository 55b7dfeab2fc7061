"""`from_pretrained` / `save_pretrained` / `push_to_hub` (as diffusers' ModelMixin): the model class inherits
them, so this module never imports a model, and it names none of a model family's tensors: what differs by
family comes from the class's hooks (`model_type`, `optional_part`, `signature`, `card_lines`,
`filter_checkpoint`), and `registry.py` maps a config's `model_type` to its class.

Loading reads the weights and the config from wherever they are (a folder, a file, a manifest name, a Hub
repository), builds `cls(config)` once on the `meta` device, checks the state dict against it once
(missing / unexpected / mis-shaped keys, reported as a `LoadReport` value) and assigns the tensors. A file whose
differences all lie in the class's `optional_part` (VDVAE: the encoder) loads without that part, with a warning.
Where the weights came from is recorded once, as the model's `provenance`.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from ..config import ConfigLike, VDVAEConfig, resolve_config
from ..data.files import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME
from . import hub, registry
from .cards import card_results, model_card
from .manifest import Manifest, ModelEntry, load_manifest
from .original import (
    ArchitectureMatch,
    LoadReport,
    check_state,
    match_architectures,
    read_checkpoint,
    tensor_sha256,
    write_model_folder,
)
from .provenance import Provenance, named_provenance
from .sources import (
    ArchitectureWarning,
    Loaded,
    hub_id_folder,
    local_kind,
    model_files,
    named_files,
    read_folder,
    warn_if_not_published,
)

__all__ = ["PretrainedMixin", "ArchitectureWarning", "Provenance", "model_card", "pick_device", "named_provenance"]
# Provenance and named_provenance live in provenance.py, model_card in cards.py; they are re-exported here, where
# loading uses them.


M = TypeVar("M", bound="PretrainedMixin")
PathLike = str | os.PathLike
ManifestLike = PathLike | Manifest | None


def pick_device(device: None | str | torch.device) -> torch.device:
    """CUDA when there is a GPU, else the CPU; or what `device` says (a clear error when it is unavailable)."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device {device!r} is not a device name (cpu, cuda, cuda:1, auto): {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device {str(device)!r} was asked for, but this PyTorch build sees no CUDA GPU; "
            "use device='cpu' (or 'auto')"
        )
    return device


if TYPE_CHECKING:  # the class that inherits the mixin is an nn.Module built as cls(config)

    class _ModuleBase(torch.nn.Module):
        def __init__(self, *args: Any, **kwargs: Any) -> None: ...
else:
    _ModuleBase = object


class PretrainedMixin(_ModuleBase):
    """Loading and saving in the Hugging Face layout (`config.json` + `model.safetensors` + model card).
    The class that inherits it is built as `cls(config)`, and says through these hooks what is its own:"""

    config: VDVAEConfig
    #: The `model_type` of its config.json (registry.py).
    model_type: str = ""
    #: A key prefix naming a part the model can run without (VDVAE: "encoder."); a file whose differences from the
    #: config all lie under it loads without that part, built as `cls(config, **optional_part_off)`.
    optional_part: str = ""
    optional_part_off: dict[str, Any] = {}
    #: What is lost without the optional part, for the warning.
    optional_part_note: str = ""

    @staticmethod
    def signature(shapes: Mapping[str, tuple]) -> tuple | None:
        """A cheap summary of a state dict's names and shapes that equal ones share (None: no quick check)."""
        return None

    @staticmethod
    def config_signature(config: VDVAEConfig) -> tuple | None:
        """What `signature` gives for a model of `config`, without building it."""
        return None

    @staticmethod
    def card_lines(config: VDVAEConfig) -> list[str]:
        """The model card's description of the family."""
        return []

    @staticmethod
    def filter_checkpoint(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The tensors of a read checkpoint that belong to the model (the family drops what it never holds)."""
        return state

    @property
    def provenance(self) -> Provenance:
        """Where the weights came from (set by `from_pretrained`); for a model built in Python, the sha256 of its
        tensors as they are now."""
        recorded = self.__dict__.get("_provenance")
        return recorded if recorded is not None else Provenance("memory", "in memory", sha256=tensor_sha256(self))

    # ------------------------------------------------------------------------------- architectures
    @classmethod
    def _skeleton(cls: type[M], config: VDVAEConfig, built: dict[str, M] | None = None) -> M:
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
    def expected_shapes(cls, config: VDVAEConfig, built: dict | None = None) -> dict[str, tuple[int, ...]]:
        """The names and shapes of the tensors a model of `config` holds."""
        return {k: tuple(v.shape) for k, v in cls._skeleton(config, built).state_dict().items()}

    @classmethod
    def _match(
        cls,
        state: Mapping[str, torch.Tensor],
        architectures: dict[str, VDVAEConfig],
        shapes: Callable[[VDVAEConfig], Mapping[str, tuple]],
    ) -> ArchitectureMatch:
        quick = (
            (cls.signature, cls.config_signature)
            if cls.config_signature(next(iter(architectures.values()))) is not None
            else None
        )
        return match_architectures(state, architectures, shapes, quick)

    @classmethod
    def identify(cls, state: dict[str, torch.Tensor], manifest: ManifestLike = None) -> ArchitectureMatch:
        """Which known architectures (presets, manifest entries and their candidates) `state` matches exactly."""
        return cls._match(state, load_manifest(manifest).architectures(), cls.expected_shapes)

    @classmethod
    def _choose_architecture(
        cls, state: dict[str, torch.Tensor], architectures: dict[str, VDVAEConfig], source: str
    ) -> tuple[str, VDVAEConfig, Any, LoadReport | None]:
        """The one architecture `state` matches exactly: (label, config, the meta skeleton its shapes were compared
        with, the check's report). When only the optional part differs from the closest one: that one, with no
        skeleton or report (it loads without that part). Otherwise a ValueError that says what to do."""
        built: dict[str, Any] = {}
        match = cls._match(state, architectures, lambda config: cls.expected_shapes(config, built))
        if match.unique:
            labels, config = match.unique
            return labels[0], config, built[config.to_json()], LoadReport(source)
        if not match.exact and match.closest is not None and match.closest[1].only_under(cls.optional_part):
            return match.closest[0], architectures[match.closest[0]], None, None
        raise ValueError(match.describe(source))

    # ------------------------------------------------------------------------------------------ building
    @classmethod
    def from_state_dict(
        cls: type[M],
        state: dict[str, torch.Tensor],
        config: ConfigLike,
        *,
        source: str = "state dict",
        device: None | str | torch.device = None,
        skeleton: M | None = None,
        report: LoadReport | None = None,
    ) -> tuple[M, LoadReport]:
        """Build `cls(config)` holding `state`, checked strictly; returns (model in eval mode, LoadReport).
        Raises ValueError listing the differences unless they all lie in the optional part. A `skeleton` (the
        model on meta) and its `report`, when the caller already built and checked them, are used instead."""
        config = resolve_config(config)
        target = pick_device(device)
        state = cls.filter_checkpoint(state)
        model = skeleton if skeleton is not None else cls._skeleton(config)
        if report is None:
            report = check_state({k: tuple(v.shape) for k, v in model.state_dict().items()}, state, source)
        if report.only_under(cls.optional_part):
            warnings.warn(
                f"{source}: the {cls.optional_part.rstrip('.')} tensors do not match the config "
                f"({report.summary()}). {cls.optional_part_note}",
                stacklevel=3,
            )
            with torch.device("meta"):
                model = cls(config, **cls.optional_part_off)
            state = {k: v for k, v in state.items() if not k.startswith(cls.optional_part)}
        elif not report.ok:
            shown = "\n  ".join(report.lines()[:10])
            more = f"\n  ... and {len(report.lines()) - 10} more" if len(report.lines()) > 10 else ""
            raise ValueError(
                f"{source} does not match the config ({len(report.lines())} differences):\n  {shown}{more}"
                f"\nPass the config the file was trained with (`vdvae-zoo inspect {source}` shows its "
                "structure)."
            )
        model.load_state_dict(state, strict=True, assign=True)
        return model.to(target).eval(), report

    # ------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_pretrained(
        cls: type[M],
        name_or_path: PathLike,
        *,
        config: ConfigLike = None,
        device: None | str | torch.device = None,
        revision: str | None = None,
        cache_dir: None | PathLike = None,
        local_files_only: bool = False,
        manifest: ManifestLike = None,
        output_loading_info: bool = False,
    ) -> Any:
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
        returns (model, LoadReport). The model's `provenance` records where its weights came from.
        """
        text = os.fspath(name_or_path)
        path = Path(text).expanduser()
        kind = local_kind(path)
        built = None
        other = cls._other_family(path) if kind == "dir" and config is None else None
        if other is not None:
            return other.from_pretrained(
                name_or_path, device=device, manifest=manifest, output_loading_info=output_loading_info
            )
        if kind == "dir":
            loaded = read_folder(path, config, text)
        elif kind == "file":
            loaded = cls._read_file(path, config, manifest)
        else:
            man = load_manifest(manifest)
            if text in man:
                entry = man.get(text)
                folder, built = cls._cached_folder(entry, revision, cache_dir, local_files_only, device)
                loaded = named_files(entry, folder, built[0].config if built else None, revision)
                warn_if_not_published(entry, loaded.config)
            else:
                folder = hub_id_folder(text, man, revision, cache_dir, local_files_only)
                loaded = read_folder(folder, config, text, kind="hub")
        model, report = built or cls.from_state_dict(loaded.state, loaded.config, source=loaded.source, device=device)
        model.__dict__["_provenance"] = loaded.provenance
        return (model, report) if output_loading_info else model

    @classmethod
    def _other_family(cls, folder: Path) -> type[PretrainedMixin] | None:
        """The registered class of the folder's config.json `model_type`, when that is another family than this
        class (None: this class, or no model_type stated, which old folders are)."""
        model_type = registry.model_type_of(model_files(folder) / CONFIG_NAME)
        family = registry.family(model_type) if model_type is not None else None
        return family if family is not None and not issubclass(cls, family) else None

    @classmethod
    def _read_file(cls, path: Path, config: ConfigLike, manifest: ManifestLike) -> Loaded:
        state = read_checkpoint(path)
        if config is None and path.suffix == ".safetensors" and path.with_name(CONFIG_NAME).is_file():
            config = path.with_name(CONFIG_NAME)
        label = None
        if config is None:
            label, config = cls._choose_architecture(state, load_manifest(manifest).architectures(), str(path))[:2]
        provenance = Provenance("file", str(path), str(path), hub.file_sha256(path), architecture=label)
        return Loaded(state, resolve_config(config), str(path), provenance, label)

    @classmethod
    def config_of(cls, path: PathLike, manifest: ManifestLike = None) -> VDVAEConfig:
        """The config a local folder or weights file would load with (config.json, or recognised from the tensors)."""
        path = Path(path)
        if path.is_dir():
            folder = model_files(path)
            if not (folder / CONFIG_NAME).exists():
                raise FileNotFoundError(f"{path} has no {CONFIG_NAME}")
            return resolve_config(folder / CONFIG_NAME)
        if path.suffix in (".json", ""):
            return resolve_config(path)
        return cls._read_file(path, None, manifest).config

    @classmethod
    def download(
        cls,
        name: str,
        *,
        revision: str | None = None,
        cache_dir: None | PathLike = None,
        local_files_only: bool = False,
        manifest: ManifestLike = None,
    ) -> Path:
        """Make sure model `name` is in the cache; returns the folder with its config.json + model.safetensors."""
        return cls._cached_folder(load_manifest(manifest).get(name), revision, cache_dir, local_files_only, "cpu")[0]

    @classmethod
    def _cached_folder(
        cls, entry: ModelEntry, revision: str | None, cache_dir, local_files_only: bool, device
    ) -> tuple[Path, tuple | None]:
        """The entry's model folder in the cache, fetched or converted when missing. When this call converted
        the original, the model it built and checked comes back too (so it is not built twice)."""
        if entry.published or revision is not None:
            return hub.fetch_hub_folder(
                entry.hub["repo_id"],
                revision,
                pinned_revision=entry.hub.get("revision"),
                pinned_sha256=entry.hub.get("sha256"),
                cache_dir=cache_dir,
                local_files_only=local_files_only,
                name=entry.name,
            ), None
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
            source = (
                json.dumps({"url": url, "sha256": hub.file_sha256(original), "architecture": label}, indent=2) + "\n"
            )
            write_model_folder(
                folder,
                state,
                config,
                card=model_card(config, cls.card_lines(config), entry),
                extra={"source.json": source},
            )
            original.unlink()  # the converted copy is all we need; its sha256 is kept in source.json
        return folder, built

    # -------------------------------------------------------------------------------------------- saving
    def save_pretrained(
        self,
        folder: PathLike,
        *,
        entry: ModelEntry | None = None,
        card: bool = True,
        overwrite: bool = True,
        run: Mapping[str, Any] | None = None,
        results: list[dict[str, Any]] | None = None,
    ) -> Path:
        """Write config.json, model.safetensors and a model card README.md (with what `entry` or a training
        `run` knows, and measured `results`: cards.measured_result) into `folder`, as a unit. Measured results
        already in the folder's card are kept when `results` is None (re-saving a model does not lose them)."""
        if results is None:
            results = card_results(Path(folder) / CARD_NAME)
        text = model_card(self.config, self.card_lines(self.config), entry, run=run, results=results) if card else None
        return write_model_folder(folder, self.state_dict(), self.config, card=text, overwrite=overwrite)

    def push_to_hub(
        self,
        repo_id: str,
        *,
        entry: ModelEntry | None = None,
        private: bool = False,
        token: str | None = None,
        commit_message: str = "Upload VDVAE weights",
        results: list[dict[str, Any]] | None = None,
    ) -> dict[str, str]:
        """Upload config.json + model.safetensors + model card (with measured `results`; by default those of the card
        beside a folder it was loaded from) to the Hub. Returns the fields to pin in the manifest: repo_id, revision
        (the commit) and sha256 of model.safetensors."""
        from huggingface_hub import HfApi, constants

        api = HfApi(token=token)
        if (
            results is None and self.provenance.kind == "folder" and self.provenance.weights
        ):  # the card's numbers go too
            results = card_results(Path(self.provenance.weights).parent / CARD_NAME)
        with tempfile.TemporaryDirectory() as tmp:
            folder = self.save_pretrained(Path(tmp) / "model", entry=entry, results=results or [])
            sha = hub.file_sha256(folder / WEIGHTS_NAME)
            try:
                api.create_repo(repo_id, private=private, exist_ok=True)
                info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message=commit_message)
            except Exception as e:  # noqa: BLE001 - the transport's and the Hub's errors, as load() says them
                first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                raise ConnectionError(
                    f"push_to_hub({repo_id!r}): the upload to {constants.ENDPOINT} did not go through ({first}). "
                    "Check the network and your token (`hf auth login`, or HF_TOKEN); nothing was published. "
                    "save_pretrained(folder) keeps a copy to upload later"
                ) from None
        return {"repo_id": repo_id, "revision": info.oid, "sha256": sha}

    @classmethod
    def convert_original(
        cls,
        path: PathLike,
        config: ConfigLike,
        folder: PathLike,
        *,
        entry: ModelEntry | None = None,
        overwrite: bool = False,
        manifest: ManifestLike = None,
    ) -> Path:
        """Convert an original `.th` state dict into a `config.json` + `model.safetensors` folder, tensors
        unchanged. The keys and shapes are checked against `config` first (differences in the optional part
        warn); with `config=None` the file's architecture is recognised: among `entry`'s architectures when given
        (the published one and its candidates), else among all known ones, as `from_pretrained` does."""
        if config is None and entry is not None:
            state = read_checkpoint(path)
            config = cls._choose_architecture(state, entry.architectures(), str(path))[1]
        else:
            loaded = cls._read_file(Path(path), config, manifest)
            state, config = loaded.state, loaded.config
        cls.from_state_dict(state, config, source=str(path), device="cpu")  # the check; raises on a mismatch
        return write_model_folder(
            folder, state, config, card=model_card(config, cls.card_lines(config), entry), overwrite=overwrite
        )
