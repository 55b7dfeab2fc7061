"""State dicts on disk: reading original `.th` and `.safetensors` files, checking them against the shapes a
config expects, and writing the `config.json` + `model.safetensors` folder layout. Nothing here knows a model
family's tensor names: what differs by family comes in as arguments (the model classes' hooks, pretrained.py).

Safety: `.th` files are read with `torch.load(..., weights_only=True)` only; a file holding pickled objects
other than tensors is refused, never unpickled. Everything we write is safetensors + JSON.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..config import VDVAEConfig
from ..data.files import (
    CARD_NAME,
    CONFIG_NAME,
    WEIGHTS_NAME,
    atomic_folder,
    atomic_write,
    check_user_file,
    disk_full_as_oserror,
    refuse_existing,
    remove_stale_temporaries,
)

__all__ = [
    "read_checkpoint",
    "strip_ddp_prefix",
    "LoadReport",
    "check_state",
    "write_model_folder",
    "ArchitectureMatch",
    "match_architectures",
    "tensor_sha256",
]

_DDP_PREFIX = "module."
Shape = tuple[int, ...]


def strip_ddp_prefix(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop the `module.` prefix that DistributedDataParallel puts on every key (the original `-model.th` files)."""
    if state and all(isinstance(k, str) and k.startswith(_DDP_PREFIX) for k in state):
        return {k[len(_DDP_PREFIX) :]: v for k, v in state.items()}
    return state


def tensor_sha256(module: torch.nn.Module) -> str:
    """sha256 of a module's tensors (names, shapes, float32 bytes): the identity of weights that were never a
    file (a model built or trained in Python)."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


def _refuse_inflating_archive(path: Path) -> None:
    """torch.save writes an uncompressed zip, so its members together are no larger than the file. Anything else
    (compressed members, or sizes that add up to more than the file) could inflate to any size: refuse it before
    torch reads a byte. Files in torch's legacy (non-zip) format are left to torch.load."""
    if not zipfile.is_zipfile(path):
        return
    with zipfile.ZipFile(path) as archive:
        members = archive.infolist()
    declared = sum(m.file_size for m in members)
    if any(m.compress_type != zipfile.ZIP_STORED for m in members) or declared > path.stat().st_size:
        raise ValueError(
            f"refused to load {path}: its archive would inflate to {declared:,} bytes from "
            f"{path.stat().st_size:,} (compressed members); torch.save never writes that"
        )


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:160]}" if text else type(e).__name__


_WEIGHT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A state dict (name -> CPU tensor) from an original `.th`/`.pt` file or a `.safetensors` file, with the
    `module.` prefix stripped. Raises FileNotFoundError or ValueError naming the file and what is wrong: not a
    file of tensors, keys that are not text, tensors that are not floating point."""
    path = check_user_file(path, what="checkpoint file", kind="weights")  # never a FIFO, a device or a folder
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty (0 bytes): not a checkpoint; download or copy it again")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path), device="cpu")
        except Exception as e:  # safetensors raises its own error types for corrupt headers
            raise ValueError(f"cannot read {path} as safetensors: {_first_line(e)}") from None
    else:
        _refuse_inflating_archive(path)
        try:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any failure of the restricted unpickler means: refuse
            why = type(e).__name__ if "weights_only" in str(e) else _first_line(e)
            raise ValueError(
                f"refused to load {path}: it is not a plain state dict of tensors that can be read safely ({why}). "
                "Only files holding tensors are accepted (original .th checkpoints, or .safetensors); nothing in "
                "it was run."
            ) from None
        if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
            state = state["state_dict"]  # type: ignore[assignment]  # checked to be tensors just below
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError(
                f"{path} does not hold a state dict (a dict of name -> tensor); found {type(state).__name__}"
            )
    bad_key = next((k for k in state if not isinstance(k, str)), None)
    if bad_key is not None:
        raise ValueError(f"{path} is not a state dict: its key {bad_key!r:.60} is not a tensor name (text)")
    bad = next(((k, v.dtype) for k, v in state.items() if v.dtype not in _WEIGHT_DTYPES), None)
    if bad is not None:
        raise ValueError(
            f"{path}: tensor {bad[0]} is {str(bad[1]).replace('torch.', '')}; model weights are "
            "floating point (float32, float16, bfloat16 or float64)"
        )
    return strip_ddp_prefix(state)


@dataclass
class LoadReport:
    """How a state dict differs from the tensors a config expects (diffusers' loading info, as a value)."""

    source: str
    missing: list[tuple[str, Shape]] = field(default_factory=list)  # (key, expected shape)
    unexpected: list[tuple[str, Shape]] = field(default_factory=list)  # (key, file's shape)
    mismatched: list[tuple[str, Shape, Shape]] = field(default_factory=list)  # (key, file's, expected)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def keys(self) -> list[str]:
        return [k for k, *_ in self.missing + self.unexpected + self.mismatched]

    def only_under(self, prefix: str) -> bool:
        """True when something differs and every difference is a key starting with `prefix` (a part of the model
        that a family may load without, see `PretrainedMixin.optional_part`)."""
        return bool(prefix) and not self.ok and all(k.startswith(prefix) for k in self.keys())

    def lines(self) -> list[str]:
        return (
            [f"missing {k} {s}" for k, s in self.missing]
            + [f"{k}: file has shape {f}, config expects {e}" for k, f, e in self.mismatched]
            + [f"unexpected {k} {s}" for k, s in self.unexpected]
        )

    def summary(self, limit: int = 3) -> str:
        lines = self.lines()
        more = f"; ... ({len(lines)} differences)" if len(lines) > limit else ""
        return "; ".join(lines[:limit]) + more


def check_state(expected: Mapping[str, Shape], state: Mapping[str, torch.Tensor], source: str) -> LoadReport:
    """Compare a state dict with the names and shapes a model expects."""
    report = LoadReport(source)
    for k, shape in expected.items():
        if k not in state:
            report.missing.append((k, tuple(shape)))
        elif tuple(state[k].shape) != tuple(shape):
            report.mismatched.append((k, tuple(state[k].shape), tuple(shape)))
    report.unexpected = [(k, tuple(v.shape)) for k, v in state.items() if k not in expected]
    return report


def write_model_folder(
    folder: str | os.PathLike,
    state: Mapping[str, torch.Tensor],
    config: VDVAEConfig,
    *,
    card: str | None = None,
    extra: dict[str, str] | None = None,
    overwrite: bool = True,
) -> Path:
    """Write `config.json`, `model.safetensors` (and `README.md` = `card`, and `extra` {file name: text}) into
    `folder`, as a unit: the files are written into a staging folder that then replaces `folder`. A folder that
    holds anything else (a training run, say) is updated file by file instead, each file atomically."""
    from safetensors.torch import save_file

    folder = Path(folder)
    refuse_existing(folder, overwrite)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    texts = {CONFIG_NAME: config.to_json() + "\n", **({CARD_NAME: card} if card is not None else {}), **(extra or {})}

    def write_into(target: Path) -> None:
        with disk_full_as_oserror(folder / WEIGHTS_NAME):
            save_file(tensors, str(target / WEIGHTS_NAME), metadata={"format": "pt", "library": "vdvae-zoo"})
        for name, text in texts.items():
            (target / name).write_text(text)

    ours = {WEIGHTS_NAME, *texts}
    if folder.is_dir() and any(not p.name.startswith(".") and p.name not in ours for p in folder.iterdir()):
        remove_stale_temporaries(folder)
        atomic_write(
            folder / WEIGHTS_NAME,
            lambda p: save_file(tensors, str(p), metadata={"format": "pt", "library": "vdvae-zoo"}),
        )
        for name, text in texts.items():
            atomic_write(folder / name, text)
        return folder
    if folder.is_dir():
        remove_stale_temporaries(folder.parent)
    with atomic_folder(folder, overwrite=overwrite) as staging:
        write_into(staging)
    return folder


@dataclass
class ArchitectureMatch:
    """Which known architectures a state dict's names and shapes match exactly; when none does, the closest one
    and how the file differs from it."""

    exact: list[tuple[list[str], VDVAEConfig]]  # each distinct matching config, with every label that names it
    closest: tuple[str, LoadReport] | None = None

    @property
    def unique(self) -> tuple[list[str], VDVAEConfig] | None:
        return self.exact[0] if len(self.exact) == 1 else None

    def describe(self, source: str) -> str:
        """Why no single architecture could be chosen, in sentences that end with what to do."""
        if len(self.exact) > 1:
            names = "; ".join(" = ".join(labels) for labels, _ in self.exact)
            return (
                f"{source} matches several known architectures with the same tensor shapes ({names}), which "
                "differ in what shapes do not show (preprocessing, resolutions of same-shaped blocks); pass "
                "config= (--config) to choose one"
            )
        closest = ""
        if self.closest is not None:
            label, report = self.closest
            closest = f" The closest is {label}: {report.summary(4)}."
        return (
            f"{source} matches none of the known architectures.{closest} Run `vdvae-zoo inspect {source}` to see "
            "the structure its tensors determine, and pass the config it was trained with (config=, --config)"
        )


def match_architectures(
    state: Mapping[str, torch.Tensor],
    candidates: Mapping[str, VDVAEConfig],
    expected_shapes: Callable[[VDVAEConfig], Mapping[str, Shape]],
    signature: tuple[Callable[[Mapping[str, Shape]], tuple | None], Callable[[VDVAEConfig], tuple | None]]
    | None = None,
) -> ArchitectureMatch:
    """Match a state dict against labelled configs by names and shapes (`expected_shapes(config)` gives what a
    model of that config holds). Configs are compared once each. `signature`, when given, is a pair of functions
    that summarise cheaply (block counts and width, say) the names and shapes of a state dict and of a config's
    model alike: a config whose summary differs from the file's cannot match and is not built at all."""
    groups: dict[str, tuple[list[str], VDVAEConfig]] = {}
    for label, config in candidates.items():
        groups.setdefault(config.to_json(), ([], config))[0].append(label)
    shapes = {k: tuple(v.shape) for k, v in state.items()}
    found = signature[0](shapes) if signature is not None else None
    exact, reports = [], []
    for labels, config in groups.values():
        if found is not None and signature is not None and signature[1](config) != found:
            continue  # cannot match
        report = check_state(expected_shapes(config), state, labels[0])
        if report.ok:
            exact.append((labels, config))
        else:
            reports.append((labels[0], report))
    if exact:
        return ArchitectureMatch(exact)
    if not reports:  # nothing passed the quick check: compare everything, to name the closest
        reports = [
            (labels[0], check_state(expected_shapes(config), state, labels[0])) for labels, config in groups.values()
        ]
    return ArchitectureMatch([], min(reports, key=lambda r: len(r[1].lines())) if reports else None)
