"""What a training run owns on disk, and the rules that keep a user's files safe.

    OUT/run.json              the options and config the run started with (marks the folder as a run of ours)
    OUT/checkpoint/           model, EMA, optimizer, counters: written as a unit (files.atomic_folder)
    OUT/model/                the EMA weights as config.json + model.safetensors, written as a unit;
                              `vdvae_zoo.load(OUT)` loads it
    OUT/log.jsonl             one JSON object per line (non-finite numbers are written as null)
    OUT/samples/, OUT/curves.png

A folder is ours when it holds run.json or checkpoint/. Anything else that is not empty is refused, as is the
folder a fine-tuning run reads its weights from. One trainer at a time holds OUT (a lock file, released when
the process ends, whatever way it ends).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import IO, Any

import torch

from ..data.files import (
    MODEL_SUBFOLDER,
    append_line,
    atomic_folder,
    atomic_write,
    read_small_text,
    recover_folder,
    remove_stale_temporaries,
)

__all__ = ["RunFolder", "RunFolderInUse", "finite_json", "pack_training_state", "unpack_training_state", "COUNTERS"]

COUNTERS = ("step", "updates", "skipped", "nan_count", "consecutive_skips")  # a run's counters, kept in its meta


class RunFolderInUse(RuntimeError):
    """Another trainer process holds the run folder."""


def finite_json(value: Any) -> Any:
    """`value` with NaN and infinities replaced by None, so that it is valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def pack_training_state(
    model, ema, optimizer, counters: dict[str, int], extra: dict[str, Any]
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """What OUT/checkpoint holds: tensors named `model.*`, `ema.*` and `optim.{parameter}.{state}` (safetensors
    holds no nested state), and a meta with the COUNTERS, the optimizer's param groups and `extra`."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v for k, v in ema.state_dict().items()})
    opt_state = optimizer.state_dict()
    for pid, st in opt_state["state"].items():
        for name, value in st.items():
            tensors[f"optim.{pid}.{name}"] = torch.as_tensor(value)
    return tensors, {**{k: counters[k] for k in COUNTERS}, "param_groups": opt_state["param_groups"], **extra}


def unpack_training_state(
    tensors: dict[str, torch.Tensor], meta: dict[str, Any], model, ema, optimizer
) -> dict[str, int]:
    """The inverse of pack_training_state: loads model, EMA and optimizer in place; returns the counters. What it
    cannot trust is refused before anything is loaded (ValueError naming the tensor): weights that do not fit the
    model, a tensor that is not finite, counters that are not counts, and optimizer state that is missing for a
    parameter the run has updated or has another shape than it."""
    for k, v in tensors.items():
        if v.is_floating_point() and not bool(torch.isfinite(v).all()):
            raise ValueError(f"its tensor {k} holds NaN or infinite values")
    if not all(isinstance(meta.get(k), int) and meta[k] >= 0 for k in COUNTERS):
        raise ValueError(f"its counters ({', '.join(COUNTERS)}) are not all whole numbers >= 0")
    for prefix, module in (("model.", model), ("ema.", ema)):
        expected = module.state_dict()
        found = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        missing = sorted(set(expected) - set(found))
        wrong = sorted(k for k in set(expected) & set(found) if tuple(found[k].shape) != tuple(expected[k].shape))
        if missing or wrong:
            name = (missing or wrong)[0]
            what = (
                "is missing" if missing else f"has shape {tuple(found[name].shape)}, not {tuple(expected[name].shape)}"
            )
            raise ValueError(f"its tensor {prefix}{name} {what}")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    groups = meta.get("param_groups")
    if not isinstance(groups, list) or sum(len(g.get("params", [])) for g in groups if isinstance(g, dict)) != len(
        params
    ):
        raise ValueError("its optimizer's parameter groups do not match the model's parameters")
    state: dict[int, dict[str, torch.Tensor]] = {}
    for k, v in tensors.items():
        if k.startswith("optim."):
            _, pid, name = k.split(".", 2)
            if not pid.isdigit() or int(pid) >= len(params):
                raise ValueError(f"its tensor {k} names no parameter of the model")
            state.setdefault(int(pid), {})[name] = v
    if meta.get("updates", 0) > 0:  # AdamW has state for every parameter once an update was applied
        for i, p in enumerate(params):
            kept = state.get(i, {})
            for name in ("step", "exp_avg", "exp_avg_sq"):
                if name not in kept:
                    raise ValueError(f"its optimizer state optim.{i}.{name} is missing")
            for name in ("exp_avg", "exp_avg_sq"):
                if tuple(kept[name].shape) != tuple(p.shape):
                    raise ValueError(
                        f"its optimizer state optim.{i}.{name} has shape {tuple(kept[name].shape)}, not the "
                        f"parameter's {tuple(p.shape)}"
                    )
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    ema.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("ema.")})
    optimizer.load_state_dict({"state": state, "param_groups": groups})
    return {k: meta[k] for k in COUNTERS}


def validation_bpd(record: dict[str, Any]) -> float | None:
    """The validation bound a log record holds (val_bpd, or the end's final_val_bpd), in bits per dim."""
    value = record.get("val_bpd", record.get("final_val_bpd"))
    return value if isinstance(value, (int, float)) else None


class RunFolder:
    """The run folder OUT of a trainer process (only rank 0 writes)."""

    def __init__(self, path: os.PathLike, writer: bool = True):
        self.path, self.writer = Path(path), writer
        self._lock_file: IO[str] | None = None

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoint"

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_SUBFOLDER

    def is_ours(self) -> bool:
        recover_folder(self.checkpoint_path)  # a crash between atomic_folder's two renames leaves it aside
        recover_folder(self.model_path)
        return (self.path / "run.json").is_file() or self.checkpoint_path.is_dir()

    def has_checkpoint(self) -> bool:
        recover_folder(self.checkpoint_path)
        return (self.checkpoint_path / "meta.json").is_file() and (self.checkpoint_path / "state.safetensors").is_file()

    def prepare(self, *, resume: bool, source: str | None, start: dict[str, Any]) -> None:
        """Check OUT before any training: not the fine-tuning source, ours or empty, writable; lock it; remove
        temporaries of dead processes; write run.json (`start`: options and config) for a new run."""
        if not self.writer:  # rank 0 checks and writes; the others follow it
            return
        out = self.path.resolve()
        if source and Path(source).exists():
            src = Path(source).resolve()
            # refused: OUT is the source folder, holds the source, or lies inside a source folder
            if src.is_relative_to(out) or (src.is_dir() and out.is_relative_to(src)):
                raise ValueError(
                    f"--out {self.path} is where --model {source} is read from; training would overwrite "
                    "it. Choose another --out."
                )
        if self.path.exists() and not self.path.is_dir():
            raise FileExistsError(f"--out {self.path} is a file; choose a folder")
        if self.path.is_dir() and not self.is_ours() and any(self.path.iterdir()):
            raise FileExistsError(
                f"--out {self.path} is not empty and holds no run of ours (no run.json or "
                "checkpoint/); choose a new or empty folder"
            )
        if self.is_ours() and not resume:
            raise FileExistsError(
                f"{self.path} already holds a run; pass --resume to continue it or choose another --out"
            )
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            self._lock()
            remove_stale_temporaries(self.path)
            if not (self.path / "run.json").is_file():
                atomic_write(self.path / "run.json", json.dumps(finite_json(start), indent=2) + "\n")
        except OSError as e:  # read-only, not a folder, disk full...
            raise PermissionError(
                f"cannot write to --out {self.path} ({e.strerror or e}); choose a folder you can write to"
            ) from None

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock
            return
        self._lock_file = open(self.path / ".lock", "a+")
        try:
            fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock_file.close()
            self._lock_file = None
            raise RunFolderInUse(
                f"another trainer is using {self.path}; wait for it to finish or choose another --out"
            ) from None

    def release(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    # ------------------------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
        from safetensors.torch import save_file

        with atomic_folder(self.checkpoint_path) as staging:
            save_file(
                {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(staging / "state.safetensors")
            )
            (staging / "meta.json").write_text(json.dumps(finite_json(meta)))

    def load_checkpoint(self) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        """The checkpoint's tensors and counters, or None when there is none; a damaged one is a ValueError that
        names the file."""
        from safetensors.torch import load_file

        if not self.has_checkpoint():
            return None
        state = self.checkpoint_path / "state.safetensors"
        try:
            meta = json.loads(read_small_text(self.checkpoint_path / "meta.json", what="checkpoint record"))
            if not isinstance(meta, dict) or not isinstance(meta.get("step"), int):
                raise ValueError("no step counter")
            return load_file(str(state)), meta
        except Exception as e:  # noqa: BLE001 - safetensors raises its own types for a cut-short file
            raise ValueError(
                f"the checkpoint in {self.checkpoint_path} cannot be read ({type(e).__name__}: "
                f"{str(e).splitlines()[0][:120] if str(e) else ''}); it is damaged. Start a new run in "
                "another --out (the EMA weights in model/ are still loadable)"
            ) from None

    def export(self, model, run: dict[str, Any] | None = None) -> Path:
        """The EMA weights as a loadable folder, replaced as a unit; `run`: what the model card says of the run."""
        return model.save_pretrained(self.model_path, run=run)

    def write_card(self, model, run: dict[str, Any]) -> Path:
        """Replace OUT/model's model card only (after the final validation: the weights are already there)."""
        from ..data.files import CARD_NAME
        from ..weights.cards import model_card

        return atomic_write(
            self.model_path / CARD_NAME, model_card(model.config, model.card_lines(model.config), run=run)
        )

    # ------------------------------------------------------------------------------------------- log
    def log(self, record: dict[str, Any]) -> None:
        """Append one JSON line to OUT/log.jsonl (a symbolic link there is refused, never followed)."""
        if self.writer:
            append_line(self.path / "log.jsonl", json.dumps(finite_json(record)))

    def plot_curves(self) -> Path:
        """OUT/curves.png: the training loss and the validation bound against the step, both in bits per dim."""
        from ..data.plots import line_chart

        records = self.records()
        series = {
            "train loss (bits/dim)": [(r["step"], r["loss_bpd"]) for r in records if r.get("loss_bpd") is not None],
            "val bpd": [(r["step"], validation_bpd(r)) for r in records if validation_bpd(r) is not None],
        }
        line_chart({k: v for k, v in series.items() if v}, self.path / "curves.png")  # no legend entry without points
        return self.path / "curves.png"

    def describe(self) -> list[str]:
        """What `vdvae-zoo info RUN` says of a training run: its base model, steps, last validation bpd, and where
        its weights are (with their sha256); [] when the folder is not a run."""
        from ..data.files import WEIGHTS_NAME, read_small_text
        from ..weights.hub import file_sha256

        if not (self.path / "run.json").is_file():
            return []
        try:
            start = json.loads(read_small_text(self.path / "run.json", what="run record"))
            options = start.get("options") if isinstance(start, dict) else None
            options = options if isinstance(options, dict) else {}  # a run.json edited to "options": null
            records = self.records()
        except (ValueError, OSError):
            return [f"run: {self.path} (its run.json or log.jsonl cannot be read)"]
        base = options.get("model") or f"trained from scratch ({options.get('config')})"
        last: dict[str, Any] = next((r for r in reversed(records) if "step" in r), {})
        val = self.last_validation() if any(validation_bpd(r) is not None for r in records) else None
        stopped: dict[str, Any] = next((r for r in reversed(records) if r.get("event") in ("stopped", "end")), {})
        lines = [
            f"run: {self.path}",
            f"base model: {base}",
            f"training data: {options.get('data')}",
            f"steps: {last.get('step', 0)}"
            + (
                f" (stopped by signal {stopped['stopped_by_signal']}; --resume continues)"
                if stopped.get("event") == "stopped"
                else ""
            ),
            f"last validation bpd: {val[1]:.4f} at step {val[0]}" if val else "last validation bpd: not measured",
        ]
        weights = self.model_path / WEIGHTS_NAME
        if weights.is_file():
            lines.append(f"weights: {weights} (the EMA weights; sha256 {file_sha256(weights)})")
        return lines

    def last_validation(self) -> tuple[int | None, float | None]:
        """(step, bits per dim) of the last validation the log holds: a val_bpd record, or the end's final_val_bpd."""
        for r in reversed(self.records()):
            if validation_bpd(r) is not None:
                return r.get("step"), validation_bpd(r)
        return None, None

    def records(self) -> list[dict[str, Any]]:
        path = self.path / "log.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in read_small_text(path, what="training log").splitlines() if line.strip()]
